//! Who is calling: the client whose API key the `Authorization: Bearer`
//! header carries (found by the key's SHA-256, compared in constant time
//! against every client), and a Standard Webhooks signature of the request
//! under that client's secret ([`reelfleet_core::webhooks::verify`]). The
//! replay check (each `webhook-id` once per tolerance window) is the
//! caller's, in the work bucket ([`crate::records`]).

use crate::error::ApiError;
use axum::http::{header::AUTHORIZATION, HeaderMap};
use reelfleet_core::{
    settings::IntakeSettings,
    webhooks::{self, SignedHeaders, WebhookError, WebhookSecret},
};
use sha2::{Digest, Sha256};

/// One client the intake answers.
#[derive(Clone)]
pub struct Client {
    /// Its id (`[[intake.clients]] id`).
    pub id: String,
    key_sha256: [u8; 32],
    secret: WebhookSecret,
    /// Most requests in any 60 s (0: no limit).
    pub requests_per_minute: u32,
    /// Most jobs in any 60 s (0: no limit).
    pub jobs_per_minute: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Every client of the settings.
#[derive(Clone, Debug)]
pub struct Clients(Vec<Client>);

impl Clients {
    /// Whether any client has a rate limit.
    pub fn limited(&self) -> bool {
        self.0.iter().any(|c| c.requests_per_minute > 0 || c.jobs_per_minute > 0)
    }
}

/// Hex SHA-256 of an API key, as `api_key_sha256` holds it.
pub fn key_sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `given` is `expected`, in time independent of both (each is
/// hashed first, so not even their lengths leak).
pub fn token_matches(given: &str, expected: &str) -> bool {
    constant_time_eq(&Sha256::digest(given.as_bytes()), &Sha256::digest(expected.as_bytes()))
}

impl Clients {
    /// The clients of `settings` (refused as `check_clients` refuses them).
    pub fn from_settings(settings: &IntakeSettings) -> Result<Self, String> {
        settings.check_clients()?;
        let mut out = Vec::new();
        for c in &settings.all_clients()? {
            let mut key_sha256 = [0u8; 32];
            hex::decode_to_slice(c.api_key_sha256.trim(), &mut key_sha256)
                .map_err(|e| format!("intake client {:?}: api_key_sha256: {e}", c.id))?;
            let secret =
                WebhookSecret::parse(c.secret.expose()).map_err(|e| format!("intake client {:?}: {e}", c.id))?;
            out.push(Client {
                id: c.id.clone(),
                key_sha256,
                secret,
                requests_per_minute: c.requests_per_minute,
                jobs_per_minute: c.jobs_per_minute,
            });
        }
        Ok(Self(out))
    }

    /// The client holding `api_key`: every client is compared, whatever matches.
    pub fn by_api_key(&self, api_key: &str) -> Option<&Client> {
        let given: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        let mut found = None;
        for c in &self.0 {
            if constant_time_eq(&given, &c.key_sha256) && found.is_none() {
                found = Some(c);
            }
        }
        found
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the API key and the signature of a request; returns the client
/// and the request's `webhook-id`.
pub fn authenticate<'a>(
    clients: &'a Clients,
    headers: &'a HeaderMap,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(&'a Client, &'a str), ApiError> {
    let key = header(headers, AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("unauthorized", "Authorization: Bearer <api key> is required"))?;
    let client = clients.by_api_key(key).ok_or_else(|| ApiError::unauthorized("unauthorized", "unknown API key"))?;
    let signed = SignedHeaders {
        id: header(headers, webhooks::ID_HEADER),
        timestamp: header(headers, webhooks::TIMESTAMP_HEADER),
        signature: header(headers, webhooks::SIGNATURE_HEADER),
    };
    let id =
        webhooks::verify(std::slice::from_ref(&client.secret), signed, body, now, tolerance_secs).map_err(|e| {
            let code = match e {
                WebhookError::OutsideWindow { .. } | WebhookError::BadTimestamp => "timestamp_outside_tolerance",
                WebhookError::MissingHeader(_) => "signature_missing",
                _ => "bad_signature",
            };
            ApiError::unauthorized(code, e.to_string())
        })?;
    Ok((client, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reelfleet_core::settings::{IntakeClient, Secret};

    fn clients(secret: &WebhookSecret) -> Clients {
        let settings = IntakeSettings {
            clients: vec![
                IntakeClient {
                    id: "acme".into(),
                    api_key_sha256: key_sha256("rf_acme"),
                    secret: Secret::new(secret.encode()),
                    ..Default::default()
                },
                IntakeClient {
                    id: "beta".into(),
                    api_key_sha256: key_sha256("rf_beta"),
                    secret: Secret::new(WebhookSecret::generate().encode()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        Clients::from_settings(&settings).unwrap()
    }

    fn headers(key: &str, id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    #[test]
    fn key_and_signature_both_count() {
        let secret = WebhookSecret::generate();
        let cs = clients(&secret);
        let sig = secret.sign("m1", 1000, b"{}");
        let h = headers("rf_acme", "m1", 1000, &sig);
        let (c, id) = authenticate(&cs, &h, b"{}", 1000, 300).unwrap();
        assert_eq!((c.id.as_str(), id), ("acme", "m1"));
        let code = |h: &HeaderMap, body: &[u8], now: i64| authenticate(&cs, h, body, now, 300).unwrap_err().code;
        assert_eq!(code(&headers("rf_nope", "m1", 1000, &sig), b"{}", 1000), "unauthorized");
        // The other client's key with this client's signature.
        assert_eq!(code(&headers("rf_beta", "m1", 1000, &sig), b"{}", 1000), "bad_signature");
        assert_eq!(code(&h, b"{ }", 1000), "bad_signature");
        assert_eq!(code(&h, b"{}", 1400), "timestamp_outside_tolerance");
        let mut no_sig = h.clone();
        no_sig.remove("webhook-signature");
        assert_eq!(code(&no_sig, b"{}", 1000), "signature_missing");
        let mut no_key = h;
        no_key.remove(AUTHORIZATION);
        assert_eq!(code(&no_key, b"{}", 1000), "unauthorized");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("ab", "abc"));
        assert!(constant_time_eq(b"", b""));
    }
}
