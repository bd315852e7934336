//! The intake API (`reelfleet intake`): where it listens, the clients it
//! answers, how long it remembers signatures and idempotency keys, its
//! limits, and the Cloud Pub/Sub push endpoint's token.

use super::Secret;
use serde::{Deserialize, Serialize};

/// `[intake]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    /// Address the API listens on (port 0 picks one).
    pub bind_addr: String,
    /// The clients it answers (`[[intake.clients]]`; none by default: the API
    /// refuses to start without one).
    pub clients: Vec<IntakeClient>,
    /// A TOML file of more `[[clients]]` entries, read at start (a mounted
    /// Kubernetes Secret, the compose stack's generated file); they join `clients`.
    pub clients_file: Option<String>,
    /// Seconds a request's `webhook-timestamp` may be from now, either way;
    /// a `webhook-id` is remembered (and refused again) for this long.
    pub tolerance_secs: u64,
    /// Hours an `Idempotency-Key` answers with its first response.
    pub idempotency_ttl_hours: u64,
    /// Most jobs in one `POST /v1/batches`.
    pub max_batch: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The `token` query parameter Cloud Pub/Sub push deliveries must carry
    /// to `POST /v1/gcs/push`; unset: that endpoint answers 404.
    pub gcs_verification_token: Option<Secret>,
}

/// One `[[intake.clients]]` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IntakeClient {
    /// Name of the client (letters, digits, `-`, `_`; 1 to 64), in logs,
    /// metrics and the acceptance records.
    pub id: String,
    /// Hex SHA-256 of its API key (never the key itself): `reelfleet intake client` prints both.
    pub api_key_sha256: String,
    /// Its Standard Webhooks secret (`whsec_...`), which signs every request.
    pub secret: Secret,
    /// Most authenticated requests it may make in any 60 s, counted over
    /// every intake replica (0: no limit); above it, 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests_per_minute: u32,
    /// Most jobs it may submit in any 60 s (a batch counts its jobs; 0: no limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jobs_per_minute: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            bind_addr: "127.0.0.1:8088".into(),
            clients: Vec::new(),
            clients_file: None,
            tolerance_secs: 300,
            idempotency_ttl_hours: 24,
            max_batch: 1000,
            max_body_bytes: 4 * 1024 * 1024,
            gcs_verification_token: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    clients: Vec<IntakeClient>,
}

impl IntakeSettings {
    /// `clients` and those of `clients_file`.
    pub fn all_clients(&self) -> Result<Vec<IntakeClient>, String> {
        let mut all = self.clients.clone();
        if let Some(path) = self.clients_file.as_deref().filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("intake.clients_file {path}: cannot read it ({e})"))?;
            let file: ClientsFile = toml::from_str(&text)
                .map_err(|e| format!("intake.clients_file {path}: not [[clients]] entries ({e})"))?;
            all.extend(file.clients);
        }
        Ok(all)
    }

    /// Checks the clients (`clients` and `clients_file`): at least one, ids
    /// well formed and distinct, each key hash 64 hex digits and distinct,
    /// each secret a `whsec_` secret.
    pub fn check_clients(&self) -> Result<(), String> {
        let clients = self.all_clients()?;
        if clients.is_empty() {
            return Err("intake has no [[intake.clients]]: make one with `reelfleet intake client --id NAME`".into());
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut hashes = std::collections::BTreeSet::new();
        for (i, c) in clients.iter().enumerate() {
            let ok_id = !c.id.is_empty()
                && c.id.len() <= 64
                && c.id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
            if !ok_id {
                return Err(format!("intake.clients[{i}].id {:?} must be 1 to 64 letters, digits, '-' or '_'", c.id));
            }
            if !ids.insert(c.id.as_str()) {
                return Err(format!("intake.clients: id {:?} is listed twice", c.id));
            }
            let hash = c.api_key_sha256.trim().to_ascii_lowercase();
            if hash.len() != 64 || !hash.chars().all(|ch| ch.is_ascii_hexdigit()) {
                return Err(format!(
                    "intake.clients[{i}].api_key_sha256 must be the 64 hex digits of the key's SHA-256, not the key"
                ));
            }
            if !hashes.insert(hash) {
                return Err(format!("intake.clients[{i}]: its API key is another client's too"));
            }
            crate::webhooks::WebhookSecret::parse(c.secret.expose())
                .map_err(|e| format!("intake.clients[{i}].secret: {e}"))?;
        }
        if self.tolerance_secs < 10 {
            return Err("intake.tolerance_secs must be at least 10".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn client(id: &str) -> IntakeClient {
        IntakeClient {
            id: id.into(),
            api_key_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(id.as_bytes())),
            secret: Secret::new(crate::webhooks::WebhookSecret::generate().encode()),
            ..Default::default()
        }
    }

    #[test]
    fn secrets_are_redacted_and_clients_checked() {
        let mut s = Settings::default();
        s.intake.clients = vec![client("acme")];
        s.intake.gcs_verification_token = Some(Secret::new("push-token-hunter2"));
        let shown = serde_json::to_string(&s.redacted()).unwrap();
        assert!(!shown.contains("whsec_") && !shown.contains("hunter2"), "{shown}");
        s.intake.check_clients().unwrap();
        s.intake.clients.push(client("acme"));
        assert!(s.intake.check_clients().unwrap_err().contains("listed twice"));
        s.intake.clients[1].id = "other one".into();
        assert!(s.intake.check_clients().unwrap_err().contains("letters, digits"));
    }

    #[test]
    fn a_clients_file_adds_clients() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.toml");
        let c = client("beta");
        let text = format!(
            "[[clients]]\nid = \"beta\"\napi_key_sha256 = \"{}\"\nsecret = \"{}\"\n",
            c.api_key_sha256,
            c.secret.expose()
        );
        std::fs::write(&path, text).unwrap();
        let settings = IntakeSettings {
            clients: vec![client("acme")],
            clients_file: Some(path.display().to_string()),
            ..Default::default()
        };
        let ids: Vec<String> = settings.all_clients().unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["acme", "beta"]);
        settings.check_clients().unwrap();
        std::fs::write(&path, "[[clients]]\nid = \"x\"\n").unwrap();
        assert!(settings.all_clients().unwrap_err().contains("clients_file"));
    }
}
