//! Message signatures: HMAC-SHA256 over the body and what the body alone
//! cannot say — the namespace, the queue the message is addressed to, the key
//! id and an expiry — so a captured message cannot be replayed onto another
//! stage, into another fleet or after it has expired, and keys can rotate.
//!
//! The header value is `<key id>.<expiry, Unix seconds>.<hex MAC>`. Messages
//! are signed with the current key; listed previous keys are accepted until
//! their `accept_until`, then refused by name.

use crate::{
    envelope::EnvelopeError,
    settings::{SigningSettings, MIN_KEY_BYTES},
};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::{fmt, time::Duration};

/// Domain separation: a MAC made for something else never verifies here.
const CONTEXT: &[u8] = b"reelfleet-message-v2";

/// Why the signing settings cannot make a signer; names the setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A new random key: 32 bytes from the thread's CSPRNG, as 64 hex digits.
pub fn generate_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Checks a key id: 1 to 32 ASCII letters, digits, `-` or `_` (it travels in
/// a header next to a `.`).
pub fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Decodes a key written as hex and refuses one too short or visibly not
/// random (fewer than 12 distinct bytes in 32 is what a typed phrase or a
/// repeated pattern gives; random keys have about 30).
pub fn parse_key(setting: &str, text: &str) -> Result<Vec<u8>, KeyError> {
    let how = "make one with `reelfleet keys generate`";
    if text.is_empty() {
        return Err(KeyError(format!("{setting} is not set: {how}")));
    }
    let bytes = hex::decode(text.trim())
        .map_err(|_| KeyError(format!("{setting} must be hex ({} or more digits): {how}", MIN_KEY_BYTES * 2)))?;
    if bytes.len() < MIN_KEY_BYTES {
        return Err(KeyError(format!(
            "{setting} carries {} bytes; at least {MIN_KEY_BYTES} random bytes are needed: {how}",
            bytes.len()
        )));
    }
    let distinct = bytes.iter().collect::<std::collections::BTreeSet<_>>().len();
    if distinct < 12 {
        return Err(KeyError(format!("{setting} is not random (only {distinct} distinct bytes): {how}")));
    }
    Ok(bytes)
}

#[derive(Clone)]
struct Key {
    id: String,
    bytes: Vec<u8>,
    /// `None` for the current key.
    accept_until: Option<DateTime<Utc>>,
}

/// Signs and verifies messages of one namespace.
#[derive(Clone)]
pub struct Signer {
    namespace: String,
    current: Key,
    previous: Vec<Key>,
    max_age: Duration,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("namespace", &self.namespace)
            .field("key_id", &self.current.id)
            .field("previous", &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of `namespace` with the keys in `settings`.
    pub fn from_settings(settings: &SigningSettings, namespace: &str) -> Result<Self, KeyError> {
        let key = |id: &str, secret: &str, setting: &str, accept_until| -> Result<Key, KeyError> {
            if !valid_key_id(id) {
                return Err(KeyError(format!("{setting}: key id {id:?} must be 1 to 32 letters, digits, '-' or '_'")));
            }
            Ok(Key { id: id.into(), bytes: parse_key(setting, secret)?, accept_until })
        };
        let current = key(&settings.key_id, settings.secret.expose(), "signing.secret", None)?;
        let mut previous = Vec::new();
        for (i, p) in settings.previous.iter().enumerate() {
            let setting = format!("signing.previous[{i}].secret");
            let k = key(&p.key_id, p.secret.expose(), &setting, Some(p.accept_until))?;
            if k.id == current.id || previous.iter().any(|o: &Key| o.id == k.id) {
                return Err(KeyError(format!("signing key id {:?} is listed twice", k.id)));
            }
            if k.bytes == current.bytes {
                return Err(KeyError(format!("{setting} is the current key under another id")));
            }
            previous.push(k);
        }
        if settings.max_age_secs < 60 {
            return Err(KeyError("signing.max_age_secs must be at least 60".into()));
        }
        Ok(Self { namespace: namespace.into(), current, previous, max_age: Duration::from_secs(settings.max_age_secs) })
    }

    /// A signer with one key and a week's validity, for tests and tools.
    pub fn with_key(namespace: &str, key_id: &str, key: &[u8]) -> Self {
        Self {
            namespace: namespace.into(),
            current: Key { id: key_id.into(), bytes: key.to_vec(), accept_until: None },
            previous: Vec::new(),
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }

    fn mac(key: &Key, namespace: &str, queue: &str, expires: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key.bytes).expect("HMAC accepts any key length");
        for part in [CONTEXT, namespace.as_bytes(), queue.as_bytes(), key.id.as_bytes(), expires.to_string().as_bytes()]
        {
            // Length-prefixed, so no two different tuples feed the same bytes.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(body);
        mac
    }

    /// The signature header value of `body` addressed to `queue` (the full
    /// name of the stage queue that will consume it), valid for `max_age`.
    pub fn sign(&self, queue: &str, body: &[u8]) -> String {
        self.sign_at(queue, body, Utc::now())
    }

    /// [`Signer::sign`] as of `now`.
    pub fn sign_at(&self, queue: &str, body: &[u8], now: DateTime<Utc>) -> String {
        let expires = now.timestamp() + self.max_age.as_secs() as i64;
        let mac = Self::mac(&self.current, &self.namespace, queue, expires, body);
        format!("{}.{}.{}", self.current.id, expires, hex::encode(mac.finalize().into_bytes()))
    }

    /// Checks a signature header against `body` as consumed from `queue`.
    pub fn verify(&self, queue: &str, body: &[u8], header: Option<&str>) -> Result<(), EnvelopeError> {
        self.verify_at(queue, body, header, Utc::now())
    }

    /// Whether `header` was made by a key this signer accepts now, whatever
    /// its expiry: what a replay of a dead letter checks before it signs the
    /// message anew (an expired message is replayable; a forged one never is).
    pub fn authentic(&self, queue: &str, body: &[u8], header: Option<&str>) -> Result<(), EnvelopeError> {
        match self.verify(queue, body, header) {
            Err(EnvelopeError::Expired(_)) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// [`Signer::verify`] as of `now`. The MAC is compared in constant time
    /// before the key's retirement and the expiry are looked at, so an
    /// error naming either is only given to someone who holds the key.
    pub fn verify_at(
        &self,
        queue: &str,
        body: &[u8],
        header: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), EnvelopeError> {
        let header = header.ok_or(EnvelopeError::MissingSignature)?.trim();
        let mut parts = header.splitn(3, '.');
        let (Some(kid), Some(expires), Some(mac_hex)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EnvelopeError::BadSignature);
        };
        let expires: i64 = expires.parse().map_err(|_| EnvelopeError::BadSignature)?;
        let raw = hex::decode(mac_hex).map_err(|_| EnvelopeError::BadSignature)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == kid)
            .ok_or_else(|| EnvelopeError::UnknownKey(kid.chars().take(32).collect()))?;
        Self::mac(key, &self.namespace, queue, expires, body)
            .verify_slice(&raw)
            .map_err(|_| EnvelopeError::BadSignature)?;
        if let Some(until) = key.accept_until.filter(|until| now >= *until) {
            return Err(EnvelopeError::KeyRetired { key_id: key.id.clone(), until: until.to_rfc3339() });
        }
        if now.timestamp() >= expires {
            let at = DateTime::from_timestamp(expires, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
            return Err(EnvelopeError::Expired(at));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{PreviousKey, Secret};

    fn settings(id: &str, secret: &str) -> SigningSettings {
        SigningSettings { key_id: id.into(), secret: Secret::new(secret), ..Default::default() }
    }

    #[test]
    fn keys_must_be_long_random_hex() {
        assert!(parse_key("k", &generate_key()).is_ok());
        assert_ne!(generate_key(), generate_key());
        for bad in ["", "reelfleet-dev-signing-key-change-me", &"ab".repeat(16), &"00".repeat(64), "zz"] {
            let err = parse_key("signing.secret", bad).unwrap_err().0;
            assert!(err.contains("signing.secret") && err.contains("reelfleet keys generate"), "{err}");
        }
        assert!(Signer::from_settings(&settings("bad.id", &generate_key()), "ns").is_err());
        assert!(Signer::from_settings(&settings("k1", ""), "ns").is_err());
    }

    #[test]
    fn the_mac_covers_body_queue_namespace_key_and_expiry() {
        let key = generate_key();
        let signer = Signer::from_settings(&settings("k1", &key), "ns").unwrap();
        let sig = signer.sign("ns.preprocess", b"{}");
        assert!(sig.starts_with("k1."));
        signer.verify("ns.preprocess", b"{}", Some(&sig)).unwrap();
        assert_eq!(signer.verify("ns.preprocess", b"{ }", Some(&sig)), Err(EnvelopeError::BadSignature));
        assert_eq!(signer.verify("ns.postprocess", b"{}", Some(&sig)), Err(EnvelopeError::BadSignature));
        let other_ns = Signer::from_settings(&settings("k1", &key), "other").unwrap();
        assert_eq!(other_ns.verify("ns.preprocess", b"{}", Some(&sig)), Err(EnvelopeError::BadSignature));
        // Moving the expiry later breaks the MAC.
        let (head, mac) = sig.rsplit_once('.').unwrap();
        let (kid, exp) = head.split_once('.').unwrap();
        let later = format!("{kid}.{}.{mac}", exp.parse::<i64>().unwrap() + 3600);
        assert_eq!(signer.verify("ns.preprocess", b"{}", Some(&later)), Err(EnvelopeError::BadSignature));
        assert_eq!(signer.verify("ns.preprocess", b"{}", None), Err(EnvelopeError::MissingSignature));
        for junk in ["", "k1", "k1.x.00", "k1.1.zz", "plain-hex-ab12"] {
            assert!(signer.verify("ns.preprocess", b"{}", Some(junk)).is_err(), "{junk}");
        }
    }

    #[test]
    fn expired_messages_are_refused() {
        let signer = Signer::from_settings(&settings("k1", &generate_key()), "ns").unwrap();
        let then = Utc::now() - chrono::Duration::days(8);
        let sig = signer.sign_at("q", b"x", then);
        assert!(signer.verify_at("q", b"x", Some(&sig), then + chrono::Duration::days(6)).is_ok());
        assert!(matches!(signer.verify("q", b"x", Some(&sig)), Err(EnvelopeError::Expired(_))));
        signer.authentic("q", b"x", Some(&sig)).expect("an expired message can be replayed");
        assert!(signer.authentic("q", b"y", Some(&sig)).is_err(), "a forged one cannot");
    }

    #[test]
    fn previous_keys_verify_until_their_date_then_are_refused_by_name() {
        let (old, new) = (generate_key(), generate_key());
        let old_signer = Signer::from_settings(&settings("k1", &old), "ns").unwrap();
        let sig = old_signer.sign("q", b"x");
        let until = Utc::now() + chrono::Duration::hours(1);
        let mut rotated = settings("k2", &new);
        rotated.previous =
            vec![PreviousKey { key_id: "k1".into(), secret: Secret::new(old.clone()), accept_until: until }];
        let signer = Signer::from_settings(&rotated, "ns").unwrap();
        signer.verify("q", b"x", Some(&sig)).unwrap();
        assert!(signer.sign("q", b"x").starts_with("k2."), "signs with the current key");
        assert!(matches!(
            signer.verify_at("q", b"x", Some(&sig), until + chrono::Duration::seconds(1)),
            Err(EnvelopeError::KeyRetired { .. })
        ));
        let fresh = Signer::from_settings(&settings("k2", &new), "ns").unwrap();
        assert_eq!(fresh.verify("q", b"x", Some(&sig)), Err(EnvelopeError::UnknownKey("k1".into())));
        // A forger who knows only the key id gets no further than a bad MAC.
        let forged = format!("k1.{}.{}", Utc::now().timestamp() + 60, "00".repeat(32));
        assert_eq!(signer.verify("q", b"x", Some(&forged)), Err(EnvelopeError::BadSignature));
        let mut twice = rotated.clone();
        twice.previous[0].key_id = "k2".into();
        assert!(Signer::from_settings(&twice, "ns").is_err());
    }
}
