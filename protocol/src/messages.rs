//! Typed messages of the keyd protocol.
//!
//! Everything a client sends is validated again inside keyd: frontd forwards
//! strings such as TTLs and names as the REST caller wrote them, and keyd
//! parses them, so the rules live in one place.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;
use crate::policy::{PolicyRule, Resource};
use crate::secret::SecretString;

/// One of keyd's two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SocketRole {
    /// The socket for frontd: seal operations, mounts and engine requests.
    Front,
    /// The socket for the operator's CLI: seal operations and, later,
    /// administration such as snapshots.
    Admin,
}

impl SocketRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SocketRole::Front => "front",
            SocketRole::Admin => "admin",
        }
    }
}

impl fmt::Display for SocketRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The seal state of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SealState {
    Uninitialized,
    Sealed,
    Initializing,
    Unsealed,
}

impl SealState {
    pub fn as_str(self) -> &'static str {
        match self {
            SealState::Uninitialized => "uninitialized",
            SealState::Sealed => "sealed",
            SealState::Initializing => "initializing",
            SealState::Unsealed => "unsealed",
        }
    }
}

impl fmt::Display for SealState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message from a client to keyd.
// Messages are decoded, handled and dropped one at a time, so the size of the
// largest variant costs nothing worth a heap allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    Hello(Hello),
    Request(Request),
}

/// A message from keyd to a client.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The answer to the client's `Hello`: accepted, or rejected with the
    /// reason (for example a protocol version mismatch naming both versions).
    Hello(Result<HelloReply, ErrorBody>),
    Reply(Reply),
    /// The seal state changed (an unseal, a seal from either socket, an init).
    StateChanged(SealState),
}

/// The first message on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// The socket the client believes it is connected to.
    pub role: SocketRole,
    /// A name for logs, such as `metacrypt-frontd 0.1.0`.
    pub client: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u32,
    pub role: SocketRole,
    pub state: SealState,
}

/// The identity of the REST caller on whose behalf frontd sends a request,
/// as MCIAS reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub username: String,
    pub roles: Vec<String>,
    pub admin: bool,
    /// Lowercase hex SHA-256 of the caller's MCIAS token, so that keyd can
    /// correlate the requests of one session without seeing the token.
    /// keyd records only an HMAC of it.
    pub session: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, unique among its requests in flight on this
    /// connection; the reply carries the same id.
    pub id: u64,
    /// The request id of the originating HTTP request or CLI call, logged by
    /// both processes so their lines can be joined.
    pub trace_id: String,
    /// The REST client's IP address and port on the TCP connection that
    /// frontd accepted, such as `192.0.2.7:50312` or `[2001:db8::7]:50312`.
    /// `None` on the admin socket. keyd treats it as untrusted text.
    pub remote_addr: Option<String>,
    /// `None` for requests from the admin socket and for unauthenticated REST
    /// routes (status, init, unseal, public PKI routes).
    pub caller: Option<Caller>,
    pub body: RequestBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestBody {
    Status,
    Init {
        password: SecretString,
    },
    Unseal {
        password: SecretString,
    },
    Seal,
    ListMounts,
    Mount {
        name: String,
        config: MountConfig,
    },
    Unmount {
        name: String,
    },
    Ca {
        mount: String,
        op: CaRequest,
    },
    /// Every policy rule, by name. Front socket, any authenticated caller,
    /// because frontd checks each request against the rules.
    ListPolicyRules,
    /// Front socket, admins only.
    PutPolicyRule {
        name: String,
        rule: PolicyRule,
    },
    /// Front socket, admins only.
    DeletePolicyRule {
        name: String,
    },
    /// Records in the audit log that frontd denied or rejected the
    /// caller's request, which therefore never reached keyd. Front socket
    /// only.
    RecordDenial {
        operation: String,
        resource: Option<String>,
        reason: String,
        /// The HTTP status frontd returned: 403 for a policy denial, another
        /// 4xx or 5xx for a request it rejected for another reason.
        status: u16,
    },
}

