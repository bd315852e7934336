//! Settings: loading, overrides, refusals, secrets, and the README reference.

use super::*;

#[test]
fn secrets_never_print() {
    let mut s = Settings::default();
    s.s3.secret_key = Secret::new("reelfleet-secret");
    let text = format!("{s:?}");
    assert!(!text.contains("reelfleet-secret"), "{text}");
    assert!(!text.contains("guest:guest"));
}

#[test]
fn toml_round_trips() {
    let mut s = Settings { namespace: "rt-test".into(), ..Default::default() };
    s.postprocess.cdn_purge_url = Some("http://cdn/purge".into());
    s.s3.secret_key = Secret::new("kept-across-the-round-trip");
    let text = s.to_toml();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let back = Settings::load(Some(&path)).unwrap();
    assert_eq!(back.namespace, "rt-test");
    assert_eq!(back.s3.secret_key.expose(), "kept-across-the-round-trip");
    assert_eq!(back.inference.models, s.inference.models);
    assert_eq!(back.postprocess.cdn_purge_url.as_deref(), Some("http://cdn/purge"));
}

#[test]
fn environment_overrides_the_file() {
    // Only this test sets these variables, and no other test reads them.
    std::env::set_var("REELFLEET_BROKER__PREFETCH", "7");
    std::env::set_var("REELFLEET_LIMITS__MAX_STREAMS", "3");
    std::env::set_var("REELFLEET_CONFIG", "/names/the/file/not/a/setting.toml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[broker]\nprefetch = 2\n").unwrap();
    let s = Settings::load(Some(&path)).unwrap();
    std::env::remove_var("REELFLEET_BROKER__PREFETCH");
    std::env::remove_var("REELFLEET_LIMITS__MAX_STREAMS");
    std::env::remove_var("REELFLEET_CONFIG");
    assert_eq!(s.broker.prefetch, 7);
    assert_eq!(s.limits.max_streams, 3);
}

#[test]
fn unknown_fields_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[broker]\nprefetchh = 3\n").unwrap();
    let err = Settings::load(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("prefetchh"), "{err}");
}

#[test]
fn a_tier_model_without_a_price_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[inference.models]]\nmodel = \"deepseek-v3.2\"\ninput_per_mtok = 0.28\noutput_per_mtok = 0.42\n",
    )
    .unwrap();
    let err = Settings::load(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("gemini-2.5-flash") && err.contains("no [[inference.models]] entry"), "{err}");
}

#[test]
fn redacted_settings_hold_no_credential() {
    let mut s = Settings::default();
    s.s3.access_key = Secret::new("AKIAEXAMPLEKEY");
    s.s3.secret_key = Secret::new("s3-secret-value");
    s.signing.secret = Secret::new(crate::signing::generate_key());
    s.inference.api_key = Secret::new("sk-provider-value");
    let old = crate::signing::generate_key();
    s.signing.previous.push(PreviousKey {
        key_id: "k0".into(),
        secret: Secret::new(old.clone()),
        accept_until: chrono::Utc::now(),
    });
    let json = serde_json::to_string(&s.redacted()).unwrap();
    for secret in [&s.broker.url, &s.broker.management_url, &s.s3.secret_key, &s.signing.secret, &s.inference.api_key] {
        assert!(!json.contains(secret.expose()), "{json}");
    }
    assert!(!json.contains(&old), "{json}");
    assert!(json.contains("[redacted]"));
}

#[test]
fn a_database_url_is_redacted_too() {
    let mut s = Settings::default();
    s.state.url = Secret::new("postgres://fleet:hunter2-secret@db/reelfleet");
    let json = serde_json::to_string(&s.redacted()).unwrap();
    assert!(!json.contains("hunter2-secret"), "{json}");
}

/// Every leaf of the settings tree, as dotted keys (`broker.url`; a list of
/// tables such as `inference.models` is one key).
fn setting_keys(value: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                setting_keys(v, &key, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// The keys a README row names: `a.b`, `a.b` / `a.c`, `a.b` / `c` (same
/// section), `a.{x,y}.c`, `a.<tier>.c`, `[[a.b]]`.
fn readme_keys(cell: &str) -> Vec<String> {
    let names: Vec<&str> =
        cell.split('/').map(|p| p.trim().trim_matches('`').trim()).filter(|p| !p.is_empty()).collect();
    let mut out = Vec::new();
    let mut section = String::new();
    for (i, name) in names.iter().enumerate() {
        let name = name.trim_start_matches("[[").trim_end_matches("]]");
        let full = if i > 0 && !name.contains('.') && !section.is_empty() {
            format!("{section}.{name}")
        } else {
            name.to_string()
        };
        if let Some((s, _)) = full.rsplit_once('.') {
            section = s.to_string();
        }
        let tiers = ["low", "medium", "high", "critical"];
        let expanded: Vec<String> = if full.contains("<tier>") {
            tiers.iter().map(|t| full.replace("<tier>", t)).collect()
        } else if let (Some(a), Some(b)) = (full.find('{'), full.find('}')) {
            full[a + 1..b].split(',').map(|t| format!("{}{}{}", &full[..a], t, &full[b + 1..])).collect()
        } else {
            vec![full]
        };
        out.extend(expanded);
    }
    out
}

#[test]
fn the_readme_configuration_reference_names_every_setting_and_no_other() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split("## Configuration reference")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Configuration reference section");
    let mut documented = std::collections::BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(1).unwrap_or_default();
        documented.extend(readme_keys(cell));
    }
    let mut actual = std::collections::BTreeSet::new();
    setting_keys(&serde_json::to_value(Settings::default()).unwrap(), "", &mut actual);
    let missing: Vec<_> = actual.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&actual).collect();
    assert!(missing.is_empty(), "settings the README's configuration reference does not document: {missing:?}");
    assert!(unknown.is_empty(), "README configuration rows that name no setting: {unknown:?}");
}

#[test]
fn tier_presets_segment_length_and_reencode_step_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[media]\nhls_segment_secs = 2.5\nreencode_crf_step = 4\n[media.tier_presets]\nlow = \"ultrafast\"\ncritical = \"slow\"\n",
    )
    .unwrap();
    let s = Settings::load(Some(&path)).unwrap();
    use crate::envelope::Tier;
    assert_eq!(s.media.tier_presets.of(Tier::Low), "ultrafast");
    assert_eq!(s.media.tier_presets.of(Tier::Medium), "veryfast", "unset tiers keep their default");
    assert_eq!(s.media.tier_presets.of(Tier::Critical), "slow");
    assert_eq!((s.media.hls_segment_secs, s.media.reencode_crf_step), (2.5, 4));
    for (toml, named) in [
        ("[media.tier_presets]\nhigh = \"quick\"\n", "media.tier_presets.high"),
        ("[media]\nhls_segment_secs = 0.1\n", "media.hls_segment_secs"),
        ("[media]\nreencode_crf_step = 0\n", "media.reencode_crf_step"),
    ] {
        std::fs::write(&path, toml).unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains(named), "{toml}: {err}");
    }
}

#[test]
fn a_preset_is_at_least_as_slow_as_itself_and_the_faster_ones() {
    use super::preset_at_least;
    assert!(preset_at_least("veryfast", "veryfast"));
    assert!(preset_at_least("veryfast", "superfast"));
    assert!(preset_at_least("slow", "fast"));
    assert!(!preset_at_least("veryfast", "fast"), "fast searches harder than veryfast");
    assert!(!preset_at_least("quick", "ultrafast") && !preset_at_least("veryfast", "quick"), "unknown names");
}
