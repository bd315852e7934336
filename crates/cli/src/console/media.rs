//! `/media/{job_id}/{path}`: an output of a job (`jobs/<job_id>/<path>` in
//! the work bucket, listed among the manifest's outputs; nothing else)
//! streamed from S3 as it is read, honouring a single `Range` with 206 and
//! `Content-Range` through a ranged GetObject: never a whole file in memory.

use super::{jobs::valid_job_id, layout::Failure, stream_body, Console};
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

/// A byte range as `Range: bytes=...` asks for it, before the size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    /// `a-` or `a-b`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Last(u64),
}

/// A single range of a `Range` header; `None` for anything else (several
/// ranges, other units), which is answered with the whole object.
fn parse_range(value: &str) -> Option<Wanted> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    match (a.trim(), b.trim()) {
        ("", n) => n.parse().ok().map(Wanted::Last),
        (a, "") => a.parse().ok().map(|a| Wanted::From(a, None)),
        (a, b) => {
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some(Wanted::From(a, Some(b)))
        }
    }
}

/// The inclusive byte range of an object of `size` bytes; `None` when unsatisfiable.
fn resolve(w: Wanted, size: u64) -> Option<(u64, u64)> {
    match w {
        Wanted::From(a, _) if a >= size => None,
        Wanted::From(a, b) => Some((a, b.unwrap_or(u64::MAX).min(size - 1))),
        Wanted::Last(0) => None,
        Wanted::Last(_) if size == 0 => None,
        Wanted::Last(n) => Some((size - n.min(size), size - 1)),
    }
}

pub(super) async fn serve(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((job, path)): Path<(String, String)>,
) -> Response {
    if console.user(&headers).is_none() {
        return Failure::new(StatusCode::UNAUTHORIZED, "Log in first.").into_response();
    }
    if !valid_job_id(&job) {
        return Failure::new(StatusCode::NOT_FOUND, "No such job.").into_response();
    }
    let key = format!("jobs/{job}/{path}");
    let manifest = match console.0.manifests.load(&job).await {
        Ok(m) => m,
        Err(e) => return Failure::from(anyhow::Error::from(e)).into_response(),
    };
    let Some(output) = manifest.as_ref().and_then(|m| m.outputs.iter().find(|o| o.key == key)) else {
        return Failure::new(StatusCode::NOT_FOUND, "Not an output of this job.").into_response();
    };
    let bucket = &console.settings().s3.work_bucket;
    let size = match console.0.storage.head(bucket, &key).await {
        Ok(Some(info)) => info.size,
        Ok(None) => {
            return Failure::new(StatusCode::NOT_FOUND, "The output is not in the work bucket.").into_response()
        }
        Err(e) => return Failure::from(anyhow::Error::from(e)).into_response(),
    };
    let wanted = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
    let range = match wanted.map(|w| resolve(w, size)) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let object =
        match console.0.storage.get_stream(bucket, &key, range.map(|(a, b)| format!("bytes={a}-{b}")).as_deref()).await
        {
            Ok(o) => o,
            Err(e) => return Failure::from(anyhow::Error::from(e)).into_response(),
        };
    let length = range.map(|(a, b)| b - a + 1).unwrap_or(size);
    if object.content_length != length {
        // The object changed between the HEAD and the GET: better no answer than a wrong one.
        return Failure::new(StatusCode::CONFLICT, "The output changed while it was read: try again.").into_response();
    }
    let content_type = if output.content_type.is_empty() {
        object.content_type.clone().unwrap_or_else(|| "application/octet-stream".into())
    } else {
        output.content_type.clone()
    };
    let mut response = stream_body(object).into_response();
    *response.status_mut() = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let h = response.headers_mut();
    let mut set = |name: header::HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_LENGTH, length.to_string());
    set(header::ACCEPT_RANGES, "bytes".into());
    set(header::CACHE_CONTROL, "private, max-age=300".into());
    if let Some((a, b)) = range {
        set(header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_as_rfc_9110_says() {
        let r = |s: &str, size: u64| parse_range(s).map(|w| resolve(w, size));
        assert_eq!(r("bytes=0-99", 1000), Some(Some((0, 99))));
        assert_eq!(r("bytes=900-", 1000), Some(Some((900, 999))));
        assert_eq!(r("bytes=900-5000", 1000), Some(Some((900, 999))));
        assert_eq!(r("bytes=-100", 1000), Some(Some((900, 999))));
        assert_eq!(r("bytes=-5000", 1000), Some(Some((0, 999))));
        assert_eq!(r("bytes=1000-", 1000), Some(None), "starts past the end: 416");
        assert_eq!(r("bytes=-0", 1000), Some(None));
        assert_eq!(r("bytes=5-2", 1000), None, "malformed: the whole object");
        assert_eq!(r("bytes=0-1,5-6", 1000), None, "several ranges: the whole object");
        assert_eq!(r("items=0-1", 1000), None);
    }
}