impl RequestBody {
    /// Returns a short operation name for logs and access checks.
    pub fn operation(&self) -> &'static str {
        match self {
            RequestBody::Status => "status",
            RequestBody::Init { .. } => "init",
            RequestBody::Unseal { .. } => "unseal",
            RequestBody::Seal => "seal",
            RequestBody::ListMounts => "list-mounts",
            RequestBody::Mount { .. } => "mount",
            RequestBody::Unmount { .. } => "unmount",
            RequestBody::Ca { op, .. } => op.operation(),
            RequestBody::ListPolicyRules => "list-policy-rules",
            RequestBody::PutPolicyRule { .. } => "put-policy-rule",
            RequestBody::DeletePolicyRule { .. } => "delete-policy-rule",
            RequestBody::RecordDenial { .. } => "record-denial",
        }
    }

    /// Returns the policy resource of an engine request,
    /// `{mount}/{operation}[/{issuer}]`, or `None` for the service-level
    /// operations that policy does not cover. Fails when the mount or issuer
    /// is not a valid identifier.
    pub fn resource(&self) -> Option<Result<Resource, String>> {
        match self {
            RequestBody::Ca { mount, op } => {
                Some(Resource::new(mount, op.operation(), op.issuer()))
            }
            _ => None,
        }
    }
}

/// Engine type and mount-time configuration of a new mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountConfig {
    Ca(CaMountConfig),
}

impl MountConfig {
    pub fn engine_type(&self) -> &'static str {
        match self {
            MountConfig::Ca(_) => "ca",
        }
    }
}

/// Configuration of the root CA that a CA mount creates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaMountConfig {
    pub common_name: Option<String>,
    pub organization: Option<String>,
    pub key_algorithm: Option<KeyAlgorithm>,
    /// Root validity as a duration string such as `87600h` or `3650d`.
    pub ttl: Option<String>,
    /// The URL under which relying parties reach frontd, such as
    /// `http://pki.example.com`. When set, leaves carry a CRL distribution
    /// point `<url>/v1/pki/<mount>/crl?issuer=<issuer>`.
    #[serde(default)]
    pub public_base_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    pub name: String,
    pub engine_type: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// Key algorithms for roots, issuers and leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// Returns whether this is one of the RSA key sizes.
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096
        )
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "invalid key algorithm {text:?}: expected one of ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096"
                )
            })
    }
}

/// Certificate profiles of the CA engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// TLS server: EKU serverAuth.
    Server,
    /// TLS client: EKU clientAuth.
    Client,
    /// Both ends of mutual TLS: EKU serverAuth and clientAuth.
    Peer,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Server, Profile::Client, Profile::Peer];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Server => "server",
            Profile::Client => "client",
            Profile::Peer => "peer",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|profile| profile.as_str() == text)
            .ok_or_else(|| {
                format!("invalid profile {text:?}: expected one of server, client, peer")
            })
    }
}

/// Operations of a CA mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaRequest {
    GetRoot,
    /// The issuers' certificates followed by the root; with `issuer`, only
    /// that issuer's certificate followed by the root.
    GetChain {
        issuer: Option<String>,
    },
    GetIssuer {
        name: String,
    },
    CreateIssuer {
        name: String,
        key_algorithm: Option<KeyAlgorithm>,
        ttl: Option<String>,
        #[serde(default)]
        constraints: IssuerConstraints,
    },
    ListIssuers,
    Issue(IssueRequest),
    GetCert {
        serial: String,
    },
    /// Stored certificates in ascending serial order, at most `limit` of
    /// them, starting after the serial `after`. keyd applies a default and
    /// a maximum limit, so a caller pages by passing the last serial it got.
    ListCerts {
        issuer: Option<String>,
        limit: Option<u32>,
        after: Option<String>,
    },
    /// Signs a certificate for the key of a PKCS#10 CSR.
    SignCsr(SignCsrRequest),
    /// Revokes a leaf; revoking it again returns the first revocation.
    Revoke {
        serial: String,
        /// An RFC 5280 reason name such as `keyCompromise`; `unspecified`
        /// when `None`.
        reason: Option<String>,
        /// The issuer the caller was authorized for. When set, keyd rejects
        /// the request if the certificate has another issuer.
        issuer: Option<String>,
    },
    /// The issuer's current CRL, DER.
    GetCrl {
        issuer: String,
    },
    /// Issues a successor with the same subject, SANs, profile and issuer:
    /// a new key pair when keyd generated the old key, the same public key
    /// when the old certificate was signed for a CSR.
    Renew {
        serial: String,
        /// The old certificate's lifetime when `None`.
        ttl: Option<String>,
        /// The issuer the caller was authorized for, as for `Revoke`.
        issuer: Option<String>,
    },
    /// Like `ListCerts`, keeping only the records that match every set
    /// field of the filter.
    ListCertsFiltered {
        filter: CertFilter,
        limit: Option<u32>,
        after: Option<String>,
    },
    /// Deletes an issuer and its key. Without `force` it is rejected while
    /// the issuer has unexpired, unrevoked certificates.
    DeleteIssuer {
        name: String,
        force: bool,
    },
}

