//! What happens to a failed message, decided in one pure function
//! ([`decide`]), and the outcomes a settled message is counted under
//! ([`Outcome`], the `outcome` label of `reelfleet_messages_total`).
//!
//! Retry delays come from a fixed set of steps ([`retry_steps`]), one delayed
//! retry queue per step (see [`crate::topology`]): attempt `n` waits
//! `base_delay_ms * 2^n`, capped at `max_delay_ms`. There is no jitter: a
//! queue-level TTL releases each message exactly one step after it was
//! parked, so retries stay spread the way their failures were; drawing a
//! neighbouring step at random would halve or double a delay, which is too
//! coarse to help and would make the schedule harder to read.

use crate::{
    error::{ErrorClass, StageError},
    settings::RetrySettings,
};
use std::{fmt, time::Duration};

/// Message header counting the timeouts of a message at its stage (a job at
/// one step): carried through retries, never through a dead letter, so a
/// replay starts again at zero.
pub const TIMEOUTS_HEADER: &str = "x-reelfleet-timeouts";

/// A timeout after `earlier` timeouts of the same message at the same stage:
/// the first is retried (a slow or busy node), the second is permanent
/// (timeouts follow the input's duration and resolution, so the input is
/// what does not fit). Any other error is returned as it is.
pub fn repeated_timeout(err: StageError, earlier: u32) -> StageError {
    if err.code == "timeout" && err.class == ErrorClass::Transient && earlier > 0 {
        let message = format!("{} (timeout {} of this job at this stage)", err.message, earlier.saturating_add(1));
        return StageError::permanent("timeout", message);
    }
    err
}

/// The value of [`TIMEOUTS_HEADER`] on the retry of a message that failed
/// with `err` after `earlier` timeouts.
pub fn timeouts_after(err: &StageError, earlier: u32) -> u32 {
    earlier.saturating_add(u32::from(err.code == "timeout"))
}

/// What the runtime does with a message its stage failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again after `step` (one of [`retry_steps`]), counting an attempt.
    Retry {
        /// The delay, which names the retry queue the message waits in.
        step: Duration,
    },
    /// Park in the retry queue of `step` without counting an attempt: a short
    /// wait (a job another worker holds until its lease runs out) that must not
    /// queue behind a long deferral.
    Wait {
        /// The shortest retry step at least as long as the wait.
        step: Duration,
    },
    /// Park for this long without counting an attempt (a tier paused by its
    /// budget), longer than any retry step: the deferral queue.
    Defer(Duration),
    /// Give up: publish to the dead-letter queue.
    DeadLetter {
        /// Whether the job's manifest is marked failed; never for a message
        /// whose signature did not verify, which must not touch the job it names.
        mark_failed: bool,
    },
}

/// The decision for a message that failed with `err` after `attempt` earlier
/// failed attempts: permanent errors dead-letter at once, deferrals park
/// (in a retry step's queue when one is long enough, in the deferral queue
/// otherwise), transient errors retry until `retry.max_attempts` attempts in all.
pub fn decide(err: &StageError, attempt: u32, retry: &RetrySettings) -> Next {
    let give_up = Next::DeadLetter { mark_failed: err.code != "bad_signature" };
    match (err.class, err.defer) {
        (ErrorClass::Permanent, _) => give_up,
        (ErrorClass::Transient, Some(delay)) => match retry_steps(retry).into_iter().find(|s| *s >= delay) {
            Some(step) => Next::Wait { step },
            None => Next::Defer(delay),
        },
        (ErrorClass::Transient, None) if attempt.saturating_add(1) < retry.max_attempts => {
            Next::Retry { step: retry_step(attempt, retry) }
        }
        (ErrorClass::Transient, None) => give_up,
    }
}

/// Every retry delay of `retry`, shortest first: `base`, `2 base`, `4 base`,
/// ... below `max`, then `max` (base at least 1 ms, max at least base).
pub fn retry_steps(retry: &RetrySettings) -> Vec<Duration> {
    let base = retry.base_delay_ms.max(1);
    let max = retry.max_delay_ms.max(base);
    let mut steps = Vec::new();
    let mut ms = base;
    while ms < max {
        steps.push(Duration::from_millis(ms));
        ms = ms.saturating_mul(2);
    }
    steps.push(Duration::from_millis(max));
    steps
}

/// The delay before retry number `attempt + 1`: `base * 2^attempt` capped at
/// `max`, rounded up to the nearest of [`retry_steps`].
pub fn retry_step(attempt: u32, retry: &RetrySettings) -> Duration {
    let steps = retry_steps(retry);
    let base = retry.base_delay_ms.max(1);
    let wanted = Duration::from_millis(base.saturating_mul(1u64.checked_shl(attempt).unwrap_or(u64::MAX)));
    let longest = *steps.last().expect("retry_steps is never empty");
    steps.into_iter().find(|s| *s >= wanted).unwrap_or(longest)
}

