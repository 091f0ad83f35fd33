//! Board sign-in sessions and their CSRF defence (B-3, ADR 0014).
//!
//! A person signs in on the board by posting the admin token once; the
//! daemon answers with a cookie holding a random session id, never the token
//! itself. Sessions live in this process's memory only: a restart signs
//! everybody out, and sign-out really ends a session (a stateless signed
//! cookie could not be revoked). The map is keyed by the SHA-256 of the id,
//! so a lookup's timing says nothing about the ids held.
//!
//! A cookie is ambient: the browser sends it with any request to us, also
//! one a hostile page made it send. So a request authenticated by the cookie
//! must also carry the session's CSRF token in [`CSRF_HEADER`] (a page on
//! another origin cannot read it, nor set a custom header without a CORS
//! preflight we never grant) and come from our own origin (`Origin`, or
//! `Referer` when a browser sends no `Origin`). `SameSite=Strict` is a third
//! layer, not the defence: pages on another port of the same host are the
//! same site.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HOST, ORIGIN, REFERER};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "orch_session";
/// The header a cookie-authenticated request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after sign-in.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions at once; a new one evicts the oldest, so a
/// flood of sign-ins cannot grow the map.
pub const MAX_SESSIONS: usize = 64;

/// Why a cookie-authenticated request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not signed in")]
    NoSession,
    #[error("the CSRF token is missing or wrong")]
    BadCsrf,
    #[error("the request does not come from the board's own origin")]
    CrossOrigin,
}

/// A session just created: the id goes into the cookie, the CSRF token to
/// the page.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub csrf: String,
}

struct Entry {
    csrf: String,
    created: Instant,
}

/// The signed-in sessions of this process.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// 32 bytes from the OS, hex. Without an OS source of randomness no session
/// can be made safely; that is a broken host, so it is a panic at sign-in,
/// never a weak id.
fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).expect("the OS random source is unavailable");
    hex::encode(b)
}

impl Sessions {
    pub fn create(&self) -> NewSession {
        let s = NewSession {
            id: random_hex(),
            csrf: random_hex(),
        };
        let mut map = self.lock();
        map.retain(|_, e| e.created.elapsed() < TTL);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| e.created).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            key(&s.id),
            Entry {
                csrf: s.csrf.clone(),
                created: Instant::now(),
            },
        );
        s
    }

    /// The CSRF token of a live session.
    pub fn csrf_of(&self, id: &str) -> Option<String> {
        let map = self.lock();
        map.get(&key(id))
            .filter(|e| e.created.elapsed() < TTL)
            .map(|e| e.csrf.clone())
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(&key(id));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // A panic while holding this lock leaves the map consistent (every
        // change is one call), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session a request's cookie names, if live.
    pub fn of_request(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let id = cookie(headers)?;
        let csrf = self.csrf_of(id)?;
        Some((id.to_string(), csrf))
    }

    /// Whether a request may act as the signed-in operator: a live session
    /// cookie, its CSRF token in [`CSRF_HEADER`], and our own origin.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let (_, csrf) = self.of_request(headers).ok_or(Refusal::NoSession)?;
        let given = headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !bool::from(given.ct_eq(csrf.as_bytes())) {
            return Err(Refusal::BadCsrf);
        }
        if !same_origin(headers) {
            return Err(Refusal::CrossOrigin);
        }
        Ok(())
    }
}

/// The process's sessions. One per process on purpose: the admin check
/// (`admin::authorized`) is a plain function of the request's headers and
/// the token, called by every admin route.
pub fn global() -> &'static Sessions {
    static SESSIONS: OnceLock<Sessions> = OnceLock::new();
    SESSIONS.get_or_init(Sessions::default)
}

/// The value of our cookie in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a new session. No `Secure`: the daemon serves plain
/// HTTP on loopback by default, where a `Secure` cookie would not be kept
/// by every browser; behind TLS the proxy may add it (ADR 0014).
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        TTL.as_secs()
    )
}