impl CaRequest {
    /// Returns the CA engine's name for the operation.
    pub fn operation(&self) -> &'static str {
        match self {
            CaRequest::GetRoot => "get-root",
            CaRequest::GetChain { .. } => "get-chain",
            CaRequest::GetIssuer { .. } => "get-issuer",
            CaRequest::CreateIssuer { .. } => "create-issuer",
            CaRequest::ListIssuers => "list-issuers",
            CaRequest::Issue(_) => "issue",
            CaRequest::GetCert { .. } => "get-cert",
            CaRequest::ListCerts { .. } => "list-certs",
            CaRequest::SignCsr(_) => "sign-csr",
            CaRequest::Revoke { .. } => "revoke",
            CaRequest::GetCrl { .. } => "get-crl",
            CaRequest::Renew { .. } => "renew",
            CaRequest::ListCertsFiltered { .. } => "list-certs",
            CaRequest::DeleteIssuer { .. } => "delete-issuer",
        }
    }

    /// Returns the issuer an operation acts on, for the operations whose
    /// policy resource names one.
    pub fn issuer(&self) -> Option<&str> {
        match self {
            CaRequest::CreateIssuer { name, .. } | CaRequest::DeleteIssuer { name, .. } => {
                Some(name)
            }
            CaRequest::Issue(request) => Some(&request.issuer),
            CaRequest::SignCsr(request) => Some(&request.issuer),
            CaRequest::Revoke { issuer, .. } | CaRequest::Renew { issuer, .. } => issuer.as_deref(),
            CaRequest::GetRoot
            | CaRequest::GetChain { .. }
            | CaRequest::GetIssuer { .. }
            | CaRequest::ListIssuers
            | CaRequest::GetCert { .. }
            | CaRequest::ListCerts { .. }
            | CaRequest::ListCertsFiltered { .. }
            | CaRequest::GetCrl { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueRequest {
    pub issuer: String,
    pub profile: Profile,
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    /// Validity as a duration string such as `24h` or `90d`; the profile's
    /// default when `None`.
    pub ttl: Option<String>,
    /// `ecdsa-p256` when `None`.
    pub key_algorithm: Option<KeyAlgorithm>,
    /// rfc822Name SANs.
    #[serde(default)]
    pub email_addresses: Vec<String>,
    /// uniformResourceIdentifier SANs.
    #[serde(default)]
    pub uris: Vec<String>,
    /// Key usages by their RFC 5280 names, such as `digitalSignature`; the
    /// profile's when `None`. Must be within what the profile allows.
    #[serde(default)]
    pub key_usages: Option<Vec<String>>,
    /// Extended key usages by their RFC 5280 names (`serverAuth`,
    /// `clientAuth`); the profile's when `None`. Must be within what the
    /// profile allows.
    #[serde(default)]
    pub extended_key_usages: Option<Vec<String>>,
}

/// The state of a stored certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    /// Not revoked and not expired.
    Valid,
    /// Not revoked, NotAfter passed.
    Expired,
    Revoked,
}

/// Filters of `list-certs`; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFilter {
    pub issuer: Option<String>,
    pub profile: Option<Profile>,
    pub state: Option<CertState>,
    /// Case-insensitive substring of the common name.
    pub common_name: Option<String>,
    /// RFC 3339; certificates whose NotAfter is before it.
    pub expiring_before: Option<String>,
}

/// A request to sign a CSR: the caller keeps its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignCsrRequest {
    pub issuer: String,
    pub profile: Profile,
    /// PEM `CERTIFICATE REQUEST`.
    pub csr: String,
    /// Validity as a duration string; the profile's default when `None`.
    pub ttl: Option<String>,
}

/// A certificate signed for a caller's CSR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCertificate {
    /// PEM.
    pub certificate: String,
    /// The issuer's certificate, PEM.
    pub issuing_ca: String,
    /// The issuer's certificate followed by the root, PEM.
    pub chain: Vec<String>,
    /// Lowercase hex, colon-free.
    pub serial_number: String,
    /// RFC 3339 UTC.
    pub not_before: String,
    /// RFC 3339 UTC.
    pub not_after: String,
    /// For example that the requested TTL was capped.
    pub warnings: Vec<String>,
}

