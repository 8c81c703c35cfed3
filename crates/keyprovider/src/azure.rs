//! Azure Key Vault (keys REST API 7.4), with a client-credentials token from
//! the Microsoft identity platform.
//!
//! * Tokens: `POST {authority}/{tenant}/oauth2/v2.0/token` (form-encoded,
//!   `grant_type=client_credentials`), one for the vault's scope and one for
//!   Azure Resource Manager's. Each is cached until shortly before it
//!   expires; a 401 from the vault or Resource Manager fetches a fresh one
//!   once.
//! * The vault must have purge protection and be in the configured region:
//!   both are read from Resource Manager (`GET {management}{vault_resource_id}`)
//!   before the first use of a key and again every ten minutes (so the
//!   server starts while Azure is unreachable; the first call then fails as
//!   unavailable). A vault that fails either is refused as a configuration
//!   error, and so is a key whose `recoveryLevel` says it can be purged.
//! * Keys are named `name` (the current version wraps) or `name/version` (a
//!   pinned version wraps). Wrapping is `POST /keys/{name}[/{version}]/wrapkey`
//!   with `RSA-OAEP-256` (default), `RSA-OAEP` or `A256KW`.
//! * A wrapped key records the algorithm and the key version that wrapped it
//!   (from the `kid` Azure returns), so unwrapping uses that version after the
//!   key is rotated in Azure; rotation needs no change in atrest. Layout:
//!   `[1][alg id][n][n bytes of version][Azure's wrapped bytes]`.
//! * `A256KW` needs a multiple of 8 bytes and at least 16: the data key is
//!   framed as `[length][data key][zeros]` before it is wrapped.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atrest_crypto::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::config::{AzureKeyVaultConfig, Secret};
use crate::http::{HttpClient, HttpResponse};
use crate::{KeyProvider, ProviderError, RemoteKey};

/// The Key Vault REST API version spoken.
pub const API_VERSION: &str = "7.4";
/// The Resource Manager API version used to read the vault.
pub const ARM_API_VERSION: &str = "2022-07-01";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const DEFAULT_MANAGEMENT: &str = "https://management.azure.com";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
const HSM_SCOPE: &str = "https://managedhsm.azure.net/.default";
const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// How long a passed vault check (purge protection, region) is trusted.
const VAULT_RECHECK: Duration = Duration::from_secs(600);
/// The wrapped-key layout's version.
const FORMAT_V1: u8 = 1;

/// A wrapping algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    RsaOaep256,
    RsaOaep,
    A256Kw,
}

impl Alg {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "RSA-OAEP-256" => Some(Self::RsaOaep256),
            "RSA-OAEP" => Some(Self::RsaOaep),
            "A256KW" => Some(Self::A256Kw),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::RsaOaep256 => "RSA-OAEP-256",
            Self::RsaOaep => "RSA-OAEP",
            Self::A256Kw => "A256KW",
        }
    }
    fn id(self) -> u8 {
        match self {
            Self::RsaOaep256 => 1,
            Self::RsaOaep => 2,
            Self::A256Kw => 3,
        }
    }
    fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::RsaOaep256),
            2 => Some(Self::RsaOaep),
            3 => Some(Self::A256Kw),
            _ => None,
        }
    }
    fn is_rsa(self) -> bool {
        matches!(self, Self::RsaOaep256 | Self::RsaOaep)
    }
}

/// Which token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Vault,
    Arm,
}

/// A cached access token.
struct Token {
    value: Secret,
    refresh_at: Instant,
}

/// What Resource Manager says about the vault.
#[derive(Debug, Clone)]
struct VaultFacts {
    location: String,
}

/// Which call an answer came from (errors map differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Describe,
    Wrap,
    Unwrap,
}

/// Azure Key Vault.
pub struct AzureKeyVault {
    http: HttpClient,
    vault_url: String,
    vault_scope: &'static str,
    region: String,
    tenant_id: String,
    client_id: String,
    client_secret: Secret,
    authority: String,
    management: String,
    vault_resource_id: String,
    alg: Alg,
    vault_token: Mutex<Option<Token>>,
    arm_token: Mutex<Option<Token>>,
    vault_checked: Mutex<Option<(Instant, VaultFacts)>>,
}

impl core::fmt::Debug for AzureKeyVault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AzureKeyVault")
            .field("vault_url", &self.vault_url)
            .field("region", &self.region)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("vault_resource_id", &self.vault_resource_id)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

