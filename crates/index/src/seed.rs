//! Realistic rows in bulk (`reelfleet index seed --jobs N`): the mix of a
//! busy day's fleet, so a benchmark's filters select what they would in
//! production (most jobs completed on the cheap tiers, a few percent
//! failed, some in flight, costs by tier, keys by camera and date).

use crate::row::JobRow;
use rand::{rngs::StdRng, Rng, SeedableRng};
use reelfleet_core::events::OutputRef;

/// Tiers, their models, their share of jobs and a typical cost.
const TIERS: [(&str, &str, f64, f64); 4] = [
    ("low", "deepseek-v3.2", 0.55, 0.0003),
    ("medium", "gemini-2.5-flash", 0.30, 0.0005),
    ("high", "gpt-4.1", 0.12, 0.0026),
    ("critical", "claude-sonnet-4.5", 0.03, 0.0120),
];

/// `n` rows, created over the `days` before `now_ms`, the same for the same `seed`.
pub fn rows(n: usize, now_ms: i64, days: i64, seed: u64) -> Vec<JobRow> {
    let mut rng = StdRng::seed_from_u64(seed);
    let span = days.max(1) * 86_400_000;
    (0..n)
        .map(|i| {
            let created_ms = now_ms - rng.random_range(0..span);
            let pick: f64 = rng.random();
            let mut acc = 0.0;
            let (tier, model, _, cost) = *TIERS
                .iter()
                .find(|t| {
                    acc += t.2;
                    pick < acc
                })
                .unwrap_or(&TIERS[0]);
            let roll: f64 = rng.random();
            let status = match roll {
                r if r < 0.85 => "completed",
                r if r < 0.90 => "failed",
                r if r < 0.93 => "preprocess",
                r if r < 0.96 => "inference",
                _ => "postprocess",
            };
            let generate = rng.random_bool(0.1);
            let job_id = format!("{:032x}", rng.random::<u128>());
            let day = chrono::DateTime::from_timestamp_millis(created_ms).unwrap_or_default().format("%Y/%m/%d");
            let key = if generate {
                format!("prompts/{day}/campaign-{:03}/prompt-{i}.json", rng.random_range(0..200))
            } else {
                format!("cameras/cam-{:04}/{day}/clip-{i}.mp4", rng.random_range(0..2000))
            };
            let done = matches!(status, "completed" | "failed");
            let ms = |rng: &mut StdRng, lo: i64, hi: i64| Some(rng.random_range(lo..hi));
            let mut row = JobRow {
                job_id: job_id.clone(),
                status: status.to_string(),
                kind: Some(if generate { "generate" } else { "analyze" }.to_string()),
                tier: Some(tier.to_string()),
                model: (status != "preprocess").then(|| model.to_string()),
                bucket: Some("uploads".into()),
                key: Some(key),
                stage_ms: [ms(&mut rng, 100, 4_000), ms(&mut rng, 2_000, 40_000), None, None],
                cost_usd: if status == "preprocess" { 0.0 } else { cost * rng.random_range(0.5..2.0) },
                created_ms,
                updated_ms: created_ms + 90_000,
                status_ms: created_ms + 90_000,
                summary_ms: created_ms + 90_000,
                ..Default::default()
            };
            if status != "preprocess" {
                row.stage_ms[2] = ms(&mut rng, 300, 6_000);
            }
            if done {
                row.stage_ms[3] = ms(&mut rng, 10_000, 60_000);
            }
            if status == "completed" {
                row.outputs = ["h264_720p", "h265_720p", "poster", "sprite"]
                    .iter()
                    .map(|name| OutputRef { name: name.to_string(), key: format!("jobs/{job_id}/postprocess/{name}") })
                    .collect();
            }
            if status == "failed" {
                let (stage, class, code, message) = match rng.random_range(0..3) {
                    0 => ("ingest", "permanent", "bad_input", "ffprobe: moov atom not found"),
                    1 => ("inference", "transient", "provider", "provider answered 503 after 3 attempts"),
                    _ => ("postprocess", "permanent", "quality", "h264_720p below the quality floor"),
                };
                row.error_stage = Some(stage.into());
                row.error_class = Some(class.into());
                row.error_code = Some(code.into());
                row.error_message = Some(message.into());
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mix_is_a_busy_fleets() {
        let rows = super::rows(10_000, 1_800_000_000_000, 7, 1);
        let share = |f: &dyn Fn(&crate::JobRow) -> bool| rows.iter().filter(|r| f(r)).count() as f64 / 1e4;
        assert!((0.8..0.9).contains(&share(&|r| r.status == "completed")));
        assert!((0.03..0.07).contains(&share(&|r| r.status == "failed")));
        assert!((0.5..0.6).contains(&share(&|r| r.tier.as_deref() == Some("low"))));
        assert_eq!(rows, super::rows(10_000, 1_800_000_000_000, 7, 1), "the same seed, the same rows");
    }
}