// Replies are decoded, handled and dropped one at a time, like messages.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponseBody {
    State(SealState),
    Mounts(Vec<MountInfo>),
    Mount(MountInfo),
    Unmounted,
    Ca(CaResponse),
    /// Every policy rule, by name.
    PolicyRules(BTreeMap<String, PolicyRule>),
    /// The rule as stored.
    PolicyRule(PolicyRule),
    PolicyRuleDeleted,
    DenialRecorded,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub result: Result<ResponseBody, ErrorBody>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CaResponse {
    /// One PEM certificate (the root for `GetRoot`).
    Certificate(String),
    /// PEM certificates, the issuers first and the root last.
    Chain(Vec<String>),
    Issuer(IssuerInfo),
    Issuers(Vec<IssuerInfo>),
    Issued(IssuedCertificate),
    Cert(CertRecord),
    Certs(Vec<CertRecord>),
    Signed(SignedCertificate),
    /// A DER CRL.
    Crl(Vec<u8>),
    /// An issuer was deleted while it still had `active_certificates`
    /// unexpired, unrevoked certificates (0 without `force`).
    IssuerDeleted {
        name: String,
        active_certificates: u64,
    },
}

/// Constraints on the leaves an issuer signs, set when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerConstraints {
    /// DNS domains that every DNS name, email domain and URI host must equal
    /// or be below. Any name when empty.
    pub allowed_domains: Vec<String>,
    /// Whether DNS names may be wildcards such as `*.example.com`.
    pub allow_wildcards: bool,
    /// Whether IP addresses may appear in SANs.
    pub allow_ip_sans: bool,
    /// Networks such as `10.0.0.0/8` that IP SANs must be in. Any address
    /// when empty.
    pub allowed_ip_ranges: Vec<String>,
    /// Maximum leaf lifetime as a duration string; requests for longer are
    /// capped with a warning.
    pub max_ttl: Option<String>,
}

impl Default for IssuerConstraints {
    /// Any domain, no wildcards, IP SANs allowed from any range, no maximum
    /// TTL beyond the issuer's own expiry.
    fn default() -> Self {
        Self {
            allowed_domains: Vec::new(),
            allow_wildcards: false,
            allow_ip_sans: true,
            allowed_ip_ranges: Vec::new(),
            max_ttl: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerInfo {
    pub name: String,
    pub key_algorithm: KeyAlgorithm,
    pub subject: String,
    pub serial_number: String,
    /// RFC 3339 UTC.
    pub not_before: String,
    /// RFC 3339 UTC.
    pub not_after: String,
    /// PEM.
    pub certificate: String,
    #[serde(default)]
    pub constraints: IssuerConstraints,
}

/// A certificate that keyd generated together with its key pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// PEM.
    pub certificate: String,
    /// PKCS#8 PEM; keyd never stores it.
    pub private_key: SecretString,
    /// `ec`, `ed25519` or `rsa`.
    pub private_key_type: String,
    /// The issuer's certificate, PEM.
    pub issuing_ca: String,
    /// The issuer's certificate followed by the root, PEM.
    pub chain: Vec<String>,
    /// Lowercase hex, colon-free.
    pub serial_number: String,
    /// RFC 3339 UTC.
    pub not_before: String,
    /// RFC 3339 UTC.
    pub not_after: String,
    /// For example that the requested TTL was capped at the issuer's expiry.
    pub warnings: Vec<String>,
}

/// A stored leaf certificate (without a key, which keyd never stores).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial_number: String,
    pub issuer: String,
    pub profile: Profile,
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    #[serde(default)]
    pub email_addresses: Vec<String>,
    #[serde(default)]
    pub uris: Vec<String>,
    pub key_algorithm: KeyAlgorithm,
    /// RFC 3339 UTC.
    pub not_before: String,
    /// RFC 3339 UTC.
    pub not_after: String,
    /// The MCIAS username that requested it.
    pub issued_by: String,
    /// PEM.
    pub certificate: String,
    /// RFC 3339 UTC; `None` while the certificate is not revoked.
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// RFC 5280 reason name of the revocation.
    #[serde(default)]
    pub revocation_reason: Option<String>,
    /// Whether the certificate was signed for a caller's CSR, so keyd never
    /// had its private key.
    #[serde(default)]
    pub csr_signed: bool,
    /// Serial of the certificate this one renewed.
    #[serde(default)]
    pub renewed_from: Option<String>,
    /// Serial of the certificate that renewed this one.
    #[serde(default)]
    pub renewed_by: Option<String>,
}
