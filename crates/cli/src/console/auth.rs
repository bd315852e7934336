//! Who is asking, and may they: passwords (argon2 PHC strings), the signed
//! session cookie (user, role, expiry), the per-session CSRF token, the
//! cross-site check on every POST, and the login rate limit shared by every
//! console replica.

use anyhow::anyhow;
use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use axum::http::{header, HeaderMap};
use base64::Engine;
use hmac::{Hmac, Mac};
use reelfleet_core::settings::{ConsoleAccount, ConsoleRole};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The session cookie's name.
pub const COOKIE: &str = "rf_console";

/// Hashes `password` as an argon2id PHC string (argon2's default cost, a random salt).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let random = hex::decode(reelfleet_core::signing::generate_key())?;
    let salt = SaltString::encode_b64(&random[..16]).map_err(|e| anyhow!("salt: {e}"))?;
    let hash = Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| anyhow!("argon2: {e}"))?;
    Ok(hash.to_string())
}

/// Whether `password` is the one `hash` (a PHC string) was made from; a
/// malformed hash matches nothing.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A random password for a new account (96 bits, as hex).
pub fn generate_password() -> String {
    reelfleet_core::signing::generate_key()[..24].to_string()
}

/// What the session cookie carries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Account name.
    pub user: String,
    /// Its role at login.
    pub role: ConsoleRole,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Random per login: the CSRF token is derived from it.
    pub nonce: String,
}

/// The logged-in account of a request.
#[derive(Clone, Debug)]
pub struct User {
    /// Account name.
    pub name: String,
    /// Its role (as the settings say now, not as they said at login).
    pub role: ConsoleRole,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl User {
    /// Whether the account may replay and purge.
    pub fn operator(&self) -> bool {
        self.role == ConsoleRole::Operator
    }

    /// How events and audit lines name this account.
    pub fn by(&self) -> String {
        format!("{} ({})", self.name, self.role.as_str())
    }
}

/// The session signing key.
#[derive(Clone)]
pub struct Keys {
    key: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

impl Keys {
    /// The key given as hex (`console.session_key`, checked beforehand).
    pub fn from_hex(hex_key: &str) -> anyhow::Result<Self> {
        Ok(Self { key: hex::decode(hex_key.trim())? })
    }

    fn mac(&self, purpose: &str, data: &[u8]) -> Hmac<Sha256> {
        // Any key length is accepted by HMAC.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(data);
        mac
    }

    /// The cookie value of `session`: its JSON (base64url), a dot, its HMAC.
    pub fn seal(&self, session: &Session) -> String {
        let json = serde_json::to_vec(session).unwrap_or_default();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let tag = hex::encode(self.mac("session", payload.as_bytes()).finalize().into_bytes());
        format!("{payload}.{tag}")
    }

    /// The session of a cookie value, if this key signed it and it has not expired at `now`.
    pub fn open(&self, value: &str, now: i64) -> Option<Session> {
        let (payload, tag) = value.split_once('.')?;
        let tag = hex::decode(tag).ok()?;
        self.mac("session", payload.as_bytes()).verify_slice(&tag).ok()?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
        let session: Session = serde_json::from_slice(&json).ok()?;
        (session.exp > now).then_some(session)
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, session: &Session) -> String {
        hex::encode(self.mac("csrf", session.nonce.as_bytes()).finalize().into_bytes())
    }

    /// Whether `token` is the CSRF token of `session` (compared in constant time).
    pub fn csrf_matches(&self, session: &Session, token: &str) -> bool {
        hex::decode(token).is_ok_and(|t| self.mac("csrf", session.nonce.as_bytes()).verify_slice(&t).is_ok())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value for the session cookie; `None` clears it.
pub fn set_cookie(value: Option<&str>, ttl_secs: u64, secure: bool) -> String {
    let (value, age) = match value {
        Some(v) => (v, ttl_secs),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{secure}")
}

/// Whether a state-changing request comes from the console's own pages.
/// A browser that sends `Sec-Fetch-Site` (a header no page can set) is
/// believed: it must say `same-origin`. Without it, `Origin`, when sent,
/// must name the host the request was sent to (`null`, what a browser sends
/// for a form posted under `Referrer-Policy: no-referrer` or from a
/// sandboxed frame, does not). Clients that send neither (not browsers)
/// still need the CSRF token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .map(|u| match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        })
        .unwrap_or_default();
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// Finds `name` among `accounts`, checking `password` against its hash; an
/// unknown name is checked against `decoy` so both failures take as long.
pub fn authenticate<'a>(
    accounts: &'a [ConsoleAccount],
    decoy: &str,
    name: &str,
    password: &str,
) -> Option<&'a ConsoleAccount> {
    match accounts.iter().find(|a| a.name == name) {
        Some(a) => verify_password(&a.password_hash, password).then_some(a),
        None => {
            let _ = verify_password(decoy, password);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_hash_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horsE"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn a_session_opens_only_unaltered_unexpired_and_with_its_key() {
        let keys = Keys::from_hex(&reelfleet_core::signing::generate_key()).unwrap();
        let s = Session { user: "olga".into(), role: ConsoleRole::Viewer, exp: 2_000, nonce: "n1".into() };
        let sealed = keys.seal(&s);
        assert_eq!(keys.open(&sealed, 1_000), Some(s.clone()));
        assert_eq!(keys.open(&sealed, 2_000), None, "expired");
        let forged = Session { role: ConsoleRole::Operator, ..s.clone() };
        let (_, tag) = sealed.split_once('.').unwrap();
        let (payload, _) = keys.seal(&forged).split_once('.').map(|(p, t)| (p.to_string(), t.to_string())).unwrap();
        assert_eq!(keys.open(&format!("{payload}.{tag}"), 1_000), None, "a payload with another's tag");
        let other = Keys::from_hex(&reelfleet_core::signing::generate_key()).unwrap();
        assert_eq!(other.open(&sealed, 1_000), None);
        let token = keys.csrf(&s);
        assert!(keys.csrf_matches(&s, &token));
        assert!(!keys.csrf_matches(&Session { nonce: "n2".into(), ..s.clone() }, &token));
        assert!(!keys.csrf_matches(&s, "00"));
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9200".parse().unwrap());
        assert!(same_origin(&h), "no browser headers: the CSRF token decides");
        h.insert(header::ORIGIN, "http://127.0.0.1:9200".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h));
        // Chromium posting the login form of a page served with
        // `Referrer-Policy: no-referrer`: `Origin: null`, and it says same-origin.
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(same_origin(&h), "the console's own form, as Chromium posts it");
        h.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(!same_origin(&h), "another port or subdomain of the same site");
    }
}