/// `Set-Cookie` that drops the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// The request comes from a page of our own origin: its `Origin` (or, when
/// a browser sends none, its `Referer`'s origin) is `http(s)://<Host>`.
/// Neither header: refused, since a browser always sends one of them on a
/// POST from our page (the board sets `Referrer-Policy: same-origin`).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = host.trim();
    if host.is_empty() {
        return false;
    }
    let origin_ok = |origin: &str| {
        ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host))
    };
    if let Some(origin) = headers.get(ORIGIN) {
        return origin.to_str().is_ok_and(|o| origin_ok(o.trim()));
    }
    let Some(referer) = headers.get(REFERER).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // The origin of a URL: scheme://authority, up to the first `/`, `?` or
    // `#` after the scheme.
    let Some((scheme, rest)) = referer.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    origin_ok(&format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn signed_in(s: &Sessions) -> (NewSession, String) {
        let n = s.create();
        let cookie = format!("other=1; {COOKIE_NAME}={}", n.id);
        (n, cookie)
    }

    #[test]
    fn a_session_with_its_token_from_our_origin_is_accepted() {
        let s = Sessions::default();
        let (n, cookie) = signed_in(&s);
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("cookie", &cookie),
            (CSRF_HEADER, &n.csrf),
        ]);
        assert_eq!(s.check(&h), Ok(()));
    }

    #[test]
    fn the_cookie_is_random_and_is_not_the_csrf_token() {
        let s = Sessions::default();
        let (a, b) = (s.create(), s.create());
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, a.csrf);
        assert_eq!(a.id.len(), 64);
        let c = set_cookie(&a.id);
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
    }

    #[test]
    fn without_a_live_session_nothing_is_accepted() {
        let s = Sessions::default();
        let base = [
            ("host", "h:1"),
            ("origin", "http://h:1"),
            (CSRF_HEADER, "x"),
        ];
        assert_eq!(s.check(&headers(&base)), Err(Refusal::NoSession));
        let mut forged = base.to_vec();
        forged.push(("cookie", "orch_session=deadbeef"));
        assert_eq!(s.check(&headers(&forged)), Err(Refusal::NoSession));
        // Signed out: the old cookie is dead.
        let (n, cookie) = signed_in(&s);
        s.remove(&n.id);
        let h = headers(&[
            ("host", "h:1"),
            ("origin", "http://h:1"),
            ("cookie", &cookie),
            (CSRF_HEADER, &n.csrf),
        ]);
        assert_eq!(s.check(&h), Err(Refusal::NoSession));
    }

    #[test]
    fn a_missing_or_wrong_csrf_token_is_refused() {
        let s = Sessions::default();
        let (n, cookie) = signed_in(&s);
        let other = s.create();
        for token in [None, Some(""), Some("nope"), Some(other.csrf.as_str())] {
            let mut pairs = vec![
                ("host", "h:1"),
                ("origin", "http://h:1"),
                ("cookie", cookie.as_str()),
            ];
            if let Some(t) = token {
                pairs.push((CSRF_HEADER, t));
            }
            assert_eq!(
                s.check(&headers(&pairs)),
                Err(Refusal::BadCsrf),
                "{token:?}"
            );
        }
        // The session's own token with a prefix is still wrong.
        let long = format!("{}0", n.csrf);
        let h = headers(&[
            ("host", "h:1"),
            ("origin", "http://h:1"),
            ("cookie", &cookie),
            (CSRF_HEADER, &long),
        ]);
        assert_eq!(s.check(&h), Err(Refusal::BadCsrf));
    }

    #[test]
    fn another_origin_is_refused_even_with_the_right_token() {
        let s = Sessions::default();
        let (n, cookie) = signed_in(&s);
        for (origin, referer) in [
            (Some("http://127.0.0.1:9999"), None),
            (Some("http://evil.example"), None),
            (Some("null"), None),
            (Some("http://127.0.0.1:8080.evil.example"), None),
            (None, Some("http://evil.example/page")),
            (None, Some("http://127.0.0.1:8080.evil.example/")),
            (None, None),
        ] {
            let mut pairs = vec![
                ("host", "127.0.0.1:8080"),
                ("cookie", cookie.as_str()),
                (CSRF_HEADER, n.csrf.as_str()),
            ];
            if let Some(o) = origin {
                pairs.push(("origin", o));
            }
            if let Some(r) = referer {
                pairs.push(("referer", r));
            }
            assert_eq!(
                s.check(&headers(&pairs)),
                Err(Refusal::CrossOrigin),
                "{origin:?} {referer:?}"
            );
        }
    }

    #[test]
    fn our_referer_stands_in_for_a_missing_origin() {
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("referer", "http://127.0.0.1:8080/?x=1"),
        ]);
        assert!(same_origin(&h));
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("referer", "http://127.0.0.1:8080"),
        ]);
        assert!(same_origin(&h));
        // Origin wins over Referer.
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
            ("referer", "http://127.0.0.1:8080/"),
        ]);
        assert!(!same_origin(&h));
    }

    #[test]
    fn the_map_is_bounded_and_evicts_the_oldest() {
        let s = Sessions::default();
        let first = s.create();
        for _ in 0..MAX_SESSIONS {
            s.create();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.csrf_of(&first.id).is_none(), "the oldest was evicted");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[
            ("cookie", "a=b"),
            ("cookie", "x=1;  orch_session=abc ; y=2"),
        ]);
        assert_eq!(cookie(&h), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "orch_session=")])), None);
        assert_eq!(cookie(&headers(&[("cookie", "xorch_session=abc")])), None);
    }
}