use crate::cfg_err;

/// A base URL without its trailing slashes; it must be http(s).
fn base_url(what: &str, url: &str) -> Result<String, ProviderError> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| ProviderError::Config(format!("{what} {url:?} is not an http(s) URL")))?;
    if rest.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(ProviderError::Config(format!(
            "{what} {url:?} is not a base URL"
        )));
    }
    url.parse::<http::Uri>()
        .map_err(|e| ProviderError::Config(format!("{what} {url:?}: {e}")))?;
    Ok(url.to_owned())
}

fn token_chars(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// A region or location as Azure compares them: lower case, no spaces
/// (`West Europe` is `westeurope`).
fn normalize_region(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// `application/x-www-form-urlencoded`.
fn form_encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        for (j, s) in [k, v].into_iter().enumerate() {
            if j > 0 {
                out.push(b'=');
            }
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b);
                } else {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
        }
    }
    out
}

/// A remote key: `name` or `name/version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyRef<'a> {
    name: &'a str,
    version: Option<&'a str>,
}

impl KeyRef<'_> {
    fn path(&self) -> String {
        match self.version {
            Some(v) => format!("/keys/{}/{v}", self.name),
            None => format!("/keys/{}", self.name),
        }
    }
}

fn valid_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn parse_key(key: &str) -> Result<KeyRef<'_>, ProviderError> {
    let (name, version) = match key.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (key, None),
    };
    // Key Vault names: 1 to 127 letters, digits and dashes.
    if name.is_empty()
        || name.len() > 127
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ProviderError::Config(format!(
            "{key:?} is not an Azure key name (1 to 127 letters, digits and '-', then optionally /version)"
        )));
    }
    if let Some(v) = version
        && !valid_version(v)
    {
        return Err(ProviderError::Config(format!(
            "{key:?}: the key version must be letters and digits"
        )));
    }
    Ok(KeyRef { name, version })
}

/// The version at the end of a key id (`https://v.vault.azure.net/keys/name/version`).
fn version_of_kid<'a>(kid: &'a str, name: &str) -> Option<&'a str> {
    let (_, after) = kid.split_once("/keys/")?;
    let (n, v) = after.split_once('/')?;
    let v = v.trim_end_matches('/');
    (n.eq_ignore_ascii_case(name) && valid_version(v)).then_some(v)
}

/// A wrapped key: which algorithm and key version wrapped it, and Azure's bytes.
#[derive(Debug, PartialEq, Eq)]
struct Wrapped<'a> {
    alg: Alg,
    version: &'a str,
    value: &'a [u8],
}

fn encode_wrapped(alg: Alg, version: &str, value: &[u8]) -> Result<Vec<u8>, ProviderError> {
    let n = u8::try_from(version.len())
        .ok()
        .filter(|_| valid_version(version))
        .ok_or_else(|| ProviderError::Protocol(format!("key version {version:?} is malformed")))?;
    let mut out = Vec::with_capacity(3 + version.len() + value.len());
    out.extend_from_slice(&[FORMAT_V1, alg.id(), n]);
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(value);
    Ok(out)
}

fn decode_wrapped(w: &[u8]) -> Result<Wrapped<'_>, ProviderError> {
    let bad =
        |why: &str| ProviderError::InvalidCiphertext(format!("not an Azure wrapped key: {why}"));
    let [format, alg, n, rest @ ..] = w else {
        return Err(bad("too short"));
    };
    if *format != FORMAT_V1 {
        return Err(bad("unknown format"));
    }
    let alg = Alg::from_id(*alg).ok_or_else(|| bad("unknown algorithm"))?;
    let n = usize::from(*n);
    if rest.len() <= n {
        return Err(bad("too short"));
    }
    let (version, value) = rest.split_at(n);
    let version = std::str::from_utf8(version)
        .ok()
        .filter(|v| valid_version(v))
        .ok_or_else(|| bad("malformed key version"))?;
    Ok(Wrapped {
        alg,
        version,
        value,
    })
}

/// `A256KW` wraps multiples of 8 bytes, at least 16: `[len][key][zeros]`.
fn kw_frame(data_key: &[u8]) -> SecretBytes {
    let n = (data_key.len() + 1).max(16).div_ceil(8) * 8;
    let mut v = Vec::with_capacity(n);
    // data_key is at most 64 bytes (checked before).
    v.push(u8::try_from(data_key.len()).unwrap_or(u8::MAX));
    v.extend_from_slice(data_key);
    v.resize(n, 0);
    SecretBytes::new(v)
}

