//! Routes of CA mounts: public certificate downloads, issuers, issuance and
//! the certificate index.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use metacrypt_protocol::policy::check_identifier;
use metacrypt_protocol::{
    CaRequest, CaResponse, CertFilter, CertRecord, CertState, IssueRequest, IssuedCertificate,
    IssuerConstraints, IssuerInfo, KeyAlgorithm, Profile, RequestBody, ResponseBody, SecretString,
    SignCsrRequest,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::{JsonBody, PathParams, QueryParams, RequestContext, SecretJson, unexpected_reply};
use crate::AppState;
use crate::auth::Authenticated;
use crate::authz::authorize;
use crate::error::ApiError;

const PEM_CONTENT_TYPE: &str = "application/x-pem-file";
const CRL_CONTENT_TYPE: &str = "application/pkix-crl";
/// The media type of one DER certificate (RFC 2585), which the URLs in the
/// Authority Information Access extension serve.
const CERT_CONTENT_TYPE: &str = "application/pkix-cert";

#[derive(Serialize)]
pub struct IssuerView {
    name: String,
    key_algorithm: KeyAlgorithm,
    subject: String,
    serial_number: String,
    not_before: String,
    not_after: String,
    certificate: String,
    allowed_domains: Vec<String>,
    allow_wildcards: bool,
    allow_ip_sans: bool,
    allowed_ip_ranges: Vec<String>,
    max_ttl: Option<String>,
}

impl From<IssuerInfo> for IssuerView {
    fn from(info: IssuerInfo) -> Self {
        Self {
            name: info.name,
            key_algorithm: info.key_algorithm,
            subject: info.subject,
            serial_number: info.serial_number,
            not_before: info.not_before,
            not_after: info.not_after,
            certificate: info.certificate,
            allowed_domains: info.constraints.allowed_domains,
            allow_wildcards: info.constraints.allow_wildcards,
            allow_ip_sans: info.constraints.allow_ip_sans,
            allowed_ip_ranges: info.constraints.allowed_ip_ranges,
            max_ttl: info.constraints.max_ttl,
        }
    }
}

#[derive(Serialize)]
pub struct IssuerList {
    issuers: Vec<IssuerView>,
}

#[derive(Serialize)]
pub struct CertView {
    serial_number: String,
    issuer: String,
    profile: Profile,
    common_name: String,
    dns_names: Vec<String>,
    ip_addresses: Vec<String>,
    email_addresses: Vec<String>,
    uris: Vec<String>,
    key_algorithm: KeyAlgorithm,
    not_before: String,
    not_after: String,
    issued_by: String,
    certificate: String,
    revoked_at: Option<String>,
    revocation_reason: Option<String>,
    csr_signed: bool,
    renewed_from: Option<String>,
    renewed_by: Option<String>,
    /// `valid`, `expired` or `revoked` at the time of the response.
    state: CertState,
}

impl From<CertRecord> for CertView {
    fn from(record: CertRecord) -> Self {
        let expired = time::OffsetDateTime::parse(
            &record.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .is_ok_and(|not_after| not_after <= time::OffsetDateTime::now_utc());
        let state = if record.revoked_at.is_some() {
            CertState::Revoked
        } else if expired {
            CertState::Expired
        } else {
            CertState::Valid
        };
        Self {
            state,
            serial_number: record.serial_number,
            issuer: record.issuer,
            profile: record.profile,
            common_name: record.common_name,
            dns_names: record.dns_names,
            ip_addresses: record.ip_addresses,
            email_addresses: record.email_addresses,
            uris: record.uris,
            key_algorithm: record.key_algorithm,
            not_before: record.not_before,
            not_after: record.not_after,
            issued_by: record.issued_by,
            certificate: record.certificate,
            revoked_at: record.revoked_at,
            revocation_reason: record.revocation_reason,
            csr_signed: record.csr_signed,
            renewed_from: record.renewed_from,
            renewed_by: record.renewed_by,
        }
    }
}

/// Number of certificates keyd returns per page when the request names no
/// limit.
const DEFAULT_CERT_PAGE: usize = 100;

/// One page of the certificate index. `next_after` is the last serial of
/// a full page, to pass as `after` for the next one, and `null` when the
/// page is not full. After a last page that is exactly full, the next
/// request returns an empty page.
#[derive(Serialize)]
pub struct CertList {
    certs: Vec<CertView>,
    next_after: Option<String>,
}

impl CertList {
    fn page(records: Vec<CertRecord>, limit: Option<u32>) -> Self {
        let page_size = limit.map_or(DEFAULT_CERT_PAGE, |limit| limit as usize);
        let full = !records.is_empty() && records.len() >= page_size;
        let next_after = if full {
            records.last().map(|record| record.serial_number.clone())
        } else {
            None
        };
        Self {
            certs: records.into_iter().map(CertView::from).collect(),
            next_after,
        }
    }
}

/// A newly issued certificate with its private key. The key is serialized
/// into the response body only; the type has no `Debug`.
#[derive(Serialize)]
pub struct IssuedView {
    certificate: String,
    private_key: SecretString,
    private_key_type: String,
    issuing_ca: String,
    chain: Vec<String>,
    serial_number: String,
    not_before: String,
    not_after: String,
    warnings: Vec<String>,
}

impl From<IssuedCertificate> for IssuedView {
    fn from(issued: IssuedCertificate) -> Self {
        Self {
            certificate: issued.certificate,
            private_key: issued.private_key,
            private_key_type: issued.private_key_type,
            issuing_ca: issued.issuing_ca,
            chain: issued.chain,
            serial_number: issued.serial_number,
            not_before: issued.not_before,
            not_after: issued.not_after,
            warnings: issued.warnings,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFilter {
    #[serde(default)]
    issuer: Option<String>,
}

/// Query of `GET /v1/pki/{mount}/certs`. keyd checks `limit` (default
/// 100, max 1000).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertQuery {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    state: Option<CertState>,
    #[serde(default)]
    common_name: Option<String>,
    #[serde(default)]
    expiring_before: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIssuerBody {
    name: String,
    #[serde(default)]
    key_algorithm: Option<KeyAlgorithm>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    allowed_domains: Vec<String>,
    #[serde(default)]
    allow_wildcards: bool,
    #[serde(default = "default_allow_ip_sans")]
    allow_ip_sans: bool,
    #[serde(default)]
    allowed_ip_ranges: Vec<String>,
    #[serde(default)]
    max_ttl: Option<String>,
}

fn default_allow_ip_sans() -> bool {
    IssuerConstraints::default().allow_ip_sans
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    issuer: String,
    profile: Profile,
    common_name: String,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    ip_addresses: Vec<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    key_algorithm: Option<KeyAlgorithm>,
    #[serde(default)]
    email_addresses: Vec<String>,
    #[serde(default)]
    uris: Vec<String>,
    #[serde(default)]
    key_usages: Option<Vec<String>>,
    #[serde(default)]
    extended_key_usages: Option<Vec<String>>,
}

fn pem_response(pem: String) -> Response {
    ([(header::CONTENT_TYPE, PEM_CONTENT_TYPE)], pem).into_response()
}

/// Joins PEM blocks so that each starts on its own line.
fn concat_pem(blocks: &[String]) -> String {
    let mut text = String::new();
    for block in blocks {
        text.push_str(block);
        if !block.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// Sends one CA operation to keyd and returns the CA reply. With a caller,
/// the policy check runs first; without one, the route is public.
async fn call_ca(
    state: &AppState,
    context: &RequestContext,
    caller: Option<&Authenticated>,
    mount: String,
    op: CaRequest,
) -> Result<CaResponse, ApiError> {
    let operation = op.operation();
    check_identifiers(&mount, &op)?;
    let body = RequestBody::Ca { mount, op };
    if let Some(auth) = caller {
        authorize(state, context, auth, &body).await?;
    }
    let caller = caller.map(Authenticated::caller);
    match state.keyd.call(context.origin(), caller, body).await? {
        ResponseBody::Ca(response) => Ok(response),
        other => Err(unexpected_reply(operation, &other)),
    }
}

/// Returns the issuer of a stored certificate, so that revoke and renew can
/// be checked against the policy resource `{mount}/{operation}/{issuer}`.
/// The lookup itself needs no get-cert permission; keyd rejects the
/// operation if the certificate's issuer differs by the time it runs.
///
/// NOTE: a caller who may not read certificates still learns whether a
/// serial exists (404 before the 403), but not its contents.
async fn issuer_of_certificate(
    state: &AppState,
    context: &RequestContext,
    auth: &Authenticated,
    mount: &str,
    serial: &str,
) -> Result<String, ApiError> {
    check_identifier("mount name", mount).map_err(ApiError::bad_request)?;
    let body = RequestBody::Ca {
        mount: mount.to_owned(),
        op: CaRequest::GetCert {
            serial: serial.to_owned(),
        },
    };
    match state
        .keyd
        .call(context.origin(), Some(auth.caller()), body)
        .await?
    {
        ResponseBody::Ca(CaResponse::Cert(record)) => Ok(record.issuer),
        other => Err(unexpected_reply("get-cert", &other)),
    }
}

/// Rejects an uppercase or otherwise invalid mount or issuer name with a
/// 400, including the `issuer` query filters that no policy resource names.
fn check_identifiers(mount: &str, op: &CaRequest) -> Result<(), ApiError> {
    check_identifier("mount name", mount).map_err(ApiError::bad_request)?;
    let issuer = match op {
        CaRequest::GetChain { issuer } | CaRequest::ListCerts { issuer, .. } => issuer.as_deref(),
        CaRequest::GetIssuer { name } => Some(name.as_str()),
        _ => op.issuer(),
    };
    match issuer {
        Some(name) => check_identifier("issuer name", name).map_err(ApiError::bad_request),
        None => Ok(()),
    }
}

fn unexpected_ca(operation: &str) -> ApiError {
    tracing::error!(operation, "keyd sent a CA reply of the wrong kind");
    ApiError::internal()
}

/// Query of the single-certificate downloads.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateQuery {
    #[serde(default)]
    format: Option<String>,
}

/// The encoding of a certificate or CRL download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Pem,
    Der,
}

/// Returns the encoding of a download: the `format` query parameter when
/// present, otherwise the one that the `Accept` header prefers (see
/// [`preferred_encoding`]).
fn download_encoding(
    format: Option<&str>,
    headers: &HeaderMap,
    der_type: &str,
    default: Encoding,
) -> Result<Encoding, ApiError> {
    match format {
        Some("der") => Ok(Encoding::Der),
        Some("pem") => Ok(Encoding::Pem),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid format {other:?}: expected pem or der"
        ))),
        None => {
            let accept = headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            Ok(preferred_encoding(&accept, der_type, default))
        }
    }
}

/// Picks PEM (`application/x-pem-file`) or DER (`der_type`) by an `Accept`
/// header as RFC 9110, section 12.5.1 describes it. Each media type takes
/// the q-value of the most specific media range that matches it (exact
/// type, then `type/*`, then `*/*`), compared without regard to case. The
/// higher q-value wins, then the more specific match. `default` wins a
/// tie, an empty header and a header that accepts neither type.
fn preferred_encoding(accept: &str, der_type: &str, default: Encoding) -> Encoding {
    let pem = media_type_preference(accept, PEM_CONTENT_TYPE);
    let der = media_type_preference(accept, der_type);
    if pem.0 == 0 && der.0 == 0 {
        return default;
    }
    match der.cmp(&pem) {
        std::cmp::Ordering::Greater => Encoding::Der,
        std::cmp::Ordering::Less => Encoding::Pem,
        std::cmp::Ordering::Equal => default,
    }
}

/// Returns the q-value in thousandths and the specificity (3 for the exact
/// type, 2 for `type/*`, 1 for `*/*`) of the most specific media range in
/// `accept` that matches `media_type`, or `(0, 0)` when none does. A range
/// with an invalid q-value is skipped.
fn media_type_preference(accept: &str, media_type: &str) -> (u16, u8) {
    let (main_type, _) = media_type.split_once('/').unwrap_or((media_type, ""));
    let mut best: Option<(u16, u8)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let specificity = if name.eq_ignore_ascii_case(media_type) {
            3
        } else if name
            .strip_suffix("/*")
            .is_some_and(|range_type| range_type.eq_ignore_ascii_case(main_type))
        {
            2
        } else if name == "*/*" {
            1
        } else {
            continue;
        };
        let mut quality = Some(1000);
        for parameter in parts {
            if let Some((key, value)) = parameter.split_once('=')
                && key.trim().eq_ignore_ascii_case("q")
            {
                quality = parse_quality(value.trim());
            }
        }
        let Some(quality) = quality else {
            continue;
        };
        if best.is_none_or(|(_, best_specificity)| specificity > best_specificity) {
            best = Some((quality, specificity));
        }
    }
    best.unwrap_or((0, 0))
}

/// Parses an RFC 9110 qvalue (`0` to `1` with at most three decimals) into
/// thousandths.
fn parse_quality(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Returns a certificate that keyd sent as PEM, as PEM or as DER
/// (`application/pkix-cert`).
fn certificate_response(
    pem: String,
    encoding: Encoding,
    operation: &str,
) -> Result<Response, ApiError> {
    if encoding == Encoding::Pem {
        return Ok(pem_response(pem));
    }
    match CertificateDer::from_pem_slice(pem.as_bytes()) {
        Ok(certificate) => Ok((
            [(header::CONTENT_TYPE, CERT_CONTENT_TYPE)],
            certificate.to_vec(),
        )
            .into_response()),
        Err(error) => {
            tracing::error!(operation, error = %error, "keyd sent a certificate that is not PEM");
            Err(ApiError::internal())
        }
    }
}

/// `GET /v1/pki/{mount}/ca[?format=pem|der]`: the root certificate, without
/// authentication.
pub async fn root_certificate(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(mount): PathParams<String>,
    QueryParams(query): QueryParams<CertificateQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let encoding = download_encoding(
        query.format.as_deref(),
        &headers,
        CERT_CONTENT_TYPE,
        Encoding::Pem,
    )?;
    match call_ca(&state, &context, None, mount, CaRequest::GetRoot).await? {
        CaResponse::Certificate(pem) => certificate_response(pem, encoding, "get-root"),
        _ => Err(unexpected_ca("get-root")),
    }
}

/// `GET /v1/pki/{mount}/ca/chain[?issuer=NAME]`: issuers then the root,
/// without authentication.
pub async fn chain(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(mount): PathParams<String>,
    QueryParams(filter): QueryParams<IssuerFilter>,
) -> Result<Response, ApiError> {
    let op = CaRequest::GetChain {
        issuer: filter.issuer,
    };
    match call_ca(&state, &context, None, mount, op).await? {
        CaResponse::Chain(blocks) => Ok(pem_response(concat_pem(&blocks))),
        _ => Err(unexpected_ca("get-chain")),
    }
}

/// `GET /v1/pki/{mount}/issuer/{name}[?format=pem|der]`: one issuer's
/// certificate, without authentication.
pub async fn issuer_certificate(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams((mount, name)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<CertificateQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let encoding = download_encoding(
        query.format.as_deref(),
        &headers,
        CERT_CONTENT_TYPE,
        Encoding::Pem,
    )?;
    match call_ca(&state, &context, None, mount, CaRequest::GetIssuer { name }).await? {
        CaResponse::Issuer(info) => certificate_response(info.certificate, encoding, "get-issuer"),
        CaResponse::Certificate(pem) => certificate_response(pem, encoding, "get-issuer"),
        _ => Err(unexpected_ca("get-issuer")),
    }
}

/// `GET /v1/pki/{mount}/issuers`.
pub async fn list_issuers(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(mount): PathParams<String>,
    auth: Authenticated,
) -> Result<Json<IssuerList>, ApiError> {
    match call_ca(&state, &context, Some(&auth), mount, CaRequest::ListIssuers).await? {
        CaResponse::Issuers(issuers) => Ok(Json(IssuerList {
            issuers: issuers.into_iter().map(IssuerView::from).collect(),
        })),
        _ => Err(unexpected_ca("list-issuers")),
    }
}

/// `POST /v1/pki/{mount}/issuers` (admin).
pub async fn create_issuer(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(mount): PathParams<String>,
    auth: Authenticated,
    JsonBody(body): JsonBody<CreateIssuerBody>,
) -> Result<Json<IssuerView>, ApiError> {
    let op = CaRequest::CreateIssuer {
        name: body.name,
        key_algorithm: body.key_algorithm,
        ttl: body.ttl,
        constraints: IssuerConstraints {
            allowed_domains: body.allowed_domains,
            allow_wildcards: body.allow_wildcards,
            allow_ip_sans: body.allow_ip_sans,
            allowed_ip_ranges: body.allowed_ip_ranges,
            max_ttl: body.max_ttl,
        },
    };
    match call_ca(&state, &context, Some(&auth), mount, op).await? {
        CaResponse::Issuer(info) => Ok(Json(info.into())),
        _ => Err(unexpected_ca("create-issuer")),
    }
}

/// `POST /v1/pki/{mount}/issue`: keyd generates the key pair and returns
/// it with the certificate; keyd stores the certificate only.
pub async fn issue(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(mount): PathParams<String>,
    auth: Authenticated,
    JsonBody(body): JsonBody<IssueBody>,
) -> Result<SecretJson<IssuedView>, ApiError> {
    let op = CaRequest::Issue(IssueRequest {
        issuer: body.issuer,
        profile: body.profile,
        common_name: body.common_name,
        dns_names: body.dns_names,
        ip_addresses: body.ip_addresses,
        ttl: body.ttl,
        key_algorithm: body.key_algorithm,
        email_addresses: body.email_addresses,
        uris: body.uris,
        key_usages: body.key_usages,
        extended_key_usages: body.extended_key_usages,
    });
    match call_ca(&state, &context, Some(&auth), mount, op).await? {
        CaResponse::Issued(issued) => Ok(SecretJson(issued.into())),
        _ => Err(unexpected_ca("issue")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignCsrBody {
    issuer: String,
    profile: Profile,
    csr: String,
    #[serde(default)]
    ttl: Option<String>,
}

/// A certificate signed for the caller's CSR.
#[derive(Serialize)]
pub struct SignedView {
    certificate: String,
    issuing_ca: String,
    chain: Vec<String>,
    serial_number: String,
    not_before: String,
    not_after: String,
    warnings: Vec<String>,
}

impl From<metacrypt_protocol::SignedCertificate> for SignedView {
    fn from(signed: metacrypt_protocol::SignedCertificate) -> Self {
        Self {
            certificate: signed.certificate,
            issuing_ca: signed.issuing_ca,
            chain: signed.chain,
            serial_number: signed.serial_number,
            not_before: signed.not_before,
            not_after: signed.not_after,
            warnings: signed.warnings,
        }
    }
}

/// `POST /v1/pki/{mount}/sign`: signs a certificate for a PKCS#10 CSR; the
/// caller keeps its private key.
pub async fn sign_csr(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(mount): PathParams<String>,
    auth: Authenticated,
    JsonBody(body): JsonBody<SignCsrBody>,
) -> Result<Json<SignedView>, ApiError> {
    let op = CaRequest::SignCsr(SignCsrRequest {
        issuer: body.issuer,
        profile: body.profile,
        csr: body.csr,
        ttl: body.ttl,
    });
    match call_ca(&state, &context, Some(&auth), mount, op).await? {
        CaResponse::Signed(signed) => Ok(Json(signed.into())),
        _ => Err(unexpected_ca("sign-csr")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/pki/{mount}/certs/{serial}/revoke` with `{"reason": ...}` or
/// `{}`: revokes a leaf and returns its record. Revoking it again returns
/// the first revocation.
pub async fn revoke(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams((mount, serial)): PathParams<(String, String)>,
    auth: Authenticated,
    JsonBody(body): JsonBody<RevokeBody>,
) -> Result<Json<CertView>, ApiError> {
    let issuer = issuer_of_certificate(&state, &context, &auth, &mount, &serial).await?;
    let op = CaRequest::Revoke {
        serial,
        reason: body.reason,
        issuer: Some(issuer),
    };
    match call_ca(&state, &context, Some(&auth), mount, op).await? {
        CaResponse::Cert(record) => Ok(Json(record.into())),
        _ => Err(unexpected_ca("revoke")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    #[serde(default)]
    ttl: Option<String>,
}

/// `POST /v1/pki/{mount}/certs/{serial}/renew` with `{"ttl": ...}` or
/// `{}`: the successor of a certificate. The reply is the issue reply with a
/// new private key when keyd generated the old key, and the sign reply when
/// the old certificate was signed for a CSR.
pub async fn renew(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams((mount, serial)): PathParams<(String, String)>,
    auth: Authenticated,
    JsonBody(body): JsonBody<RenewBody>,
) -> Result<Response, ApiError> {
    let issuer = issuer_of_certificate(&state, &context, &auth, &mount, &serial).await?;
    let op = CaRequest::Renew {
        serial,
        ttl: body.ttl,
        issuer: Some(issuer),
    };
    match call_ca(&state, &context, Some(&auth), mount, op).await? {
        CaResponse::Issued(issued) => Ok(SecretJson(IssuedView::from(issued)).into_response()),
        CaResponse::Signed(signed) => Ok(Json(SignedView::from(signed)).into_response()),
        _ => Err(unexpected_ca("renew")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteIssuerQuery {
    #[serde(default)]
    force: bool,
}

#[derive(Serialize)]
pub struct IssuerDeletedView {
    deleted: String,
    active_certificates: u64,
}

/// `DELETE /v1/pki/{mount}/issuers/{name}[?force=true]` (admin).
pub async fn delete_issuer(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams((mount, name)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<DeleteIssuerQuery>,
    auth: Authenticated,
) -> Result<Json<IssuerDeletedView>, ApiError> {
    let op = CaRequest::DeleteIssuer {
        name,
        force: query.force,
    };
    match call_ca(&state, &context, Some(&auth), mount, op).await? {
        CaResponse::IssuerDeleted {
            name,
            active_certificates,
        } => Ok(Json(IssuerDeletedView {
            deleted: name,
            active_certificates,
        })),
        _ => Err(unexpected_ca("delete-issuer")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlQuery {
    issuer: String,
    #[serde(default)]
    format: Option<String>,
}

/// `GET /v1/pki/{mount}/crl?issuer=NAME[&format=pem|der]`: the issuer's
/// CRL without authentication: PEM for `format=pem` or an `Accept` header
/// that prefers `application/x-pem-file`, DER otherwise.
pub async fn crl(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(mount): PathParams<String>,
    QueryParams(query): QueryParams<CrlQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let encoding = download_encoding(
        query.format.as_deref(),
        &headers,
        CRL_CONTENT_TYPE,
        Encoding::Der,
    )?;
    let op = CaRequest::GetCrl {
        issuer: query.issuer,
    };
    match call_ca(&state, &context, None, mount, op).await? {
        CaResponse::Crl(der) if encoding == Encoding::Pem => {
            Ok(pem_response(pem_block("X509 CRL", &der)))
        }
        CaResponse::Crl(der) => {
            Ok(([(header::CONTENT_TYPE, CRL_CONTENT_TYPE)], der).into_response())
        }
        _ => Err(unexpected_ca("get-crl")),
    }
}

/// Encodes DER as one PEM block with 64-character lines.
fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// `GET /v1/pki/{mount}/certs[?issuer=NAME][&limit=N][&after=SERIAL]`:
/// certificates in ascending serial order, one page at a time.
pub async fn list_certs(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(mount): PathParams<String>,
    QueryParams(query): QueryParams<CertQuery>,
    auth: Authenticated,
) -> Result<Json<CertList>, ApiError> {
    let filtered = query.profile.is_some()
        || query.state.is_some()
        || query.common_name.is_some()
        || query.expiring_before.is_some();
    let op = if filtered {
        CaRequest::ListCertsFiltered {
            filter: CertFilter {
                issuer: query.issuer,
                profile: query.profile,
                state: query.state,
                common_name: query.common_name,
                expiring_before: query.expiring_before,
            },
            limit: query.limit,
            after: query.after,
        }
    } else {
        CaRequest::ListCerts {
            issuer: query.issuer,
            limit: query.limit,
            after: query.after,
        }
    };
    match call_ca(&state, &context, Some(&auth), mount, op).await? {
        CaResponse::Certs(certs) => Ok(Json(CertList::page(certs, query.limit))),
        _ => Err(unexpected_ca("list-certs")),
    }
}

/// `GET /v1/pki/{mount}/certs/{serial}`.
pub async fn get_cert(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams((mount, serial)): PathParams<(String, String)>,
    auth: Authenticated,
) -> Result<Json<CertView>, ApiError> {
    match call_ca(
        &state,
        &context,
        Some(&auth),
        mount,
        CaRequest::GetCert { serial },
    )
    .await?
    {
        CaResponse::Cert(record) => Ok(Json(record.into())),
        _ => Err(unexpected_ca("get-cert")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_joined_on_lines() {
        let blocks = vec!["A\n".to_owned(), "B".to_owned(), "C\n".to_owned()];
        assert_eq!(concat_pem(&blocks), "A\nB\nC\n");
    }

    #[test]
    fn accept_header_picks_encoding() {
        use Encoding::{Der, Pem};
        let cases = [
            ("", Pem),
            ("application/pkix-cert", Der),
            ("Application/PKIX-Cert", Der),
            ("application/pkix-cert;q=0", Pem),
            ("application/pkix-cert; Q=0.000", Pem),
            ("application/pkix-certx", Pem),
            ("application/pkix-cert+json", Pem),
            ("application/x-pem-file, application/pkix-cert;q=0.1", Pem),
            ("application/x-pem-file;q=0.5, application/pkix-cert", Der),
            ("application/pkix-cert, */*", Der),
            ("application/pkix-cert, application/x-pem-file", Pem),
            ("*/*", Pem),
            ("application/*", Pem),
            ("application/x-pem-file;q=0, */*", Der),
            ("application/x-pem-file;q=0, application/*;q=0.2", Der),
            ("*/*;q=0.5, application/pkix-cert;q=0.4", Pem),
            ("text/html", Pem),
            ("application/pkix-cert;q=2", Pem),
            ("application/pkix-cert;q=abc", Pem),
            ("application/pkix-cert;q=0.5;level=1", Der),
            (",,;;=", Pem),
        ];
        for (accept, expected) in cases {
            assert_eq!(
                preferred_encoding(accept, CERT_CONTENT_TYPE, Pem),
                expected,
                "Accept: {accept}"
            );
        }
    }

    #[test]
    fn accept_header_keeps_crl_default() {
        use Encoding::{Der, Pem};
        let cases = [
            ("", Der),
            ("*/*", Der),
            ("application/x-pem-file", Pem),
            ("APPLICATION/X-PEM-FILE", Pem),
            ("application/x-pem-file;q=0", Der),
            ("application/pkix-crl, application/x-pem-file;q=0.9", Der),
        ];
        for (accept, expected) in cases {
            assert_eq!(
                preferred_encoding(accept, CRL_CONTENT_TYPE, Der),
                expected,
                "Accept: {accept}"
            );
        }
    }

    #[test]
    fn quality_values_parse() {
        assert_eq!(parse_quality("1"), Some(1000));
        assert_eq!(parse_quality("1.000"), Some(1000));
        assert_eq!(parse_quality("0.5"), Some(500));
        assert_eq!(parse_quality("0.125"), Some(125));
        assert_eq!(parse_quality("0"), Some(0));
        assert_eq!(parse_quality("1."), Some(1000));
        for invalid in ["", "1.5", "2", "0.1234", "-0", "0.x", ".5", "1.01"] {
            assert_eq!(parse_quality(invalid), None, "{invalid:?}");
        }
    }
}
