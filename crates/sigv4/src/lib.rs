//! AWS Signature Version 4 (SigV4), header-based, as the AWS SDKs and CLI
//! send it.
//!
//! Owns: the canonical request, the string to sign, the signing-key chain,
//! parsing of the `Authorization` header, and the checks a server makes
//! before trusting a request (scope, clock skew, which headers are signed,
//! signature). Knows nothing of accounts or where secrets are kept: a server
//! calls [`parse_request`], looks up the secret for the access key it names,
//! then calls [`ParsedRequest::verify`].
//!
//! Errors carry AWS's error types and message wording (see [`AuthError`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod canonical;
mod error;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use atrest_crypto::SecretBytes;
use atrest_crypto::hash::{HmacSha256Key, hmac_sha256, sha256};
use http::{HeaderMap, HeaderValue, Method, Uri};
use time::{Duration, OffsetDateTime, format_description::FormatItem, macros::format_description};
use zeroize::Zeroizing;

pub use canonical::{canonical_query, canonical_uri, uri_encode};
pub use error::AuthError;

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The largest clock difference AWS accepts between a request and the server.
pub const MAX_SKEW: Duration = Duration::minutes(5);

const AMZ_DATE: &[FormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// Formats a time as SigV4's `YYYYMMDDTHHMMSSZ`.
#[must_use]
pub fn format_amz_date(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(AMZ_DATE)
        .unwrap_or_default()
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    // `YYYYMMDDTHHMMSSZ`, read by hand: every request carries one, and the
    // format-description parser costs several times as much.
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let day = u8::try_from(num(6..8)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc())
}

/// Access key id and secret for signing.
pub struct Credentials<'a> {
    /// The access key id (not secret).
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret_access_key: &'a [u8],
}

/// The derived key for one (secret, date, region, service).
/// The signing key of a scope, prepared for HMAC (see [`HmacSha256Key`]).
fn signing_key(secret: &[u8], date: &str, region: &str, service: &str) -> HmacSha256Key {
    let mut first = SecretBytes::new(Vec::with_capacity(4 + secret.len()));
    first.expose_mut().extend_from_slice(b"AWS4");
    first.expose_mut().extend_from_slice(secret);
    let k_date = Zeroizing::new(hmac_sha256(first.expose(), date.as_bytes()));
    let k_region = Zeroizing::new(hmac_sha256(&*k_date, region.as_bytes()));
    let k_service = Zeroizing::new(hmac_sha256(&*k_region, service.as_bytes()));
    let k = Zeroizing::new(hmac_sha256(&*k_service, b"aws4_request"));
    HmacSha256Key::new(&*k)
}

/// Derived signing keys, one per access key for its most recent scope
/// (date, region, service). Deriving takes four HMACs; a client or server
/// sending many requests under one key derives once a day. An entry is used
/// only for the same secret (compared in constant time with a copy held in
/// a zeroizing buffer), so a changed secret can never be verified with a
/// stale key.
#[derive(Default)]
pub struct SigningKeyCache {
    entries: RwLock<HashMap<String, CacheEntry>>,
}

struct CacheEntry {
    /// `date/region/service`.
    scope: String,
    secret: SecretBytes,
    key: Arc<HmacSha256Key>,
}

/// Whether `scope` is `date/region/service` (without building that string).
fn same_scope(scope: &str, date: &str, region: &str, service: &str) -> bool {
    let mut parts = scope.splitn(3, '/');
    parts.next() == Some(date) && parts.next() == Some(region) && parts.next() == Some(service)
}

impl core::fmt::Debug for SigningKeyCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SigningKeyCache(<redacted>)")
    }
}

/// Most access keys a cache holds before it starts over.
const CACHE_LIMIT: usize = 100_000;

impl SigningKeyCache {
    /// An empty cache.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn get(
        &self,
        access_key_id: &str,
        secret: &[u8],
        date: &str,
        region: &str,
        service: &str,
    ) -> Arc<HmacSha256Key> {
        if let Some(e) = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(access_key_id)
            && same_scope(&e.scope, date, region, service)
            && atrest_crypto::ct_eq(e.secret.expose(), secret)
        {
            return Arc::clone(&e.key);
        }
        let key = Arc::new(signing_key(secret, date, region, service));
        let mut map = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        map.insert(
            access_key_id.to_owned(),
            CacheEntry {
                scope: [date, region, service].join("/"),
                secret: SecretBytes::new(secret.to_vec()),
                key: Arc::clone(&key),
            },
        );
        key
    }

    /// Drops the cached key of `access_key_id`.
    pub fn forget(&self, access_key_id: &str) {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(access_key_id);
    }
}

