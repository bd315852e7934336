//! Request packing: several analyze jobs' keyframes in one chat request,
//! within a model's image and context limits, with shared instructions sent
//! once and an answer format that maps each result back to its job; and the
//! exact split of one request's billed tokens over its jobs.

use std::collections::HashMap;

/// The instructions every analyze request starts with.
pub const INSTRUCTIONS: &str = "You are a video analyst. For each job below you get its keyframes. \
Answer with one JSON object: {\"results\": [{\"job_id\": string, \"summary\": string, \"tags\": [string], \"safety\": string}]}, \
one entry per job, using the job ids given.";

/// What packing needs to know of a job.
#[derive(Debug, Clone)]
pub struct PackItem {
    /// The job the item stands for.
    pub job_id: String,
    /// Keyframe images it sends (counted against the model's image limit).
    pub images: usize,
    /// Characters of the job's own text.
    pub text_chars: usize,
}

/// Groups items (by index) into requests of at most `max_images` images and
/// about `max_tokens` input tokens each; an item too large alone still gets
/// a request of its own.
pub fn pack(items: &[PackItem], max_images: usize, max_tokens: u64, tokens_per_image: u64) -> Vec<Vec<usize>> {
    let base = (INSTRUCTIONS.len() as u64).div_ceil(4);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let (mut images, mut tokens) = (0usize, base);
    for (i, item) in items.iter().enumerate() {
        let t = item.images as u64 * tokens_per_image + (item.text_chars as u64).div_ceil(4);
        let fits = images + item.images <= max_images.max(1) && tokens + t <= max_tokens;
        if groups.is_empty() || !fits {
            groups.push(Vec::new());
            (images, tokens) = (0, base);
        }
        groups.last_mut().expect("a group").push(i);
        images += item.images;
        tokens += t;
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// Splits `total` over `weights` in proportion, exactly (largest remainder);
/// all-zero weights split evenly.
pub fn allocate(total: u64, weights: &[u64]) -> Vec<u64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let even = weights.iter().all(|w| *w == 0);
    let weights: Vec<u128> = weights.iter().map(|w| if even { 1 } else { u128::from(*w) }).collect();
    let sum: u128 = weights.iter().sum();
    let mut out: Vec<u64> = weights.iter().map(|w| (u128::from(total) * w / sum) as u64).collect();
    let mut rest = total - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(u128::from(total) * weights[i] % sum));
    for i in order {
        if rest == 0 {
            break;
        }
        out[i] += 1;
        rest -= 1;
    }
    out
}

/// Results by job id from a model's answer: `{"results": [...]}` (or a bare
/// object for a single job).
pub fn parse_results(content: &str, job_ids: &[String]) -> HashMap<String, serde_json::Value> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(content) else { return HashMap::new() };
    let mut out = HashMap::new();
    if let Some(list) = v.get("results").and_then(|r| r.as_array()) {
        let mut named_twice = Vec::new();
        for r in list {
            // A job not in the request is ignored: an answer may never land on another job.
            let Some(id) = r.get("job_id").and_then(|j| j.as_str()).filter(|id| job_ids.iter().any(|j| j == id)) else {
                continue;
            };
            if !r.get("summary").is_some_and(|s| s.is_string()) {
                continue;
            }
            if out.insert(id.to_string(), r.clone()).is_some() {
                named_twice.push(id.to_string());
            }
        }
        // Two answers for one job: neither can be trusted.
        for id in named_twice {
            out.remove(&id);
        }
    } else if job_ids.len() == 1 && v.get("summary").is_some_and(|s| s.is_string()) {
        out.insert(job_ids[0].clone(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_for_strangers_or_twice_for_one_job_are_refused() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let content = r#"{"results":[
            {"job_id":"a","summary":"first"},{"job_id":"a","summary":"second"},
            {"job_id":"b","summary":"ok"},{"job_id":"zz","summary":"not asked"},{"job_id":"b2"}]}"#;
        let got = parse_results(content, &ids);
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(parse_results("not json", &ids).is_empty());
        assert_eq!(parse_results(r#"{"summary":"solo"}"#, &ids[..1]).len(), 1);
    }

    #[test]
    fn allocation_is_exact_and_proportional() {
        assert_eq!(allocate(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(allocate(1000, &[3, 1]), vec![750, 250]);
        assert_eq!(allocate(7, &[0, 0]), vec![4, 3]);
        for (total, w) in [(12345u64, vec![5u64, 7, 11, 13]), (1, vec![9, 9, 9]), (0, vec![1, 2])] {
            assert_eq!(allocate(total, &w).iter().sum::<u64>(), total);
        }
    }

    #[test]
    fn packing_respects_images_and_tokens() {
        let items: Vec<PackItem> =
            (0..10).map(|i| PackItem { job_id: format!("j{i}"), images: 4, text_chars: 40 }).collect();
        let g = pack(&items, 16, 1_000_000, 258);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let g = pack(&items, 1000, 3000, 258);
        assert!(g.iter().all(|g| g.len() <= 2), "{g:?}");
        let big = vec![PackItem { job_id: "x".into(), images: 100, text_chars: 0 }];
        assert_eq!(pack(&big, 16, 1000, 258), vec![vec![0]]);
    }

    #[test]
    fn results_map_back_to_jobs() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let r = parse_results(
            r#"{"results":[{"job_id":"a","summary":"x","tags":[]},{"job_id":"zz","summary":"y"},{"job_id":"b"}]}"#,
            &ids,
        );
        assert!(r.contains_key("a") && !r.contains_key("b") && r.len() == 1);
        assert!(parse_results("not json", &ids).is_empty());
    }
}