/// How a delivered message was settled; its label in `reelfleet_messages_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Handled; the next stage's messages confirmed; acked.
    Ok,
    /// Parked in a retry queue; acked.
    Retry,
    /// Nacked back to its queue (a publish failed).
    Requeue,
    /// Published to the dead-letter queue; acked.
    DeadLetter,
    /// Parked in the deferral queue; acked.
    Deferred,
    /// Its follow-up was published but the ack failed; the broker redelivers it.
    AckFailed,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Outcome; 6] =
        [Outcome::Ok, Outcome::Retry, Outcome::Requeue, Outcome::DeadLetter, Outcome::Deferred, Outcome::AckFailed];

    /// The `outcome` label of `reelfleet_messages_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::Requeue => "requeue",
            Outcome::DeadLetter => "dead_letter",
            Outcome::Deferred => "deferred",
            Outcome::AckFailed => "ack_failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_attempts: u32, base_delay_ms: u64, max_delay_ms: u64) -> RetrySettings {
        RetrySettings { max_attempts, base_delay_ms, max_delay_ms }
    }

    #[test]
    fn every_failure_has_one_next_step() {
        let retry = settings(3, 1_000, 60_000);
        let hour = Duration::from_secs(3600);
        let s = Duration::from_secs;
        let transient = StageError::transient("provider", "HTTP 503");
        let permanent = StageError::permanent("bad_input", "not a video");
        let forged = StageError::permanent("bad_signature", "signature mismatch");
        let timeout = StageError::transient("timeout", "stage took longer than 900 s");
        let paused = StageError::deferred("budget", "tier spent its budget", hour);
        let held = StageError::deferred("claimed", "another worker holds the job", s(25));
        let mut permanent_with_delay = StageError::permanent("bad_input", "odd");
        permanent_with_delay.defer = Some(hour);
        let dead = Next::DeadLetter { mark_failed: true };
        let table: Vec<(&str, &StageError, u32, Next)> = vec![
            ("transient, first failure", &transient, 0, Next::Retry { step: s(1) }),
            ("transient, second failure", &transient, 1, Next::Retry { step: s(2) }),
            ("transient at the limit", &transient, 2, dead),
            ("transient past the limit", &transient, 9, dead),
            ("transient with a forged attempt count", &transient, u32::MAX, dead),
            ("timeout is transient", &timeout, 0, Next::Retry { step: s(1) }),
            ("permanent, first failure", &permanent, 0, dead),
            ("permanent, later failure", &permanent, 1, dead),
            ("bad signature leaves the manifest alone", &forged, 0, Next::DeadLetter { mark_failed: false }),
            ("deferred does not count an attempt", &paused, 0, Next::Defer(hour)),
            ("deferred at the limit still parks", &paused, 2, Next::Defer(hour)),
            ("a short wait parks in the retry step that covers it", &held, 0, Next::Wait { step: s(32) }),
            ("a short wait does not count an attempt either", &held, 4, Next::Wait { step: s(32) }),
            ("permanent wins over a delay", &permanent_with_delay, 0, dead),
        ];
        for (case, err, attempt, want) in table {
            assert_eq!(decide(err, attempt, &retry), want, "{case}");
        }
        assert_eq!(decide(&transient, 0, &settings(1, 1_000, 60_000)), dead, "one attempt in all: no retry");
    }

    #[test]
    fn a_second_timeout_of_a_job_at_a_stage_is_permanent() {
        let retry = settings(5, 1_000, 60_000);
        let timeout = StageError::transient("timeout", "ffmpeg did not finish within 200 s");
        let other = StageError::transient("storage", "HTTP 503");
        // (error, attempt, earlier timeouts, next, timeouts carried to the retry)
        let table: Vec<(&StageError, u32, u32, Next, u32)> = vec![
            (&timeout, 0, 0, Next::Retry { step: Duration::from_secs(1) }, 1),
            (&timeout, 1, 1, Next::DeadLetter { mark_failed: true }, 2),
            // A timeout after a failure of another kind is still the first.
            (&timeout, 1, 0, Next::Retry { step: Duration::from_secs(2) }, 1),
            (&other, 1, 1, Next::Retry { step: Duration::from_secs(2) }, 1),
        ];
        for (err, attempt, earlier, want, carried) in table {
            let decided = repeated_timeout(err.clone(), earlier);
            assert_eq!(decide(&decided, attempt, &retry), want, "{err} after {earlier} timeouts");
            assert_eq!(timeouts_after(err, earlier), carried, "{err}");
        }
        let second = repeated_timeout(timeout, 1);
        assert_eq!((second.class, second.code), (ErrorClass::Permanent, "timeout"));
        assert!(second.message.ends_with("(timeout 2 of this job at this stage)"), "{}", second.message);
    }

    #[test]
    fn retry_steps_double_up_to_the_cap() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect::<Vec<_>>();
        assert_eq!(retry_steps(&settings(5, 1_000, 60_000)), ms(&[1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000]));
        assert_eq!(retry_steps(&settings(3, 200, 1_000)), ms(&[200, 400, 800, 1_000]));
        assert_eq!(retry_steps(&settings(3, 500, 500)), ms(&[500]));
        assert_eq!(retry_steps(&settings(3, 500, 100)), ms(&[500]), "max below base");
        assert_eq!(retry_steps(&settings(3, 0, 0)), ms(&[1]), "zero base");
    }

    #[test]
    fn attempt_n_waits_base_times_two_to_the_n_capped() {
        let r = settings(10, 1_000, 60_000);
        let got: Vec<u64> = (0..9).map(|n| retry_step(n, &r).as_millis() as u64).collect();
        assert_eq!(got, [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]);
        assert_eq!(retry_step(200, &r), Duration::from_secs(60), "no overflow");
        for n in 0..70 {
            assert!(retry_steps(&r).contains(&retry_step(n, &r)));
        }
    }

    #[test]
    fn outcome_labels_stay_the_same() {
        let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels, ["ok", "retry", "requeue", "dead_letter", "deferred", "ack_failed"]);
    }
}
