//! [`RequestRecorder`]: an HTTP endpoint that records what it is sent.

/// A recorded HTTP request.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request's path, without the query.
    pub path: String,
    /// Its `Authorization` header, if it sent one.
    pub authorization: Option<String>,
    /// Its body, as sent.
    pub body: Vec<u8>,
}

/// An HTTP server that answers 200 to everything and records what it got
/// (a stand-in for a CDN purge endpoint).
pub struct RequestRecorder {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<RecordedRequest>>>,
}

impl RequestRecorder {
    /// Starts it on a free port.
    pub async fn start() -> Self {
        use axum::{body::Bytes, extract::State, http::HeaderMap, http::Uri};
        type Log = std::sync::Arc<std::sync::Mutex<Vec<RecordedRequest>>>;
        async fn record(State(log): State<Log>, uri: Uri, headers: HeaderMap, body: Bytes) -> &'static str {
            let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
            log.lock().expect("log").push(RecordedRequest {
                path: uri.path().to_string(),
                authorization,
                body: body.to_vec(),
            });
            "ok"
        }
        let requests: Log = Default::default();
        let app = axum::Router::new().fallback(record).with_state(requests.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, requests }
    }

    /// `http://<addr>/purge`: the URL to configure as the CDN purge hook.
    pub fn url(&self) -> String {
        format!("http://{}/purge", self.addr)
    }

    /// Every request it received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().expect("log").clone()
    }
}