/// The string to sign for the scope `date/region/service/aws4_request`.
fn string_to_sign(
    amz_date: &str,
    [date, region, service]: [&str; 3],
    canonical_request: &[u8],
) -> String {
    let hash = hex_sha256(canonical_request);
    let mut out = String::with_capacity(128 + amz_date.len() + region.len() + service.len());
    for part in [
        ALGORITHM,
        "\n",
        amz_date,
        "\n",
        date,
        "/",
        region,
        "/",
        service,
        "/aws4_request\n",
        &hash,
    ] {
        out.push_str(part);
    }
    out
}

/// SHA-256 of `data` in lowercase hex (`hex::encode` builds its string a
/// character at a time, several times slower; this runs on every request).
fn hex_sha256(data: &[u8]) -> String {
    hex_lower(&sha256(data))
}

fn hex_lower(bytes: &[u8; 32]) -> String {
    let mut out = [0u8; 64];
    // 32 bytes always fit 64 hex digits, which are ASCII.
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// The credential scope and time a request is signed for.
pub struct Scope<'a> {
    /// Region.
    pub region: &'a str,
    /// Service name (`kms`, `atrest`).
    pub service: &'a str,
    /// Signing time.
    pub time: OffsetDateTime,
}

/// Signs a request in place: sets `x-amz-date` and `authorization`.
///
/// Signs `host` (which must already be set), `x-amz-date`, `content-type` and
/// every `x-amz-*` header present: all that [`parse_request`] requires to be
/// signed. A header of those kinds added after signing makes the request
/// refused ([`AuthError::UnsignedHeader`]).
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    creds: &Credentials<'_>,
    scope: &Scope<'_>,
) -> Result<(), AuthError> {
    sign_cached(method, uri, headers, body, creds, scope, None)
}

/// [`sign`], deriving the signing key through `cache` when given.
pub fn sign_cached(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    creds: &Credentials<'_>,
    scope: &Scope<'_>,
    cache: Option<&SigningKeyCache>,
) -> Result<(), AuthError> {
    let (region, service) = (scope.region, scope.service);
    let amz_date = format_amz_date(scope.time);
    let date = amz_date.get(..8).unwrap_or_default().to_owned();
    headers.insert(
        "x-amz-date",
        HeaderValue::from_str(&amz_date)
            .map_err(|_| AuthError::IncompleteSignature("bad date".into()))?,
    );
    headers.remove(http::header::AUTHORIZATION);
    let mut signed: Vec<String> = headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k == "host" || must_be_signed(k))
        .collect();
    signed.sort();
    signed.dedup();
    if !signed.iter().any(|h| h == "host") {
        return Err(AuthError::IncompleteSignature(
            "a Host header is required to sign a request".into(),
        ));
    }
    let payload_hash = hex_sha256(body);
    let signed = signed.join(";");
    let canonical = canonical::canonical_request(method, uri, headers, &signed, &payload_hash)?;
    let sts = string_to_sign(&amz_date, [&date, region, service], &canonical);
    let key = match cache {
        Some(c) => c.get(
            creds.access_key_id,
            creds.secret_access_key,
            &date,
            region,
            service,
        ),
        None => Arc::new(signing_key(creds.secret_access_key, &date, region, service)),
    };
    let signature = hex_lower(&key.sign(sts.as_bytes()));
    let value = format!(
        "{ALGORITHM} Credential={}/{date}/{region}/{service}/aws4_request, SignedHeaders={signed}, Signature={signature}",
        creds.access_key_id,
    );
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&value).map_err(|_| {
            AuthError::IncompleteSignature("access key id is not a valid header value".into())
        })?,
    );
    Ok(())
}

/// The `Authorization` header, parsed: one copy of the (trimmed) value and
/// where its parts lie in it, so that parsing allocates once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    value: String,
    /// Byte ranges in `value`: access key id, date, region, service, and
    /// the `;`-separated signed header names.
    parts: [(usize, usize); 5],
    signature: [u8; 32],
}

impl Authorization {
    fn part(&self, i: usize) -> &str {
        let (start, end) = self.parts[i];
        self.value.get(start..end).unwrap_or_default()
    }

    /// The access key id of the credential.
    #[must_use]
    pub fn access_key_id(&self) -> &str {
        self.part(0)
    }

    /// The credential scope's date, `YYYYMMDD`.
    #[must_use]
    pub fn date(&self) -> &str {
        self.part(1)
    }

    /// The credential scope's region.
    #[must_use]
    pub fn region(&self) -> &str {
        self.part(2)
    }

    /// The credential scope's service.
    #[must_use]
    pub fn service(&self) -> &str {
        self.part(3)
    }

    /// The signed header names as listed, `;`-separated.
    #[must_use]
    pub fn signed_headers(&self) -> &str {
        self.part(4)
    }

