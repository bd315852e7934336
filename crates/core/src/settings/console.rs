//! The web console (`reelfleet console`, and `reelfleet dev`): where it
//! listens, who may log in and as what, how long a session lasts, and the
//! key that signs session cookies.

use super::Secret;
use serde::{Deserialize, Serialize};

/// `[console]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Address the console listens on (port 0 picks one).
    pub listen: String,
    /// Who may log in (`[[console.accounts]]`; none by default: the console
    /// refuses to start without one). `reelfleet console account` makes an entry.
    pub accounts: Vec<ConsoleAccount>,
    /// A TOML file of more `[[accounts]]` entries, read at start (a mounted
    /// Kubernetes Secret); they join `accounts`.
    pub accounts_file: Option<String>,
    /// Seconds a session lasts after login.
    pub session_ttl_secs: u64,
    /// Session cookies carry `Secure` (sent over HTTPS only); `reelfleet dev`
    /// turns it off, as it serves plain HTTP on this machine.
    pub secure_cookies: bool,
    /// HMAC-SHA256 key signing session cookies and CSRF tokens, as hex, at
    /// least 32 random bytes; no default: `reelfleet keys generate` makes one
    /// (`reelfleet dev` keeps its own in its data folder).
    pub session_key: Secret,
    /// Most login attempts per account in any 60 s (every unknown name
    /// together counts as one), over every console replica through `state.url`.
    pub login_attempts_per_minute: u32,
}

/// What an account may do.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    /// Reads every page; changes nothing.
    #[default]
    Viewer,
    /// A viewer who may also replay and purge dead letters.
    Operator,
}

impl ConsoleRole {
    /// `viewer` or `operator`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConsoleRole::Viewer => "viewer",
            ConsoleRole::Operator => "operator",
        }
    }
}

impl std::str::FromStr for ConsoleRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(ConsoleRole::Viewer),
            "operator" => Ok(ConsoleRole::Operator),
            other => Err(format!("role {other:?}: expected viewer or operator")),
        }
    }
}

/// One `[[console.accounts]]` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleAccount {
    /// Login name (letters, digits, `-`, `_`, `.`; 1 to 64).
    pub name: String,
    /// The password's argon2 PHC string (`$argon2id$...`), never the password:
    /// `reelfleet console account` prints it.
    pub password_hash: String,
    /// `viewer` or `operator`.
    pub role: ConsoleRole,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9200".into(),
            accounts: Vec::new(),
            accounts_file: None,
            session_ttl_secs: 8 * 3600,
            secure_cookies: true,
            session_key: Secret::default(),
            login_attempts_per_minute: 10,
        }
    }
}

/// An accounts file: `[[accounts]]` entries, or the `[[console.accounts]]`
/// entries `reelfleet console account` prints, appended as they are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(default)]
    accounts: Vec<ConsoleAccount>,
    #[serde(default)]
    console: Option<Box<AccountsFile>>,
}

impl ConsoleSettings {
    /// `accounts` and those of `accounts_file`.
    pub fn all_accounts(&self) -> Result<Vec<ConsoleAccount>, String> {
        let mut all = self.accounts.clone();
        if let Some(path) = self.accounts_file.as_deref().filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("console.accounts_file {path}: cannot read it ({e})"))?;
            let file: AccountsFile = toml::from_str(&text)
                .map_err(|e| format!("console.accounts_file {path}: not [[accounts]] entries ({e})"))?;
            all.extend(file.accounts);
            all.extend(file.console.map(|c| c.accounts).unwrap_or_default());
        }
        Ok(all)
    }

    /// Checks what the console needs before it serves anyone: at least one
    /// account, names well formed and distinct, each hash an argon2 PHC
    /// string, a session key of at least 32 random bytes, sane limits.
    /// Returns the accounts.
    pub fn check(&self) -> Result<Vec<ConsoleAccount>, String> {
        let accounts = self.all_accounts()?;
        if accounts.is_empty() {
            return Err("console has no [[console.accounts]]: make one with `reelfleet console account --name NAME --role operator` and add the entry it prints".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, a) in accounts.iter().enumerate() {
            let ok = !a.name.is_empty()
                && a.name.len() <= 64
                && a.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(format!(
                    "console.accounts[{i}].name {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                    a.name
                ));
            }
            if !names.insert(a.name.as_str()) {
                return Err(format!("console.accounts: name {:?} is listed twice", a.name));
            }
            if !a.password_hash.starts_with("$argon2") {
                return Err(format!(
                    "console.accounts[{i}].password_hash must be an argon2 PHC string ($argon2id$...), never the password: `reelfleet console account` makes one"
                ));
            }
        }
        let key = self.session_key.expose().trim();
        if key.is_empty() {
            return Err("console.session_key is not set: make one with `reelfleet keys generate`".into());
        }
        match hex::decode(key) {
            Ok(bytes) if bytes.len() >= super::MIN_KEY_BYTES => {}
            _ => {
                return Err(format!(
                "console.session_key must be at least {} random bytes as hex: make one with `reelfleet keys generate`",
                super::MIN_KEY_BYTES
            ))
            }
        }
        if self.session_ttl_secs < 60 {
            return Err("console.session_ttl_secs must be at least 60".into());
        }
        if self.login_attempts_per_minute == 0 {
            return Err("console.login_attempts_per_minute must be at least 1".into());
        }
        Ok(accounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_account_no_key_and_plain_passwords_are_refused() {
        let mut s = ConsoleSettings::default();
        assert!(s.check().unwrap_err().contains("reelfleet console account"));
        s.accounts.push(ConsoleAccount {
            name: "ops".into(),
            password_hash: "hunter2".into(),
            role: ConsoleRole::Operator,
        });
        assert!(s.check().unwrap_err().contains("argon2"));
        s.accounts[0].password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into();
        assert!(s.check().unwrap_err().contains("session_key is not set"));
        s.session_key = Secret::new("abcd");
        assert!(s.check().unwrap_err().contains("at least 32"));
        s.session_key = Secret::new(crate::signing::generate_key());
        assert_eq!(s.check().unwrap().len(), 1);
        s.accounts.push(s.accounts[0].clone());
        assert!(s.check().unwrap_err().contains("listed twice"));
    }

    #[test]
    fn an_accounts_file_takes_either_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.toml");
        let entry = |table: &str, name: &str| {
            format!("[[{table}]]\nname = \"{name}\"\npassword_hash = \"$argon2id$x\"\nrole = \"operator\"\n")
        };
        std::fs::write(&path, entry("accounts", "a") + &entry("console.accounts", "b")).unwrap();
        let s = ConsoleSettings { accounts_file: Some(path.display().to_string()), ..Default::default() };
        let names: Vec<String> = s.all_accounts().unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn roles_read_as_words() {
        let a: ConsoleAccount =
            toml::from_str("name = \"v\"\npassword_hash = \"$argon2id$x\"\nrole = \"viewer\"\n").unwrap();
        assert_eq!(a.role, ConsoleRole::Viewer);
        assert!(toml::from_str::<ConsoleAccount>("name = \"v\"\npassword_hash = \"x\"\nrole = \"admin\"\n").is_err());
    }
}
