//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>), both
//! ways: the intake API verifies what callers send, and the webhook sender
//! signs what the fleet sends out.
//!
//! The signed content is `<webhook-id>.<webhook-timestamp>.<body>`; the MAC is
//! HMAC-SHA256 under the secret's bytes, sent base64-encoded as `v1,<mac>` in
//! `webhook-signature` (several space-separated signatures are allowed, so a
//! key can be rotated). A secret is written `whsec_<base64 of its bytes>`.
//! The timestamp is Unix seconds and must lie within the tolerance of now
//! either way; a receiver keeps the ids it has seen for that long to refuse
//! replays.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The message id header.
pub const ID_HEADER: &str = "webhook-id";
/// The Unix-seconds timestamp header.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The signature header (`v1,<base64>`, space-separated when several).
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// How far a timestamp may be from now, either way, by default.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 24;

const PREFIX: &str = "whsec_";

/// A Standard Webhooks secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Why a secret or a signed request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// The secret is not `whsec_<base64>` of at least [`MIN_SECRET_BYTES`] bytes.
    #[error("webhook secret must be whsec_ followed by the base64 of at least {MIN_SECRET_BYTES} bytes")]
    BadSecret,
    /// A required header is absent or not text.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// The timestamp header is not Unix seconds.
    #[error("webhook-timestamp is not Unix seconds")]
    BadTimestamp,
    /// The timestamp lies outside the tolerance.
    #[error("webhook-timestamp is {skew_secs} s from now, beyond the {tolerance_secs} s allowed")]
    OutsideWindow {
        /// Timestamp minus now, in seconds.
        skew_secs: i64,
        /// The tolerance applied.
        tolerance_secs: i64,
    },
    /// No `v1` signature matches.
    #[error("no webhook-signature matches the body")]
    BadSignature,
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let b64 = text.trim().strip_prefix(PREFIX).ok_or(WebhookError::BadSecret)?;
        let bytes = STANDARD.decode(b64).map_err(|_| WebhookError::BadSecret)?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(WebhookError::BadSecret);
        }
        Ok(Self(bytes))
    }

    /// A new random secret of 32 bytes.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::Rng::fill(&mut rand::rng(), bytes.as_mut_slice());
        Self(bytes)
    }

    /// `whsec_<base64>`, as [`WebhookSecret::parse`] reads it.
    pub fn encode(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// The `webhook-signature` value (`v1,<base64>`) of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes()))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Whether one of the space-separated `v1,` signatures in `signatures`
    /// is this secret's MAC of the message (compared in constant time).
    fn matches(&self, id: &str, timestamp: i64, body: &[u8], signatures: &str) -> bool {
        let mac = self.mac(id, timestamp, body);
        signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .any(|given| mac.clone().verify_slice(&given).is_ok())
    }
}

/// The three headers of a signed message, as received.
#[derive(Clone, Copy, Debug)]
pub struct SignedHeaders<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
}

/// Checks a received message against any of `secrets` (the current one and
/// those being rotated out): the timestamp within `tolerance_secs` of `now`
/// (Unix seconds), then a matching signature. Returns the message id, which
/// the caller remembers for the tolerance to refuse a replay.
pub fn verify<'a>(
    secrets: &[WebhookSecret],
    headers: SignedHeaders<'a>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<&'a str, WebhookError> {
    let id = headers.id.filter(|s| !s.is_empty()).ok_or(WebhookError::MissingHeader(ID_HEADER))?;
    let ts = headers.timestamp.ok_or(WebhookError::MissingHeader(TIMESTAMP_HEADER))?;
    let signature = headers.signature.ok_or(WebhookError::MissingHeader(SIGNATURE_HEADER))?;
    let ts: i64 = ts.trim().parse().map_err(|_| WebhookError::BadTimestamp)?;
    let skew_secs = ts.saturating_sub(now);
    if skew_secs.abs() > tolerance_secs {
        return Err(WebhookError::OutsideWindow { skew_secs, tolerance_secs });
    }
    if secrets.iter().any(|s| s.matches(id, ts, body, signature)) {
        Ok(id)
    } else {
        Err(WebhookError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification's test vectors.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders { id: Some(id), timestamp: Some(ts), signature: Some(sig) }
    }

    #[test]
    fn matches_the_specifications_vector() {
        // The spec's secret is 24 bytes, the shortest accepted.
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
        let ts = SPEC_TS.to_string();
        assert_eq!(verify(&[secret], headers(SPEC_ID, &ts, SPEC_SIG), SPEC_BODY, SPEC_TS + 10, 300), Ok(SPEC_ID));
    }

    #[test]
    fn refuses_a_changed_body_id_or_timestamp() {
        let secret = WebhookSecret::generate();
        let sig = secret.sign("msg_1", 1000, b"{}");
        let ok = [secret];
        assert_eq!(verify(&ok, headers("msg_1", "1000", &sig), b"{} ", 1000, 300), Err(WebhookError::BadSignature));
        assert_eq!(verify(&ok, headers("msg_2", "1000", &sig), b"{}", 1000, 300), Err(WebhookError::BadSignature));
        assert_eq!(verify(&ok, headers("msg_1", "1001", &sig), b"{}", 1000, 300), Err(WebhookError::BadSignature));
        let other = WebhookSecret::generate();
        assert_eq!(verify(&[other], headers("msg_1", "1000", &sig), b"{}", 1000, 300), Err(WebhookError::BadSignature));
    }

    #[test]
    fn refuses_stale_and_future_timestamps() {
        let secret = WebhookSecret::generate();
        let sig = secret.sign("m", 1000, b"x");
        let s = [secret];
        assert_eq!(
            verify(&s, headers("m", "1000", &sig), b"x", 1301, 300),
            Err(WebhookError::OutsideWindow { skew_secs: -301, tolerance_secs: 300 })
        );
        assert!(matches!(
            verify(&s, headers("m", "1000", &sig), b"x", 699, 300),
            Err(WebhookError::OutsideWindow { .. })
        ));
        assert_eq!(verify(&s, headers("m", "1000", &sig), b"x", 1300, 300), Ok("m"));
        assert_eq!(verify(&s, headers("m", "soon", &sig), b"x", 1000, 300), Err(WebhookError::BadTimestamp));
    }

    #[test]
    fn accepts_any_of_several_signatures_and_secrets() {
        let old = WebhookSecret::generate();
        let new = WebhookSecret::generate();
        let both = format!("v1,bm90IGl0 {}", new.sign("m", 5, b"b"));
        assert_eq!(verify(&[old, new.clone()], headers("m", "5", &both), b"b", 5, 300), Ok("m"));
        let missing = SignedHeaders { id: Some("m"), timestamp: Some("5"), signature: None };
        assert_eq!(verify(&[new], missing, b"b", 5, 300), Err(WebhookError::MissingHeader(SIGNATURE_HEADER)));
    }

    #[test]
    fn secrets_round_trip_and_short_ones_are_refused() {
        let s = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(&s.encode()).unwrap(), s);
        assert_eq!(WebhookSecret::parse("whsec_c2hvcnQ="), Err(WebhookError::BadSecret));
        assert_eq!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Err(WebhookError::BadSecret));
        assert!(!format!("{s:?}").contains(&s.encode()[6..]));
    }
}