    /// The signature bytes.
    #[must_use]
    pub fn signature(&self) -> &[u8; 32] {
        &self.signature
    }
}

/// Where `part`, a subslice of `whole`, lies in it.
fn range_in(whole: &str, part: &str) -> (usize, usize) {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    (start, start + part.len())
}

/// Parses an `Authorization` header value.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let value = value.trim();
    let (algorithm, rest) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(AuthError::IncompleteSignature(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'."
        )));
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((name, v)) = part.split_once('=') else {
            return Err(AuthError::IncompleteSignature(format!(
                "Authorization header requires each component to be of the form name=value, got '{part}'."
            )));
        };
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => {
                return Err(AuthError::IncompleteSignature(format!(
                    "Authorization header has an unknown component '{name}'."
                )));
            }
        };
        if slot.replace(v).is_some() {
            return Err(AuthError::IncompleteSignature(format!(
                "Authorization header has '{name}' more than once."
            )));
        }
    }
    let mut missing = String::new();
    for (name, v) in [
        ("Credential", &credential),
        ("Signature", &signature),
        ("SignedHeaders", &signed),
    ] {
        if v.is_none() {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(AuthError::IncompleteSignature(format!(
            "{missing}Authorization={value}"
        )));
    };
    // Five elements and no sixth, without collecting them.
    let mut parts = credential.split('/');
    let [
        Some(akid),
        Some(date),
        Some(region),
        Some(service),
        Some(terminator),
        None,
    ] = std::array::from_fn::<_, 6, _>(|_| parts.next())
    else {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
        )));
    };
    if terminator != "aws4_request" {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )));
    }
    if akid.is_empty() || region.is_empty() || service.is_empty() {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential has an empty element: '{credential}'."
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential date must be YYYYMMDD, got '{date}'."
        )));
    }
    if signed
        .split(';')
        .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(AuthError::IncompleteSignature(format!(
            "SignedHeaders must be a ';'-separated list of lower-case header names, got '{signed}'."
        )));
    }
    let mut sig = [0u8; 32];
    if signature.len() != 64 || hex::decode_to_slice(signature, &mut sig).is_err() {
        return Err(AuthError::IncompleteSignature(
            "Signature must be 64 hexadecimal digits.".into(),
        ));
    }
    Ok(Authorization {
        parts: [akid, date, region, service, signed].map(|p| range_in(value, p)),
        value: value.to_owned(),
        signature: sig,
    })
}

/// What a server checks a request against.
pub struct Policy<'a> {
    /// The service name the credential scope must name (`kms`).
    pub service: &'a str,
    /// Regions this server serves.
    pub regions: &'a [String],
    /// The server's current time.
    pub now: OffsetDateTime,
}

/// A request whose form, scope and time have been checked; only the
/// signature remains, which needs the secret of [`ParsedRequest::access_key_id`].
#[derive(Debug)]
pub struct ParsedRequest {
    auth: Authorization,
    string_to_sign: String,
    time: OffsetDateTime,
}

impl ParsedRequest {
    /// The access key id the request claims.
    #[must_use]
    pub fn access_key_id(&self) -> &str {
        self.auth.access_key_id()
    }

    /// The region of the credential scope (one the server serves).
    #[must_use]
    pub fn region(&self) -> &str {
        self.auth.region()
    }

    /// The request time from `X-Amz-Date`.
    #[must_use]
    pub fn time(&self) -> OffsetDateTime {
        self.time
    }

    /// Checks the signature with the secret access key, in constant time.
    pub fn verify(&self, secret_access_key: &[u8]) -> Result<(), AuthError> {
        self.verify_cached(secret_access_key, None)
    }

    /// [`ParsedRequest::verify`], deriving the signing key through `cache`.
    pub fn verify_cached(
        &self,
        secret_access_key: &[u8],
        cache: Option<&SigningKeyCache>,
    ) -> Result<(), AuthError> {
        let (a, secret) = (&self.auth, secret_access_key);
        let key = match cache {
            Some(c) => c.get(a.access_key_id(), secret, a.date(), a.region(), a.service()),
            None => Arc::new(signing_key(secret, a.date(), a.region(), a.service())),
        };
        let expected = key.sign(self.string_to_sign.as_bytes());
        if atrest_crypto::ct_eq(&expected, self.auth.signature()) {
            Ok(())
        } else {
            Err(AuthError::signature_mismatch())
        }
    }
}

