//! Routing: which model serves a tier right now. A model whose requests keep
//! failing cools down and its tier's fallback model takes over until it ends.
//! The failure streak and the cooldown live in the fleet's state database, so
//! every replica routes alike: one replica's failures cool the model for all.

use reelfleet_core::{
    envelope::Tier,
    fleetstate::{now_ms, FleetState, StateError},
    settings::InferenceSettings,
};
use std::time::Duration;

/// The model chosen for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The model to call: the tier's own, or its fallback while the own one cools down.
    pub model: String,
    /// The tier's own model, when a fallback serves instead.
    pub fallback_from: Option<String>,
}

/// Model health, shared by the fleet.
#[derive(Debug, Clone)]
pub struct Router {
    state: FleetState,
}

impl Router {
    /// Routing over the fleet's shared state.
    pub fn new(state: FleetState) -> Self {
        Self { state }
    }

    /// The model that serves `tier` now.
    pub async fn pick(&self, settings: &InferenceSettings, tier: Tier) -> Result<Route, StateError> {
        let t = settings.tier(tier);
        match &t.fallback_model {
            Some(fb) if self.cooling(&t.model).await? && !self.cooling(fb).await? => {
                Ok(Route { model: fb.clone(), fallback_from: Some(t.model.clone()) })
            }
            _ => Ok(Route { model: t.model.clone(), fallback_from: None }),
        }
    }

    /// Records a request's outcome; returns true when the model just started cooling down.
    pub async fn record(&self, settings: &InferenceSettings, model: &str, ok: bool) -> Result<bool, StateError> {
        let ns = self.state.namespace();
        let pool = self.state.pool();
        if ok {
            sqlx::query("UPDATE rf_model_gate SET failures = 0 WHERE ns = $1 AND model = $2 AND failures > 0")
                .bind(ns)
                .bind(model)
                .execute(pool)
                .await?;
            return Ok(false);
        }
        let mut tx = pool.begin().await?;
        reelfleet_core::fleetstate::take_gate(&mut tx, ns, model).await?;
        sqlx::query("UPDATE rf_model_gate SET failures = failures + 1 WHERE ns = $1 AND model = $2")
            .bind(ns)
            .bind(model)
            .execute(&mut *tx)
            .await?;
        let (failures,): (i64,) = sqlx::query_as("SELECT failures FROM rf_model_gate WHERE ns = $1 AND model = $2")
            .bind(ns)
            .bind(model)
            .fetch_one(&mut *tx)
            .await?;
        let cooled = failures >= i64::from(settings.cooldown_after_failures.max(1));
        if cooled {
            let until = now_ms() + Duration::from_secs(settings.cooldown_secs).as_millis() as i64;
            sqlx::query("UPDATE rf_model_gate SET failures = 0, cooled_until_ms = $3 WHERE ns = $1 AND model = $2")
                .bind(ns)
                .bind(model)
                .bind(until)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(cooled)
    }

    /// Whether `model` is cooling down.
    pub async fn cooling(&self, model: &str) -> Result<bool, StateError> {
        let until: Option<(i64,)> =
            sqlx::query_as("SELECT cooled_until_ms FROM rf_model_gate WHERE ns = $1 AND model = $2")
                .bind(self.state.namespace())
                .bind(model)
                .fetch_optional(self.state.pool())
                .await?;
        Ok(until.is_some_and(|(u,)| u > now_ms()))
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

    #[tokio::test]
    async fn failing_model_cools_down_for_every_replica_and_fallback_serves() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let mut s = InferenceSettings { cooldown_after_failures: 2, cooldown_secs: 60, ..Default::default() };
        s.low.fallback_model = Some("gemini-2.5-flash".into());
        // Two replicas: two pools on one database.
        let a = Router::new(FleetState::connect(&url, "ns").await.unwrap());
        let b = Router::new(FleetState::connect(&url, "ns").await.unwrap());
        let other_fleet = Router::new(FleetState::connect(&url, "other").await.unwrap());
        assert_eq!(a.pick(&s, Tier::Low).await.unwrap().model, "deepseek-v3.2");
        assert!(!a.record(&s, "deepseek-v3.2", false).await.unwrap());
        assert!(b.record(&s, "deepseek-v3.2", false).await.unwrap(), "the streak is the fleet's, not a replica's");
        let route = a.pick(&s, Tier::Low).await.unwrap();
        assert_eq!(route, Route { model: "gemini-2.5-flash".into(), fallback_from: Some("deepseek-v3.2".into()) });
        assert_eq!(b.pick(&s, Tier::Low).await.unwrap(), route);
        assert_eq!(other_fleet.pick(&s, Tier::Low).await.unwrap().model, "deepseek-v3.2", "namespaces are apart");
        assert_eq!(cheaper(Tier::Critical), Some(Tier::High));
        assert!(until_tomorrow() <= Duration::from_secs(86400));
    }
}
