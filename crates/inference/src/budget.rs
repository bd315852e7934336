//! Daily budgets per tier, shared by every replica: a batch reserves its
//! estimated cost in the fleet's state database before it is sent, and
//! settles to what the provider billed when the answer arrives (or releases
//! the reservation when nothing was billed). A reservation succeeds only
//! while the tier's spend plus what is reserved is under the cap, in one
//! conditional update, so whatever the replica count the fleet overspends by
//! at most one batch per tier.

use reelfleet_core::{
    envelope::Tier,
    fleetstate::{changed, FleetState, StateError},
};
use tracing::warn;

/// A tier's spend for the day, as the fleet sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spend {
    /// What the provider billed today, in USD.
    pub spent_usd: f64,
    /// Reserved by batches in flight.
    pub reserved_usd: f64,
}

impl Spend {
    /// Billed plus reserved: what the cap is checked against.
    pub fn committed(&self) -> f64 {
        self.spent_usd + self.reserved_usd
    }
}

/// `tier`'s spend today (UTC) in the fleet's state database, for reports
/// (the console's overview).
pub async fn spend_today(state: &FleetState, tier: Tier) -> Result<Spend, StateError> {
    Budgets::new(state.clone()).spend(tier).await
}

/// An amount set aside for one request.
#[derive(Debug)]
#[must_use = "a reservation is settled or released"]
pub(crate) struct Reservation {
    tier: Tier,
    day: String,
    usd: f64,
}

/// Every tier's daily spend, in the shared database.
#[derive(Clone, Debug)]
pub(crate) struct Budgets {
    state: FleetState,
}

fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}

impl Budgets {
    pub(crate) fn new(state: FleetState) -> Self {
        Self { state }
    }

    async fn ensure_row(&self, day: &str, tier: Tier) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO rf_tier_budget (ns, day, tier) VALUES ($1, $2, $3) ON CONFLICT (ns, day, tier) DO NOTHING",
        )
        .bind(self.state.namespace())
        .bind(day)
        .bind(tier.as_str())
        .execute(self.state.pool())
        .await?;
        Ok(())
    }

    /// `tier`'s spend today (UTC).
    pub(crate) async fn spend(&self, tier: Tier) -> Result<Spend, StateError> {
        let row: Option<(f64, f64)> = sqlx::query_as(
            "SELECT spent_usd, reserved_usd FROM rf_tier_budget WHERE ns = $1 AND day = $2 AND tier = $3",
        )
        .bind(self.state.namespace())
        .bind(today())
        .bind(tier.as_str())
        .fetch_optional(self.state.pool())
        .await?;
        let (spent_usd, reserved_usd) = row.unwrap_or((0.0, 0.0));
        Ok(Spend { spent_usd, reserved_usd })
    }

    /// Sets `usd` aside under `tier`'s `cap`; `None` when the tier has reached its cap.
    pub(crate) async fn reserve(&self, tier: Tier, cap: f64, usd: f64) -> Result<Option<Reservation>, StateError> {
        let day = today();
        self.ensure_row(&day, tier).await?;
        let r = sqlx::query(
            "UPDATE rf_tier_budget SET reserved_usd = reserved_usd + $4
             WHERE ns = $1 AND day = $2 AND tier = $3 AND spent_usd + reserved_usd < $5",
        )
        .bind(self.state.namespace())
        .bind(&day)
        .bind(tier.as_str())
        .bind(usd)
        .bind(cap)
        .execute(self.state.pool())
        .await?;
        Ok((changed(&r) == 1).then_some(Reservation { tier, day, usd }))
    }

    /// Replaces the reservation with what was billed.
    pub(crate) async fn settle(&self, r: Reservation, billed_usd: f64) {
        self.apply(&r, billed_usd).await
    }

    /// Gives the reservation back: nothing was billed.
    pub(crate) async fn release(&self, r: Reservation) {
        self.apply(&r, 0.0).await
    }

    /// Adds spend that had no reservation (a tier without a cap still has its spend counted).
    pub(crate) async fn record(&self, tier: Tier, billed_usd: f64) {
        let r = Reservation { tier, day: today(), usd: 0.0 };
        if let Err(e) = self.ensure_row(&r.day, tier).await {
            warn!(tier = %tier, error = %e, "Could not record the tier's spend");
            return;
        }
        self.apply(&r, billed_usd).await
    }

    async fn apply(&self, r: &Reservation, billed_usd: f64) {
        let res = sqlx::query(
            "UPDATE rf_tier_budget SET reserved_usd = reserved_usd - $4, spent_usd = spent_usd + $5
             WHERE ns = $1 AND day = $2 AND tier = $3",
        )
        .bind(self.state.namespace())
        .bind(&r.day)
        .bind(r.tier.as_str())
        .bind(r.usd)
        .bind(billed_usd)
        .execute(self.state.pool())
        .await;
        // The bill itself is safe in the ledger; only the tier's running total is off until tomorrow.
        if let Err(e) = res {
            warn!(tier = %r.tier, billed_usd, error = %e, "Could not settle the tier's budget reservation");
        }
    }
}