/// Whether `name` is a header the signature must cover when it is present:
/// `content-type` and every `x-amz-*` header, as AWS requires ("If the
/// Content-Type header is present in the request, you must add it to the
/// CanonicalHeaders list. Any x-amz-* headers that you plan to include in
/// your request must also be added." — Amazon S3 API Reference, Signature
/// Calculations for the Authorization Header). `name` is lower-case, as
/// [`HeaderMap`] keeps names.
fn must_be_signed(name: &str) -> bool {
    name == "content-type" || name.starts_with("x-amz-")
}

/// The first (in name order) header present in `headers` that must be
/// signed but is not in `signed_headers`, if any. `Authorization` itself is
/// never signed and never asked for (it matches neither rule).
fn unsigned_header<'h>(headers: &'h HeaderMap, signed_headers: &str) -> Option<&'h str> {
    headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|name| must_be_signed(name))
        .filter(|name| {
            !signed_headers
                .split(';')
                .any(|s| s.eq_ignore_ascii_case(name))
        })
        .min()
}

/// Checks everything about a request that does not need the secret: the
/// `Authorization` header's form, the credential scope (service, served
/// region, date), the clock skew, and the signed headers; and builds the
/// string to sign.
///
/// The signed headers must include `host`, `x-amz-date`, and every
/// `content-type` or `x-amz-*` header the request carries
/// ([`AuthError::UnsignedHeader`] otherwise). A header outside the
/// signature can be rewritten by anyone who captured the request: the
/// operation of a KMS call is its `X-Amz-Target`, so within the five
/// minutes a signature is current, a captured `DescribeKey` with that
/// header unsigned would replay as a `DisableKey` of the same body.
pub fn parse_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    policy: &Policy<'_>,
) -> Result<ParsedRequest, AuthError> {
    let Some(auth_value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(AuthError::MissingAuthenticationToken);
    };
    let auth_value = auth_value
        .to_str()
        .map_err(|_| AuthError::IncompleteSignature("Authorization header is not ASCII.".into()))?;
    let auth = parse_authorization(auth_value)?;

    let Some(amz_date) = headers.get("x-amz-date") else {
        return Err(AuthError::IncompleteSignature(
            "Authorization header requires existence of an 'X-Amz-Date' header.".into(),
        ));
    };
    let amz_date = amz_date.to_str().unwrap_or_default();
    let Some(time) = parse_amz_date(amz_date) else {
        return Err(AuthError::IncompleteSignature(format!(
            "X-Amz-Date must be in the ISO8601 basic format YYYYMMDD'T'HHMMSS'Z', got '{amz_date}'."
        )));
    };
    // The basic format parsed, so its first eight characters are the day.
    let request_day = amz_date.get(..8).unwrap_or_default();
    if auth.date() != request_day {
        return Err(AuthError::InvalidSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{request_day}', from '{amz_date}'.",
            auth.date()
        )));
    }
    if auth.service() != policy.service {
        return Err(AuthError::InvalidSignature(format!(
            "Credential should be scoped to correct service: '{}'.",
            policy.service
        )));
    }
    if !policy.regions.iter().any(|r| r == auth.region()) {
        return Err(AuthError::InvalidSignature(format!(
            "Credential should be scoped to a valid region, not '{}'. This server serves: {}.",
            auth.region(),
            policy.regions.join(", ")
        )));
    }
    if time < policy.now - MAX_SKEW {
        return Err(AuthError::InvalidSignature(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
            format_amz_date(policy.now - MAX_SKEW),
            format_amz_date(policy.now)
        )));
    }
    if time > policy.now + MAX_SKEW {
        return Err(AuthError::InvalidSignature(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
            format_amz_date(policy.now + MAX_SKEW),
            format_amz_date(policy.now)
        )));
    }
    if !auth.signed_headers().split(';').any(|h| h == "host") {
        return Err(AuthError::InvalidSignature(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    if !auth.signed_headers().split(';').any(|h| h == "x-amz-date") {
        return Err(AuthError::InvalidSignature(
            "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    if let Some(name) = unsigned_header(headers, auth.signed_headers()) {
        return Err(AuthError::UnsignedHeader(name.to_owned()));
    }
    let body_hash = hex_sha256(body);
    let payload_hash = match headers.get("x-amz-content-sha256") {
        None => body_hash,
        Some(v) if v.as_bytes() == body_hash.as_bytes() => body_hash,
        Some(_) => {
            return Err(AuthError::InvalidSignature(
                "The provided 'x-amz-content-sha256' header does not match what was computed."
                    .into(),
            ));
        }
    };
    let canonical =
        canonical::canonical_request(method, uri, headers, auth.signed_headers(), &payload_hash)?;
    let string_to_sign = string_to_sign(
        amz_date,
        [auth.date(), auth.region(), auth.service()],
        &canonical,
    );
    Ok(ParsedRequest {
        auth,
        string_to_sign,
        time,
    })
}

#[cfg(test)]
mod tests;
