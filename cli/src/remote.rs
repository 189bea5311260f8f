//! HTTPS calls to frontd's REST API.

use std::path::Path;
use std::time::Duration;

use reqwest::{Certificate, Client, Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{CliError, with_sources};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Issuing an RSA certificate or creating an issuer can take a second or
/// more in keyd, so the whole request gets more time than the connect.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses `--addr`: an `https://HOST:PORT` URL, with or without a trailing
/// slash.
pub fn parse_addr(text: &str) -> Result<Url, CliError> {
    let url = Url::parse(text).map_err(|err| {
        CliError::usage(format!(
            "invalid --addr {text:?}: {err} (expected a URL such as https://metacrypt.example.com:8443)"
        ))
    })?;
    if url.scheme() != "https" {
        return Err(CliError::usage(format!(
            "invalid --addr {text:?}: the REST API is served over HTTPS only, so the URL must start with https://"
        )));
    }
    if url.host_str().is_none() {
        return Err(CliError::usage(format!(
            "invalid --addr {text:?}: the URL has no host"
        )));
    }
    Ok(url)
}

/// A REST client that trusts only the certificates in `ca_cert`, or the
/// system's roots when `ca_cert` is `None`. Certificate verification is
/// always on.
pub struct Api {
    client: Client,
    base: Url,
}

impl Api {
    pub fn new(base: Url, ca_cert: Option<&Path>) -> Result<Self, CliError> {
        let mut builder = Client::builder()
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("metacrypt/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            builder = builder.tls_certs_only(read_certificates(path)?);
        }
        if base.host_str().is_some_and(is_loopback_host) {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|err| {
            CliError::io(format!(
                "failed to build the HTTPS client: {}",
                with_sources(&err)
            ))
        })?;
        Ok(Self { client, base })
    }

    /// Sends a request and decodes a 2xx JSON reply. Any other status becomes
    /// a `Service` error with frontd's `error` message; a failure to connect
    /// becomes an `Io` error.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<R, CliError> {
        let url = self.url(path)?;
        let label = format!("{method} {}", url.path());
        let mut request = self.client.request(method, url.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| {
            CliError::io(format!(
                "could not connect to {}: {}",
                self.origin(),
                with_sources(&err)
            ))
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|err| {
            CliError::io(format!(
                "{label}: failed to read the reply: {}",
                with_sources(&err)
            ))
        })?;
        if !status.is_success() {
            return Err(CliError::service(format!(
                "{label} failed: {}",
                error_message(status, &bytes)
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|err| CliError::io(format!("{label}: invalid JSON in the reply: {err}")))
    }

    pub async fn get<R: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<R, CliError> {
        self.call::<Value, R>(Method::GET, path, token, None).await
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> Result<R, CliError> {
        self.call(Method::POST, path, token, Some(body)).await
    }

    fn url(&self, path: &str) -> Result<Url, CliError> {
        let base = self.base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}"))
            .map_err(|err| CliError::usage(format!("invalid URL {base}{path}: {err}")))
    }

    fn origin(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }
}

/// The `{"state": ...}` reply of `GET /v1/status`.
#[derive(serde::Deserialize)]
pub struct StatusReply {
    pub state: String,
}

fn read_certificates(path: &Path) -> Result<Vec<Certificate>, CliError> {
    let pem = std::fs::read(path).map_err(|err| {
        CliError::io(format!(
            "failed to read CA certificate {}: {err}",
            path.display()
        ))
    })?;
    let certificates = Certificate::from_pem_bundle(&pem).map_err(|err| {
        CliError::usage(format!(
            "invalid CA certificate {}: {}",
            path.display(),
            with_sources(&err)
        ))
    })?;
    if certificates.is_empty() {
        return Err(CliError::usage(format!(
            "invalid CA certificate {}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certificates)
}

/// Formats a non-2xx reply: frontd's `{"error": ...}` message when there is
/// one, else the status alone.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| value.get("error")?.as_str().map(str::to_owned));
    match message {
        Some(message) => format!("{message} (HTTP {})", status.as_u16()),
        None => format!("HTTP {status}"),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_addr_is_accepted() {
        let url = parse_addr("https://127.0.0.1:8443").unwrap();
        assert_eq!(url.port(), Some(8443));
        assert!(parse_addr("https://metacrypt.example.com/").is_ok());
    }

    #[test]
    fn http_addr_is_rejected() {
        let err = parse_addr("http://127.0.0.1:8443").err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.message.contains("https://"), "{}", err.message);
    }

    #[test]
    fn addr_without_scheme_is_rejected() {
        let err = parse_addr("127.0.0.1:8443").err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.message.contains("127.0.0.1:8443"), "{}", err.message);
    }

    #[test]
    fn error_body_message_is_used() {
        assert_eq!(
            error_message(StatusCode::SERVICE_UNAVAILABLE, br#"{"error":"sealed"}"#),
            "sealed (HTTP 503)"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"<html>"),
            "HTTP 502 Bad Gateway"
        );
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("metacrypt.example.com"));
    }

    #[test]
    fn paths_join_without_double_slash() {
        let api = Api::new(parse_addr("https://127.0.0.1:8443/").unwrap(), None).unwrap();
        assert_eq!(
            api.url("/v1/status").unwrap().as_str(),
            "https://127.0.0.1:8443/v1/status"
        );
    }
}
