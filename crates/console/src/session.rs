//! Sessions, their cookie, CSRF tokens and the limit on failed sign-ins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq as _;

use crate::Options;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "atrest-console";
/// The sign-in form's CSRF cookie (before there is a session).
pub(crate) const SIGN_IN_COOKIE: &str = "atrest-console-sign-in";
/// At most this many sessions are held; past it the least recently used
/// goes (a flood of sign-ins costs memory bounded by this).
const MAX_SESSIONS: usize = 10_000;
/// At most this many client addresses are tracked for failed sign-ins.
const MAX_TRACKED: usize = 100_000;
/// The window of the failed sign-in limit.
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// A random 256-bit token, URL-safe base64.
pub(crate) fn token() -> String {
    let mut b = [0u8; 32];
    // AWS-LC's generator fails only when the OS gives it no entropy; the
    // process cannot serve safely then.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        tracing::error!("no randomness for a console token");
        std::process::abort();
    }
    URL_SAFE_NO_PAD.encode(b)
}

fn digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether two tokens are equal, in constant time.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

struct Entry {
    access_key_id: String,
    csrf: String,
    created: Instant,
    used: Instant,
    flash: Option<String>,
}

/// A live session, as a request sees it.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub access_key_id: String,
    pub csrf: String,
    pub flash: Option<String>,
}

/// Why there is no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// No cookie, or one no session has.
    None,
    /// Idle too long or past its lifetime.
    Expired,
}

/// The sessions of this node (kept in memory: a restart signs everyone
/// out; behind a load balancer a session needs the same node, design 5C).
pub struct Sessions {
    options: Options,
    live: Mutex<HashMap<[u8; 32], Entry>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Sessions {
    pub(crate) fn new(options: Options) -> Self {
        Self {
            options,
            live: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expired(&self, e: &Entry, now: Instant) -> bool {
        now.duration_since(e.used) > self.options.idle_timeout
            || now.duration_since(e.created) > self.options.lifetime
    }

    /// Starts a session for `access_key_id`; returns its cookie token.
    pub(crate) fn start(&self, access_key_id: &str) -> String {
        let t = token();
        let now = Instant::now();
        let mut live = self.live();
        live.retain(|_, e| !self.expired(e, now));
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(
            digest(&t),
            Entry {
                access_key_id: access_key_id.to_owned(),
                csrf: token(),
                created: now,
                used: now,
                flash: None,
            },
        );
        t
    }

    /// The session of `cookie`, marked used now.
    pub(crate) fn get(&self, cookie: Option<&str>) -> Result<Live, Ended> {
        let Some(cookie) = cookie else {
            return Err(Ended::None);
        };
        let key = digest(cookie);
        let now = Instant::now();
        let mut live = self.live();
        let Some(e) = live.get_mut(&key) else {
            return Err(Ended::None);
        };
        if self.expired(e, now) {
            live.remove(&key);
            return Err(Ended::Expired);
        }
        e.used = now;
        Ok(Live {
            access_key_id: e.access_key_id.clone(),
            csrf: e.csrf.clone(),
            flash: e.flash.take(),
        })
    }

    /// Leaves a message for the session's next page.
    pub(crate) fn flash(&self, cookie: Option<&str>, message: String) {
        if let Some(cookie) = cookie
            && let Some(e) = self.live().get_mut(&digest(cookie))
        {
            e.flash = Some(message);
        }
    }

    /// Ends the session of `cookie`.
    pub(crate) fn end(&self, cookie: Option<&str>) {
        if let Some(cookie) = cookie {
            self.live().remove(&digest(cookie));
        }
    }

    /// Whether `ip` may try to sign in now.
    pub(crate) fn may_try(&self, ip: IpAddr) -> Result<(), Duration> {
        let f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match f.get(&ip) {
            Some((n, since))
                if *n >= self.options.sign_in_failures && since.elapsed() < FAILURE_WINDOW =>
            {
                Err(FAILURE_WINDOW.saturating_sub(since.elapsed()))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed sign-in from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.len() >= MAX_TRACKED {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if f.len() >= MAX_TRACKED {
                f.clear();
            }
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 = e.0.saturating_add(1);
    }

    /// The session cookie's `Set-Cookie` value.
    pub(crate) fn cookie(&self, token: &str) -> String {
        let secure = if self.options.secure { "; Secure" } else { "" };
        format!("{COOKIE}={token}; Path=/console/; HttpOnly; SameSite=Strict{secure}")
    }

    /// The `Set-Cookie` value that removes cookie `name` at `path`.
    pub(crate) fn removal(&self, name: &str, path: &str) -> String {
        let secure = if self.options.secure { "; Secure" } else { "" };
        format!("{name}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
    }

    /// The sign-in form's CSRF cookie.
    pub(crate) fn sign_in_cookie(&self, token: &str) -> String {
        let secure = if self.options.secure { "; Secure" } else { "" };
        format!(
            "{SIGN_IN_COOKIE}={token}; Path=/console/sign-in; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
        )
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
