//! Loading (defaults, then a TOML file, then environment overrides) and
//! writing the settings back as TOML.

use super::{Settings, SettingsError};
use std::path::Path;

impl Settings {
    /// Loads defaults, then `file` (TOML) if given, then `REELFLEET_*` overrides.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let defaults = config::Config::try_from(&Settings::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            builder = builder
                .add_source(config::File::from(path.to_path_buf()).format(config::FileFormat::Toml).required(true));
        }
        // REELFLEET_CONFIG names the file (the CLI's --config); it is not a setting.
        let vars: std::collections::HashMap<String, String> =
            std::env::vars().filter(|(k, _)| k.starts_with("REELFLEET_") && k != "REELFLEET_CONFIG").collect();
        builder = builder.add_source(
            config::Environment::with_prefix("REELFLEET")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The settings as TOML, credentials included (for `reelfleet dev` to hand
    /// its own configuration to other commands).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("settings serialize to TOML")
    }
}
