//! Tier assignment: from priority, requested quality and measured complexity,
//! with thresholds from the settings, and a sentence saying why.

use crate::{
    envelope::{Quality, Tier},
    settings::PreprocessSettings,
};

/// The tier of a job and the reason for it.
pub fn assign_tier(
    priority: u8,
    quality: Option<Quality>,
    complexity: Option<f64>,
    s: &PreprocessSettings,
) -> (Tier, String) {
    if priority >= 5 {
        return (Tier::Critical, format!("priority {priority} >= 5"));
    }
    if priority == 4 {
        return (Tier::High, "priority 4".into());
    }
    match quality {
        Some(Quality::K4) => return (Tier::High, "requested quality 4k".into()),
        Some(Quality::P720) => return (Tier::Low, "requested quality 720p".into()),
        _ => {}
    }
    match complexity {
        Some(c) if c < s.complexity_low_below => (Tier::Low, format!("complexity {c:.3} < {}", s.complexity_low_below)),
        Some(c) if c >= s.complexity_high_from => {
            (Tier::High, format!("complexity {c:.3} >= {}", s.complexity_high_from))
        }
        Some(c) => (
            Tier::Medium,
            format!("complexity {c:.3} between {} and {}", s.complexity_low_below, s.complexity_high_from),
        ),
        None => (Tier::Medium, "no complexity measured; default tier".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_in_order() {
        let s = PreprocessSettings::default();
        assert_eq!(assign_tier(5, Some(Quality::P720), Some(0.0), &s).0, Tier::Critical);
        assert_eq!(assign_tier(4, None, Some(0.0), &s).0, Tier::High);
        assert_eq!(assign_tier(3, Some(Quality::K4), Some(0.0), &s).0, Tier::High);
        assert_eq!(assign_tier(3, Some(Quality::P720), Some(0.9), &s).0, Tier::Low);
        assert_eq!(assign_tier(3, None, Some(0.1), &s).0, Tier::Low);
        assert_eq!(assign_tier(3, None, Some(0.45), &s).0, Tier::High);
        assert_eq!(assign_tier(3, Some(Quality::P1080), Some(0.4), &s).0, Tier::Medium);
        assert_eq!(assign_tier(1, None, Some(0.7), &s).0, Tier::High);
        assert_eq!(assign_tier(3, None, None, &s).0, Tier::Medium);
    }
}
