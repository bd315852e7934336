//! The credentials a worker refuses to run with: none set, or one anybody
//! could know (the values earlier versions and the sample deployments
//! shipped, guest/guest on a broker reachable from elsewhere). `reelfleet dev`
//! makes its own random ones instead, so the embedded default never needs
//! a well-known secret either.

use super::{CredentialSource, Secret, Settings, SettingsError};
use crate::signing::{KeyError, Signer};

/// Values that were shipped as defaults or in samples: a worker that finds
/// one of them refuses to start.
const WELL_KNOWN: &[&str] = &[
    "reelfleet",
    "reelfleet-secret",
    "sk-reelfleet-dev",
    "reelfleet-dev-signing-key-change-me",
    "compose-signing-key-change-me-0123456789",
    "minioadmin",
    "guest",
    "changeme",
    "change-me",
];

/// Which credentials a process uses (an ingest worker never calls the
/// provider, so it need not hold its key).
#[derive(Clone, Copy, Debug, Default)]
pub struct Uses {
    /// Calls the AI provider (`inference.api_key`).
    pub provider: bool,
    /// Reads the SQS queue (`sqs.access_key`, `sqs.secret_key`).
    pub sqs: bool,
    /// Serves the intake API (at least one `[[intake.clients]]`, each well formed).
    pub intake: bool,
}

impl Settings {
    /// Refuses missing and well-known credentials, naming the setting and
    /// how to make a good one. The signing key is checked as [`Signer`] reads it.
    pub fn check_credentials(&self, uses: Uses) -> Result<(), SettingsError> {
        Signer::from_settings(&self.signing, &self.namespace).map_err(|KeyError(e)| SettingsError::Value(e))?;
        let mut named: Vec<(&str, &Secret)> = Vec::new();
        let mut keys = vec![(
            "s3",
            self.s3.credentials,
            [("s3.access_key", &self.s3.access_key), ("s3.secret_key", &self.s3.secret_key)],
        )];
        if uses.sqs {
            keys.push((
                "sqs",
                self.sqs.credentials,
                [("sqs.access_key", &self.sqs.access_key), ("sqs.secret_key", &self.sqs.secret_key)],
            ));
        }
        for (section, source, pair) in keys {
            match source {
                CredentialSource::Keys => named.extend(pair),
                // Keys beside the chain would be silently ignored: say so instead.
                CredentialSource::Aws if pair.iter().any(|(_, k)| !k.expose().is_empty()) => {
                    return Err(SettingsError::Value(format!(
                        "{section}.credentials = \"aws\" takes its credentials from AWS's chain (IRSA, instance role, environment); unset {section}.access_key and {section}.secret_key"
                    )));
                }
                CredentialSource::Aws => {}
            }
        }
        if uses.provider {
            named.push(("inference.api_key", &self.inference.api_key));
        }
        for (name, secret) in named {
            let value = secret.expose().trim();
            if value.is_empty() {
                return Err(SettingsError::Value(format!("{name} is not set")));
            }
            if WELL_KNOWN.iter().any(|w| w.eq_ignore_ascii_case(value)) {
                return Err(SettingsError::Value(format!(
                    "{name} is a well-known value that shipped in samples; set the credential your store or provider issued"
                )));
            }
        }
        // Clients given anywhere are checked (so `config check` refuses a bad
        // one); none at all is refused only where the intake runs.
        let configured =
            !self.intake.clients.is_empty() || self.intake.clients_file.as_deref().is_some_and(|f| !f.is_empty());
        if uses.intake || configured {
            self.intake.check_clients().map_err(SettingsError::Value)?;
        }
        check_broker_url(self.broker.url.expose())
    }
}

