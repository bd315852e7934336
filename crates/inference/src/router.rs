//! Routing: which model serves a tier right now. A model whose requests keep
//! failing cools down and its tier's fallback model takes over until it ends.
//! Also the per-tier daily spend that budgets are checked against.

use reelfleet_core::{envelope::Tier, settings::InferenceSettings};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    cooled_until: Option<Instant>,
}

/// The model chosen for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Model to call.
    pub model: String,
    /// The tier's own model, when a fallback serves instead.
    pub fallback_from: Option<String>,
}

/// Model health and per-tier spend of this worker.
#[derive(Debug, Default)]
pub struct Router {
    health: Mutex<HashMap<String, Health>>,
    spend: Mutex<(chrono::NaiveDate, HashMap<Tier, f64>)>,
}

impl Router {
    /// The model that serves `tier` now.
    pub fn pick(&self, settings: &InferenceSettings, tier: Tier) -> Route {
        let t = settings.tier(tier);
        let now = Instant::now();
        let health = self.health.lock().expect("router lock");
        let cooling = |m: &str| health.get(m).and_then(|h| h.cooled_until).is_some_and(|u| u > now);
        match &t.fallback_model {
            Some(fb) if cooling(&t.model) && !cooling(fb) => {
                Route { model: fb.clone(), fallback_from: Some(t.model.clone()) }
            }
            _ => Route { model: t.model.clone(), fallback_from: None },
        }
    }

    /// Records a request's outcome; returns true when the model just started cooling down.
    pub fn record(&self, settings: &InferenceSettings, model: &str, ok: bool) -> bool {
        let mut health = self.health.lock().expect("router lock");
        let h = health.entry(model.to_string()).or_default();
        if ok {
            h.failures = 0;
            return false;
        }
        h.failures += 1;
        if h.failures >= settings.cooldown_after_failures.max(1) {
            h.failures = 0;
            h.cooled_until = Some(Instant::now() + Duration::from_secs(settings.cooldown_secs));
            return true;
        }
        false
    }

    /// Whether `model` is cooling down.
    pub fn cooling(&self, model: &str) -> bool {
        let health = self.health.lock().expect("router lock");
        health.get(model).and_then(|h| h.cooled_until).is_some_and(|u| u > Instant::now())
    }

    /// USD spent by `tier` today (UTC).
    pub fn spent(&self, tier: Tier) -> f64 {
        let mut spend = self.spend.lock().expect("spend lock");
        roll(&mut spend);
        spend.1.get(&tier).copied().unwrap_or(0.0)
    }

    /// Adds to `tier`'s spend today.
    pub fn add_spend(&self, tier: Tier, usd: f64) {
        let mut spend = self.spend.lock().expect("spend lock");
        roll(&mut spend);
        *spend.1.entry(tier).or_default() += usd;
    }
}

fn roll(spend: &mut (chrono::NaiveDate, HashMap<Tier, f64>)) {
    let today = chrono::Utc::now().date_naive();
    if spend.0 != today {
        *spend = (today, HashMap::new());
    }
}

/// The next cheaper tier, if any.
pub fn cheaper(tier: Tier) -> Option<Tier> {
    match tier {
        Tier::Low => None,
        Tier::Medium => Some(Tier::Low),
        Tier::High => Some(Tier::Medium),
        Tier::Critical => Some(Tier::High),
    }
}

/// Time until the next UTC midnight.
pub fn until_tomorrow() -> Duration {
    let now = chrono::Utc::now();
    let tomorrow = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    (tomorrow - now).to_std().unwrap_or(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_model_cools_down_and_fallback_serves() {
        let mut s = InferenceSettings { cooldown_after_failures: 2, cooldown_secs: 60, ..Default::default() };
        s.low.fallback_model = Some("gemini-2.5-flash".into());
        let r = Router::default();
        assert_eq!(r.pick(&s, Tier::Low).model, "deepseek-v3.2");
        assert!(!r.record(&s, "deepseek-v3.2", false));
        assert!(r.record(&s, "deepseek-v3.2", false));
        let route = r.pick(&s, Tier::Low);
        assert_eq!(route, Route { model: "gemini-2.5-flash".into(), fallback_from: Some("deepseek-v3.2".into()) });
        r.add_spend(Tier::Low, 0.5);
        r.add_spend(Tier::Low, 0.25);
        assert_eq!(r.spent(Tier::Low), 0.75);
        assert_eq!(cheaper(Tier::Critical), Some(Tier::High));
        assert!(until_tomorrow() <= Duration::from_secs(86400));
    }
}
