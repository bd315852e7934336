//! Stage errors say what the queue should do next: retry later (transient) or
//! dead-letter at once (permanent). The runtime reads only the class.

use std::fmt;

/// What the runtime does with a failed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Network, 5xx, 429, timeouts: delayed retry, then dead-letter.
    Transient,
    /// Bad input, bad signature, unsupported media: dead-letter at once.
    Permanent,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        })
    }
}

/// A failed stage, with its class, a short machine code and a readable message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StageError {
    /// Whether the runtime retries the message or dead-letters it at once.
    pub class: ErrorClass,
    /// Short code (`bad_input`, `bad_signature`, `storage`, `media`, `limit`, `provider`, `broker`, `timeout`, `quality`).
    pub code: &'static str,
    /// The reason, for a person (context prepended by [`StageError::context`]).
    pub message: String,
    /// Set for a message to park for this long without counting an attempt
    /// (a tier paused by its budget).
    pub defer: Option<std::time::Duration>,
    /// The job a message that is not an envelope was about (ingest's S3
    /// events), so that its dead letter is announced as the job's failure.
    pub job_id: Option<String>,
}

impl StageError {
    /// An error worth retrying (after the next retry step's delay).
    pub fn transient(code: &'static str, message: impl fmt::Display) -> Self {
        Self { class: ErrorClass::Transient, code, message: message.to_string(), defer: None, job_id: None }
    }
    /// A message to park for `delay` and try again, not counted as an attempt.
    pub fn deferred(code: &'static str, message: impl fmt::Display, delay: std::time::Duration) -> Self {
        Self { class: ErrorClass::Transient, code, message: message.to_string(), defer: Some(delay), job_id: None }
    }
    /// An error no retry can mend: the message is dead-lettered at once.
    pub fn permanent(code: &'static str, message: impl fmt::Display) -> Self {
        Self { class: ErrorClass::Permanent, code, message: message.to_string(), defer: None, job_id: None }
    }
    /// Names the job the failed message was about.
    pub fn for_job(mut self, job_id: &str) -> Self {
        self.job_id = Some(job_id.to_string());
        self
    }
    /// Adds context in front of the message.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<crate::storage::StorageError> for StageError {
    fn from(e: crate::storage::StorageError) -> Self {
        use crate::storage::StorageError as S;
        match &e {
            S::NotFound { .. } | S::Rejected(_) | S::TooLarge { .. } | S::Changed { .. } => {
                StageError::permanent("storage", e)
            }
            _ => StageError::transient("storage", e),
        }
    }
}

impl From<crate::media::MediaError> for StageError {
    fn from(e: crate::media::MediaError) -> Self {
        use crate::media::MediaError as M;
        match &e {
            M::Timeout { .. } => StageError::transient("timeout", e),
            M::Spawn { .. } | M::Io(_) | M::Killed { .. } => StageError::transient("media", e),
            M::Failed { .. } | M::Parse(_) => StageError::permanent("media", e),
            // The input asked for more than one decode may have: it would again.
            M::Limit { .. } => StageError::permanent("limit", e),
            M::AllowList { .. } | M::DecoderList { .. } | M::Sandbox { .. } => StageError::permanent("config", e),
        }
    }
}

impl From<crate::broker::BrokerError> for StageError {
    fn from(e: crate::broker::BrokerError) -> Self {
        StageError::transient("broker", e)
    }
}

impl From<crate::envelope::EnvelopeError> for StageError {
    fn from(e: crate::envelope::EnvelopeError) -> Self {
        use crate::envelope::EnvelopeError as E;
        let code = match e {
            E::MissingSignature | E::BadSignature | E::UnknownKey(_) => "bad_signature",
            E::Expired(_) => "signature_expired",
            E::KeyRetired { .. } => "signature_key_retired",
            _ => "bad_input",
        };
        StageError::permanent(code, e)
    }
}

impl From<std::io::Error> for StageError {
    fn from(e: std::io::Error) -> Self {
        StageError::transient("io", e)
    }
}
