//! The HTTPS listener's TLS settings and its reloadable certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server: tls: failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server: tls: failed to find any PEM data in {path}")]
    NoPem { path: PathBuf },
    #[error("server: tls: invalid PEM data in {path}: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("server: tls: no CERTIFICATE block in {path}")]
    NoCertificate { path: PathBuf },
    #[error("server: tls: no private key block in {path}")]
    NoKey { path: PathBuf },
    #[error("server: tls: unusable private key in {path}: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("server: tls: the key in {key} does not match the certificate in {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("server: tls: {0}")]
    Config(#[from] rustls::Error),
}

/// Returns the provider used for every TLS connection of frontd.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// One decoded PEM section; the DER is zeroized on drop.
type Section = (SectionKind, Zeroizing<Vec<u8>>);

/// Reads every PEM section of `path`. The buffers are zeroized after use
/// because the file may be a private key.
fn read_sections(path: &Path) -> Result<Vec<Section>, TlsError> {
    let text = Zeroizing::new(std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?);
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&text)
        .map(|item| item.map(|(kind, der)| (kind, Zeroizing::new(der))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadPem {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    if sections.is_empty() {
        return Err(TlsError::NoPem {
            path: path.to_path_buf(),
        });
    }
    Ok(sections)
}

/// Loads the certificate chain (leaf first, then intermediates) and its
/// private key, and checks that they belong together.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = read_sections(cert_path)?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.to_vec()))
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = read_sections(key_path)?
        .into_iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der.to_vec()))
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.to_path_buf(),
        })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            path: key_path.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Some key types cannot report their public key; rustls accepts
        // those unchecked, and so does frontd.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(source) => Err(TlsError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            source,
        }),
    }
}

/// The listener's certificate, replaced in place by [`CertificateStore::reload`]
/// so new connections use new files without a restart.
pub struct CertificateStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertificateStore {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = provider();
        let certified = load_certified_key(cert_path, key_path, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(certified)),
        })
    }

    /// Reads the files again; on error the previous certificate stays in
    /// use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = load_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(certified);
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

impl fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Builds the server settings: TLS 1.3 and 1.2 only, ALPN h2 and
/// http/1.1, the certificate from `store`.
pub fn server_config(store: Arc<CertificateStore>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&store.provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn generated() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    #[test]
    fn empty_cert_file_has_no_pem_data() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = generated();
        let cert = write(dir.path(), "server.crt", "not pem at all\n");
        let key = write(dir.path(), "server.key", &key);
        let error = CertificateStore::load(&cert, &key).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "server: tls: failed to find any PEM data in {}",
                cert.display()
            )
        );
    }

    #[test]
    fn missing_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = generated();
        let cert = write(dir.path(), "server.crt", &cert);
        let key = dir.path().join("absent.key");
        let error = CertificateStore::load(&cert, &key).unwrap_err();
        assert!(error.to_string().contains("absent.key"), "{error}");
    }

    #[test]
    fn key_file_with_only_a_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = generated();
        let cert = write(dir.path(), "server.crt", &cert);
        let error = CertificateStore::load(&cert, &cert).unwrap_err();
        assert!(matches!(error, TlsError::NoKey { .. }), "{error}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = generated();
        let (_, other_key) = generated();
        let cert = write(dir.path(), "server.crt", &cert);
        let key = write(dir.path(), "server.key", &other_key);
        let error = CertificateStore::load(&cert, &key).unwrap_err();
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
    }

    #[test]
    fn reload_keeps_old_certificate_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem) = generated();
        let cert = write(dir.path(), "server.crt", &cert_pem);
        let key = write(dir.path(), "server.key", &key_pem);
        let store = CertificateStore::load(&cert, &key).unwrap();
        let before = store.current().cert[0].clone();
        write(dir.path(), "server.crt", "");
        assert!(store.reload().is_err());
        assert_eq!(store.current().cert[0], before);
    }

    #[test]
    fn reload_picks_up_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem) = generated();
        let cert = write(dir.path(), "server.crt", &cert_pem);
        let key = write(dir.path(), "server.key", &key_pem);
        let store = CertificateStore::load(&cert, &key).unwrap();
        let before = store.current().cert[0].clone();
        let (new_cert, new_key) = generated();
        write(dir.path(), "server.crt", &new_cert);
        write(dir.path(), "server.key", &new_key);
        store.reload().unwrap();
        assert_ne!(store.current().cert[0], before);
    }
}