fn kw_unframe(framed: &SecretBytes) -> Result<SecretBytes, ProviderError> {
    let f = framed.expose();
    let bad = || ProviderError::InvalidCiphertext("the unwrapped key is not framed".into());
    let (&len, rest) = f.split_first().ok_or_else(bad)?;
    let len = usize::from(len);
    if len == 0 || len > rest.len() || rest[len..].iter().any(|&b| b != 0) {
        return Err(bad());
    }
    Ok(SecretBytes::new(rest[..len].to_vec()))
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Azure's error object: `(code, inner code, message)`.
fn azure_error(resp: &HttpResponse) -> (String, String, String) {
    let v = resp.json();
    let e = &v["error"];
    let code = e["code"].as_str().unwrap_or_default().to_owned();
    let inner = e["innererror"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut message: String = e["message"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if code.is_empty() && message.is_empty() {
        message = resp.excerpt();
    }
    (code, inner, message)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl AzureKeyVault {
    /// A provider for one vault. Makes no call: the vault is checked (purge
    /// protection, region) before its keys are first used.
    pub fn new(c: &AzureKeyVaultConfig) -> Result<Self, ProviderError> {
        let vault_url = base_url("vault_url", &c.vault_url)?;
        let authority = base_url(
            "authority_url",
            c.authority_url.as_deref().unwrap_or(DEFAULT_AUTHORITY),
        )?;
        let management = base_url(
            "management_url",
            c.management_url.as_deref().unwrap_or(DEFAULT_MANAGEMENT),
        )?;
        if !token_chars(&c.tenant_id, b"-.") {
            return Err(ProviderError::Config(format!(
                "tenant_id {:?} is not a tenant id or domain",
                c.tenant_id
            )));
        }
        if !token_chars(&c.client_id, b"-") {
            return Err(ProviderError::Config(format!(
                "client_id {:?} is not an application id",
                c.client_id
            )));
        }
        if c.client_secret.as_str()?.is_empty() {
            return Err(ProviderError::Config("client_secret is empty".into()));
        }
        let rid = c.vault_resource_id.trim().trim_end_matches('/');
        if !rid.starts_with("/subscriptions/")
            || !rid.contains("/providers/Microsoft.KeyVault/")
            || !rid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.()".contains(&b))
        {
            return Err(ProviderError::Config(format!(
                "vault_resource_id {:?} is not a Key Vault resource id \
                 (/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.KeyVault/vaults/<name>)",
                c.vault_resource_id
            )));
        }
        if normalize_region(&c.region).is_empty() {
            return Err(ProviderError::Config("region is empty".into()));
        }
        let alg = match c.algorithm.as_deref() {
            None => Alg::RsaOaep256,
            Some(a) => Alg::parse(a).ok_or_else(|| {
                ProviderError::Config(format!(
                    "algorithm {a:?} is not one of RSA-OAEP-256, RSA-OAEP, A256KW"
                ))
            })?,
        };
        let host = vault_url
            .split_once("://")
            .map_or("", |(_, h)| h)
            .split(['/', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let vault_scope = if host.ends_with(".managedhsm.azure.net") {
            HSM_SCOPE
        } else {
            VAULT_SCOPE
        };
        Ok(Self {
            http: HttpClient::new(c.ca_file.as_deref(), c.transport())?,
            vault_url,
            vault_scope,
            region: c.region.trim().to_owned(),
            tenant_id: c.tenant_id.clone(),
            client_id: c.client_id.clone(),
            client_secret: Secret::new(c.client_secret.expose().to_vec()),
            authority,
            management,
            vault_resource_id: rid.to_owned(),
            alg,
            vault_token: Mutex::new(None),
            arm_token: Mutex::new(None),
            vault_checked: Mutex::new(None),
        })
    }

    fn vault_name(&self) -> &str {
        self.vault_resource_id
            .rsplit('/')
            .next()
            .unwrap_or(&self.vault_resource_id)
    }

    /// Drops the secret from a message, should a server ever echo it.
    fn redact(&self, msg: String) -> String {
        match self.client_secret.as_str() {
            Ok(s) if s.len() >= 4 && msg.contains(s) => msg.replace(s, "<redacted>"),
            _ => msg,
        }
    }

    fn token_slot(&self, scope: Scope) -> &Mutex<Option<Token>> {
        match scope {
            Scope::Vault => &self.vault_token,
            Scope::Arm => &self.arm_token,
        }
    }

    /// `Bearer <token>` for `scope`, from the cache or the token endpoint.
    fn bearer(&self, scope: Scope) -> Result<HeaderValue, ProviderError> {
        let mut slot = self
            .token_slot(scope)
            .lock()
            .map_err(|_| ProviderError::Protocol("token cache poisoned".into()))?;
        let fresh = slot.as_ref().is_some_and(|t| Instant::now() < t.refresh_at);
        if !fresh {
            *slot = Some(self.fetch_token(scope)?);
        }
        let token = slot
            .as_ref()
            .ok_or_else(|| ProviderError::Protocol("no token".into()))?;
        let mut v = Vec::with_capacity(7 + token.value.expose().len());
        v.extend_from_slice(b"Bearer ");
        v.extend_from_slice(token.value.expose());
        let mut h = HeaderValue::from_bytes(&v).map_err(|_| {
            ProviderError::Protocol("the token endpoint gave a malformed token".into())
        })?;
        h.set_sensitive(true);
        Ok(h)
    }

    fn forget_token(&self, scope: Scope) {
        if let Ok(mut slot) = self.token_slot(scope).lock() {
            *slot = None;
        }
    }

    fn fetch_token(&self, scope: Scope) -> Result<Token, ProviderError> {
        let scope_url = match scope {
            Scope::Vault => self.vault_scope,
            Scope::Arm => ARM_SCOPE,
        };
        let url = format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant_id);
        let body = Bytes::from(form_encode(&[
            ("grant_type", "client_credentials"),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.as_str()?),
            ("scope", scope_url),
        ]));
        let resp = self.http.send(|| {
            Request::post(&url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .body(Full::new(body.clone()))
                .map_err(cfg_err)
        });
        let resp = resp.map_err(|e| match e {
            ProviderError::Unavailable(m) => {
                ProviderError::Unavailable(format!("the token endpoint: {}", self.redact(m)))
            }
            other => other,
        })?;
        let v = resp.json();
        match resp.status {
            200 => {
                let token = v["access_token"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        ProviderError::Protocol(
                            "the token endpoint's answer has no access_token".into(),
                        )
                    })?;
                // expires_in is a number (v2.0) or a string (v1.0).
                let secs = v["expires_in"]
                    .as_u64()
                    .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(300)
                    .min(86_400);
                let margin = (secs / 2).min(300);
                Ok(Token {
                    value: Secret::new(token.as_bytes().to_vec()),
                    refresh_at: Instant::now() + Duration::from_secs(secs - margin),
                })
            }
            400 | 401 | 403 => {
                let err = v["error"].as_str().unwrap_or("refused");
                let desc: String = v["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                Err(ProviderError::Refused(self.redact(format!(
                    "the token endpoint refused application {} in tenant {}: {err}: {desc}",
                    self.client_id, self.tenant_id
                ))))
            }
            s if resp.is_transient() => Err(ProviderError::Unavailable(format!(
                "the token endpoint answered HTTP {s} after retries"
            ))),
            s => Err(ProviderError::Protocol(format!(
                "the token endpoint answered HTTP {s}"
            ))),
        }
    }

    /// Sends a request with a bearer token for `scope`; a 401 fetches a
    /// fresh token and sends once more.
    fn call(
        &self,
        scope: Scope,
        method: &Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<HttpResponse, ProviderError> {
        let body = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
        let mut refreshed = false;
        loop {
            let auth = self.bearer(scope)?;
            let resp = self.http.send(|| {
                let mut b = Request::builder()
                    .method(method.clone())
                    .uri(url)
                    .header(AUTHORIZATION, auth.clone())
                    .header(ACCEPT, "application/json");
                if !body.is_empty() {
                    b = b.header(CONTENT_TYPE, "application/json");
                }
                b.body(Full::new(body.clone())).map_err(cfg_err)
            })?;
            if resp.status == 401 && !refreshed {
                self.forget_token(scope);
                refreshed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Checks the vault in Resource Manager (purge protection, region), at
    /// most every ten minutes.
    fn ensure_vault(&self) -> Result<VaultFacts, ProviderError> {
        if let Ok(g) = self.vault_checked.lock()
            && let Some((at, facts)) = g.as_ref()
            && at.elapsed() < VAULT_RECHECK
        {
            return Ok(facts.clone());
        }
        let url = format!(
            "{}{}?api-version={ARM_API_VERSION}",
            self.management, self.vault_resource_id
        );
        let resp = self.call(Scope::Arm, &Method::GET, &url, None)?;
        let name = self.vault_name();
        if resp.status != 200 {
            let (code, _, message) = azure_error(&resp);
            let msg = format!("reading vault {name} in Resource Manager: {code}: {message}");
            return Err(match resp.status {
                401 => ProviderError::Refused(msg),
                403 => ProviderError::Config(format!(
                    "{msg} (the application needs read access to the vault resource)"
                )),
                404 => ProviderError::Config(format!("{msg} (check vault_resource_id)")),
                _ if resp.is_transient() => ProviderError::Unavailable(msg),
                _ => ProviderError::Protocol(msg),
            });
        }
        let v = resp.json();
        if !v.is_object() {
            return Err(ProviderError::Protocol(format!(
                "Resource Manager's answer for vault {name} is not JSON"
            )));
        }
        if v["properties"]["enablePurgeProtection"].as_bool() != Some(true) {
            return Err(ProviderError::Config(format!(
                "vault {name} has no purge protection (enablePurgeProtection is not true): \
                 a key deleted there could be purged and the data under it lost; \
                 enable purge protection on the vault"
            )));
        }
        let location = v["location"].as_str().unwrap_or_default();
        if normalize_region(location) != normalize_region(&self.region) {
            return Err(ProviderError::Config(format!(
                "vault {name} is in {}, not {}",
                if location.is_empty() {
                    "no region"
                } else {
                    location
                },
                self.region
            )));
        }
        let facts = VaultFacts {
            location: location.to_owned(),
        };
        if let Ok(mut g) = self.vault_checked.lock() {
            *g = Some((Instant::now(), facts.clone()));
        }
        Ok(facts)
    }

    fn key_url(&self, key: &KeyRef<'_>, op: &str) -> String {
        format!(
            "{}{}{op}?api-version={API_VERSION}",
            self.vault_url,
            key.path()
        )
    }

    /// Maps a vault's error answer.
    fn vault_error(&self, resp: &HttpResponse, op: Op, what: &str) -> ProviderError {
        let (code, inner, message) = azure_error(resp);
        let codes = if inner.is_empty() {
            code.clone()
        } else {
            format!("{code}/{inner}")
        };
        let msg = self.redact(format!("{what}: {codes}: {message}"));
        let disabled = ["KeyDisabled", "Forbidden", "Unauthorized", "KeyExpired"]
            .iter()
            .any(|c| code == *c || inner == *c);
        match resp.status {
            401 => ProviderError::Refused(format!("{msg} (a fresh token was refused too)")),
            403 => ProviderError::Refused(msg),
            404 => ProviderError::NotFound(msg),
            409 if code.contains("Deleted") || inner.contains("Deleted") => {
                ProviderError::NotFound(msg)
            }
            400 if disabled => ProviderError::Refused(msg),
            400 if op == Op::Unwrap => ProviderError::InvalidCiphertext(msg),
            400 => ProviderError::Config(msg),
            _ if resp.is_transient() => ProviderError::Unavailable(msg),
            _ => ProviderError::Protocol(msg),
        }
    }

    fn describe_key(&self, key: &str) -> Result<RemoteKey, ProviderError> {
        let facts = self.ensure_vault()?;
        let k = parse_key(key)?;
        let resp = self.call(Scope::Vault, &Method::GET, &self.key_url(&k, ""), None)?;
        if resp.status != 200 {
            return Err(self.vault_error(&resp, Op::Describe, &format!("key {key}")));
        }
        let v = resp.json();
        let kid = v["key"]["kid"]
            .as_str()
            .ok_or_else(|| ProviderError::Protocol(format!("key {key}: the answer has no kid")))?;
        let version = version_of_kid(kid, k.name).map(str::to_owned);
        let kty = v["key"]["kty"].as_str().unwrap_or_default();
        let attrs = &v["attributes"];
        let recovery = attrs["recoveryLevel"].as_str().unwrap_or_default();
        if recovery.contains("Purgeable") {
            return Err(ProviderError::Config(format!(
                "key {key} can be purged (recoveryLevel {recovery}): the vault needs purge protection"
            )));
        }
        if self.alg.is_rsa() != kty.starts_with("RSA") {
            return Err(ProviderError::Config(format!(
                "key {key} is of type {kty}, which {} cannot use",
                self.alg.name()
            )));
        }
        let now = now_unix();
        let ops: Option<Vec<&str>> = v["key"]["key_ops"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect());
        let (enabled, state) = if attrs["enabled"].as_bool() != Some(true) {
            (false, "Disabled")
        } else if attrs["nbf"].as_i64().is_some_and(|nbf| nbf > now) {
            (false, "NotYetValid")
        } else if attrs["exp"].as_i64().is_some_and(|exp| exp <= now) {
            (false, "Expired")
        } else if ops
            .as_ref()
            .is_some_and(|o| !(o.contains(&"wrapKey") && o.contains(&"unwrapKey")))
        {
            (false, "WrapNotPermitted")
        } else {
            (true, "Enabled")
        };
        let mut details = BTreeMap::new();
        details.insert("kty".to_owned(), kty.to_owned());
        details.insert("algorithm".to_owned(), self.alg.name().to_owned());
        details.insert("recoveryLevel".to_owned(), recovery.to_owned());
        if let Some(d) = attrs["recoverableDays"].as_i64() {
            details.insert("recoverableDays".to_owned(), d.to_string());
        }
        for t in ["exp", "nbf", "created", "updated"] {
            if let Some(x) = attrs[t].as_i64() {
                details.insert(t.to_owned(), x.to_string());
            }
        }
        if let Some(o) = &ops {
            details.insert("key_ops".to_owned(), o.join(","));
        }
        details.insert("region".to_owned(), facts.location);
        details.insert("purge_protection".to_owned(), "true".to_owned());
        details.insert("vault".to_owned(), self.vault_name().to_owned());
        Ok(RemoteKey {
            id: format!("{}/keys/{}", self.vault_url, k.name),
            enabled,
            state: state.to_owned(),
            version,
            details,
        })
    }
}

impl KeyProvider for AzureKeyVault {
    fn kind(&self) -> &'static str {
        "azure-key-vault"
    }

    fn endpoint(&self) -> String {
        self.vault_url.clone()
    }

    fn wrap(&self, key: &str, data_key: &[u8]) -> Result<Vec<u8>, ProviderError> {
        crate::check_data_key(data_key)?;
        let k = parse_key(key)?;
        self.ensure_vault()?;
        let value = match self.alg {
            Alg::A256Kw => URL_SAFE_NO_PAD.encode(kw_frame(data_key).expose()),
            _ => URL_SAFE_NO_PAD.encode(data_key),
        };
        let body = json!({"alg": self.alg.name(), "value": value});
        let resp = self.call(
            Scope::Vault,
            &Method::POST,
            &self.key_url(&k, "/wrapkey"),
            Some(&body),
        )?;
        if resp.status != 200 {
            return Err(self.vault_error(&resp, Op::Wrap, &format!("wrapping under key {key}")));
        }
        let v = resp.json();
        let kid = v["kid"].as_str().unwrap_or_default();
        let version = version_of_kid(kid, k.name).ok_or_else(|| {
            ProviderError::Protocol(format!(
                "wrapping under key {key}: the answer's kid {kid:?} names no version of the key"
            ))
        })?;
        let wrapped = v["value"]
            .as_str()
            .and_then(b64url_decode)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| {
                ProviderError::Protocol(format!(
                    "wrapping under key {key}: the answer has no base64url value"
                ))
            })?;
        encode_wrapped(self.alg, version, &wrapped)
    }

    fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let k = parse_key(key)?;
        let w = decode_wrapped(wrapped)?;
        self.ensure_vault()?;
        let at = KeyRef {
            name: k.name,
            version: Some(w.version),
        };
        let body = json!({"alg": w.alg.name(), "value": URL_SAFE_NO_PAD.encode(w.value)});
        let resp = self.call(
            Scope::Vault,
            &Method::POST,
            &self.key_url(&at, "/unwrapkey"),
            Some(&body),
        )?;
        let what = format!("unwrapping under key {}/{}", k.name, w.version);
        match resp.status {
            200 => {}
            404 => {
                // No such version: is the key gone, or is the wrapped key's
                // version altered? Versions are never deleted one by one.
                let latest = KeyRef {
                    name: k.name,
                    version: None,
                };
                let r = self.call(Scope::Vault, &Method::GET, &self.key_url(&latest, ""), None)?;
                return Err(if r.status == 200 {
                    ProviderError::InvalidCiphertext(format!(
                        "{what}: key {} has no version {}",
                        k.name, w.version
                    ))
                } else {
                    self.vault_error(&r, Op::Describe, &format!("key {}", k.name))
                });
            }
            _ => return Err(self.vault_error(&resp, Op::Unwrap, &what)),
        }
        let v = resp.json();
        let plain = v["value"]
            .as_str()
            .and_then(b64url_decode)
            .map(SecretBytes::new)
            .ok_or_else(|| {
                ProviderError::Protocol(format!("{what}: the answer has no base64url value"))
            })?;
        match w.alg {
            Alg::A256Kw => kw_unframe(&plain),
            _ => Ok(plain),
        }
    }

    fn describe(&self, key: &str) -> Result<RemoteKey, ProviderError> {
        self.describe_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_and_versions() {
        assert_eq!(
            parse_key("k-1").expect("ok"),
            KeyRef {
                name: "k-1",
                version: None
            }
        );
        assert_eq!(
            parse_key("k/0123abc").expect("ok"),
            KeyRef {
                name: "k",
                version: Some("0123abc")
            }
        );
        for bad in ["", "a b", "a/", "a/b/c", "../x", "k?x=1", &"a".repeat(128)] {
            assert!(
                matches!(parse_key(bad), Err(ProviderError::Config(_))),
                "{bad}"
            );
        }
        assert_eq!(
            version_of_kid("https://v.vault.azure.net/keys/k/abc123", "k"),
            Some("abc123")
        );
        assert_eq!(
            version_of_kid("https://v.vault.azure.net/keys/k", "k"),
            None
        );
        assert_eq!(
            version_of_kid("https://v.vault.azure.net/keys/other/abc", "k"),
            None
        );
    }

    #[test]
    fn wrapped_layout_round_trips_and_rejects_garbage() {
        let w = encode_wrapped(Alg::RsaOaep256, "abc123", &[9u8; 256]).expect("encode");
        assert_eq!(&w[..3], &[1, 1, 6]);
        let d = decode_wrapped(&w).expect("decode");
        assert_eq!(
            d,
            Wrapped {
                alg: Alg::RsaOaep256,
                version: "abc123",
                value: &[9u8; 256]
            }
        );
        for bad in [
            &[][..],
            &[1, 1][..],
            &[2, 1, 1, b'a', 0][..],
            &[1, 9, 1, b'a', 0][..],
            &[1, 1, 3, b'a', b'b', b'c'][..],
            &[1, 1, 1, b'!', 0][..],
        ] {
            assert!(
                matches!(
                    decode_wrapped(bad),
                    Err(ProviderError::InvalidCiphertext(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_wrap_framing() {
        for n in [1usize, 7, 15, 16, 32, 64] {
            let dk: Vec<u8> = (0..n)
                .map(|i| u8::try_from(i % 251 + 1).unwrap_or(1))
                .collect();
            let f = kw_frame(&dk);
            assert_eq!(f.len() % 8, 0);
            assert!(f.len() >= 16);
            assert_eq!(kw_unframe(&f).expect("unframe").expose(), &dk[..]);
        }
        for bad in [vec![], vec![0u8; 16], vec![20u8; 16], {
            let mut v = vec![1u8; 16];
            v[15] = 1;
            v
        }] {
            assert!(kw_unframe(&SecretBytes::new(bad)).is_err());
        }
    }

    #[test]
    fn regions_compare_like_azure() {
        assert_eq!(
            normalize_region("West Europe"),
            normalize_region("westeurope")
        );
        assert_ne!(normalize_region("eastus"), normalize_region("westeurope"));
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[("a", "x y&z=~"), ("scope", "https://v/.default")]),
            b"a=x%20y%26z%3D~&scope=https%3A%2F%2Fv%2F.default".to_vec()
        );
    }

    fn config(json: &str) -> Result<AzureKeyVault, ProviderError> {
        let f = crate::ProvidersFile::parse(json.as_bytes())?;
        match f.providers.get("z") {
            Some(crate::ProviderConfig::AzureKeyVault(c)) => AzureKeyVault::new(c),
            _ => Err(ProviderError::Config("no z".into())),
        }
    }

    #[test]
    fn configuration_is_checked_and_never_printed() {
        let ok = r#"{"z": {"type": "azure-key-vault", "vault_url": "https://v.vault.azure.net/",
            "region": "westeurope", "tenant_id": "t", "client_id": "c",
            "client_secret": "sup3r-s3cret", "vault_resource_id":
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v"}}"#;
        let p = config(ok).expect("valid");
        assert_eq!(p.endpoint(), "https://v.vault.azure.net");
        assert_eq!(p.kind(), "azure-key-vault");
        assert!(!format!("{p:?}").contains("sup3r"));
        assert_eq!(p.redact("x sup3r-s3cret y".into()), "x <redacted> y");
        assert_eq!(p.vault_scope, VAULT_SCOPE);
        for (from, to) in [
            ("\"https://v.vault.azure.net/\"", "\"ftp://v\""),
            ("\"tenant_id\": \"t\"", "\"tenant_id\": \"t/../x\""),
            ("/subscriptions/s/", "/x/s/"),
            ("\"region\": \"westeurope\"", "\"region\": \" \""),
            (
                "\"region\": \"westeurope\"",
                "\"region\": \"westeurope\", \"algorithm\": \"RSA1_5\"",
            ),
        ] {
            let r = config(&ok.replace(from, to));
            assert!(matches!(r, Err(ProviderError::Config(_))), "{to}: {r:?}");
        }
        let hsm = config(&ok.replace("v.vault.azure.net", "h.managedhsm.azure.net")).expect("hsm");
        assert_eq!(hsm.vault_scope, HSM_SCOPE);
    }

    #[test]
    fn errors_map_to_their_meaning() {
        let p = config(
            r#"{"z": {"type": "azure-key-vault", "vault_url": "https://v.vault.azure.net",
            "region": "westeurope", "tenant_id": "t", "client_id": "c",
            "client_secret": "sup3r-s3cret", "vault_resource_id":
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v"}}"#,
        )
        .expect("valid");
        let r = |status: u16, body: &str| HttpResponse {
            status,
            body: Bytes::from(body.to_owned()),
        };
        let e = |code: &str, inner: &str| {
            format!(
                r#"{{"error":{{"code":"{code}","message":"m sup3r-s3cret","innererror":{{"code":"{inner}"}}}}}}"#
            )
        };
        let cases = [
            (404, e("KeyNotFound", ""), Op::Describe, "NotFound"),
            (403, e("Forbidden", "AccessDenied"), Op::Wrap, "Refused"),
            (403, e("Forbidden", "KeyDisabled"), Op::Unwrap, "Refused"),
            (400, e("BadParameter", "KeyDisabled"), Op::Unwrap, "Refused"),
            (401, e("Unauthorized", ""), Op::Wrap, "Refused"),
            (400, e("BadParameter", ""), Op::Unwrap, "InvalidCiphertext"),
            (400, e("BadParameter", ""), Op::Wrap, "Config"),
            (
                409,
                e("Conflict", "ObjectIsDeletedButRecoverable"),
                Op::Describe,
                "NotFound",
            ),
            (
                503,
                "<html>busy</html>".to_owned(),
                Op::Describe,
                "Unavailable",
            ),
            (429, e("Throttled", ""), Op::Describe, "Unavailable"),
            (418, "teapot".to_owned(), Op::Describe, "Protocol"),
        ];
        for (status, body, op, want) in cases {
            let err = p.vault_error(&r(status, &body), op, "x");
            let dbg = format!("{err:?}");
            assert!(dbg.starts_with(want), "{status} {body}: {dbg}");
            assert!(!dbg.contains("sup3r"), "{dbg}");
        }
    }

    #[test]
    fn a_bad_data_key_or_wrapped_key_is_refused_before_any_call() {
        // Nothing listens on port 9: a call would be Unavailable.
        let p = config(
            r#"{"z": {"type": "azure-key-vault", "vault_url": "http://127.0.0.1:9",
            "region": "westeurope", "tenant_id": "t", "client_id": "c",
            "client_secret": "s", "vault_resource_id":
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v",
            "authority_url": "http://127.0.0.1:9", "management_url": "http://127.0.0.1:9",
            "timeout_ms": 200, "retries": 0}}"#,
        )
        .expect("valid");
        assert!(matches!(p.wrap("k", &[]), Err(ProviderError::Config(_))));
        assert!(matches!(
            p.wrap("k", &[0u8; 65]),
            Err(ProviderError::Config(_))
        ));
        assert!(matches!(
            p.unwrap("k", &[]),
            Err(ProviderError::InvalidCiphertext(_))
        ));
        assert!(matches!(
            p.describe("k"),
            Err(ProviderError::Unavailable(_))
        ));
    }
}