/// guest/guest is refused unless the broker is on this machine (RabbitMQ
/// itself only lets guest in over loopback, unless told otherwise).
fn check_broker_url(url: &str) -> Result<(), SettingsError> {
    let parsed = url::Url::parse(url).map_err(|e| SettingsError::Value(format!("broker.url is not a URL ({e})")))?;
    // amqp: is not a scheme the URL parser knows, so an address comes back as a domain.
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let password = parsed.password().unwrap_or_default();
    let well_known = parsed.username() == "guest" || WELL_KNOWN.contains(&password);
    if well_known && !loopback {
        return Err(SettingsError::Value(
            "broker.url logs in as guest (or with a well-known password) on a broker other than this machine's; create a user with its own password (rabbitmqctl add_user)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Settings {
        let mut s = Settings::default();
        s.signing.secret = Secret::new(crate::signing::generate_key());
        s.s3.access_key = Secret::new("AKIA7Q2EXAMPLE");
        s.s3.secret_key = Secret::new("q8Yf0x1Lx0Vb6mN2tQ");
        s.inference.api_key = Secret::new("sk-live-41f0a9");
        s
    }

    fn refusal(s: &Settings) -> String {
        s.check_credentials(Uses { provider: true, ..Default::default() }).unwrap_err().to_string()
    }

    #[test]
    fn defaults_hold_no_secret_and_are_refused() {
        good().check_credentials(Uses { provider: true, ..Default::default() }).unwrap();
        assert!(refusal(&Settings::default()).contains("signing.secret is not set"));
        let mut s = good();
        s.signing.secret = Secret::new("reelfleet-dev-signing-key-change-me");
        assert!(refusal(&s).contains("reelfleet keys generate"));
        let mut s = good();
        s.s3.secret_key = Secret::new("reelfleet-secret");
        assert!(refusal(&s).contains("s3.secret_key is a well-known value"));
        let mut s = good();
        s.inference.api_key = Secret::default();
        assert!(refusal(&s).contains("inference.api_key is not set"));
        s.check_credentials(Uses::default()).unwrap();
    }

    #[test]
    fn the_aws_chain_takes_no_keys_and_needs_none() {
        let sqs = Uses { sqs: true, ..Default::default() };
        let mut s = good();
        assert!(s.check_credentials(sqs).unwrap_err().to_string().contains("sqs.access_key is not set"));
        s.sqs.credentials = CredentialSource::Aws;
        s.check_credentials(sqs).unwrap();
        s.s3.credentials = CredentialSource::Aws;
        assert!(s.check_credentials(sqs).unwrap_err().to_string().contains("unset s3.access_key and s3.secret_key"));
        s.s3.access_key = Secret::default();
        s.s3.secret_key = Secret::default();
        s.check_credentials(sqs).unwrap();
        s.sqs.secret_key = Secret::new("q8Yf0x1Lx0Vb6mN2tQ");
        assert!(s.check_credentials(sqs).unwrap_err().to_string().contains("unset sqs.access_key"));
    }

    #[test]
    fn intake_needs_a_well_formed_client() {
        let intake = Uses { intake: true, ..Default::default() };
        let mut s = good();
        assert!(s.check_credentials(intake).unwrap_err().to_string().contains("reelfleet intake client"));
        s.intake.clients.push(super::super::IntakeClient {
            id: "acme".into(),
            api_key_sha256: "ab".repeat(32),
            secret: Secret::new(crate::webhooks::WebhookSecret::generate().encode()),
            ..Default::default()
        });
        s.check_credentials(intake).unwrap();
        s.intake.clients[0].api_key_sha256 = "rk_live_plaintext".into();
        assert!(s.check_credentials(intake).unwrap_err().to_string().contains("api_key_sha256"));
        s.intake.clients[0].api_key_sha256 = "ab".repeat(32);
        s.intake.clients[0].secret = Secret::new("whsec_c2hvcnQ=");
        assert!(s.check_credentials(intake).unwrap_err().to_string().contains("secret"));
        // A process that does not serve the intake still refuses a malformed client...
        assert!(s.check_credentials(Uses::default()).is_err());
        // ...and a clients file that is not there.
        let mut s = good();
        s.intake.clients_file = Some("/nonexistent/clients.toml".into());
        assert!(s.check_credentials(Uses::default()).unwrap_err().to_string().contains("clients_file"));
    }

    #[test]
    fn guest_only_on_loopback() {
        let mut s = good();
        for ok in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://guest:guest@localhost/%2f",
            "amqp://fleet:Xq9v@rabbit:5672/%2f",
        ] {
            s.broker.url = Secret::new(ok);
            s.check_credentials(Uses::default()).unwrap();
        }
        for bad in ["amqp://guest:guest@rabbitmq:5672/%2f", "amqp://fleet:guest@10.0.0.5/%2f"] {
            s.broker.url = Secret::new(bad);
            assert!(refusal(&s).contains("broker.url"), "{bad}");
        }
    }
}
