//! The fake upstreams, each on its own 127.0.0.1 port: ThreatFox serving a synthetic
//! feed, the Functions managed-identity endpoint, and a Graph `tiIndicators` sink with a
//! set latency and an optional sliding-window rate limit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;

/// The ThreatFox key the fake expects.
pub const AUTH_KEY: &str = "bench-auth-key";
/// The secret the fake identity endpoint expects in `x-identity-header`.
pub const IDENTITY_HEADER: &str = "bench-identity-secret";
/// The access token the fake identity endpoint hands out and the fake sink expects.
pub const TOKEN: &str = "bench-access-token";

/// The length of the sink's rate-limit window.
const WINDOW: Duration = Duration::from_secs(60);

/// The base URLs of the running fakes, and their shared state.
pub struct Fakes {
    /// `THREATFOX_API_URL`.
    pub threatfox_url: String,
    /// `IDENTITY_ENDPOINT`.
    pub identity_endpoint: String,
    /// `GRAPH_API_URL`.
    pub graph_url: String,
    /// `SENTINEL_API_URL`: the same fake sink, answering the Upload API's path.
    pub sentinel_url: String,
    /// What the fake ThreatFox serves, and how often it was asked.
    pub feed: Arc<Mutex<FeedState>>,
    /// The sink's settings and counters.
    pub sink: Arc<Mutex<SinkState>>,
    /// Tokens handed out.
    pub tokens: Arc<Mutex<u64>>,
}

/// The fake ThreatFox.
#[derive(Default)]
pub struct FeedState {
    /// The `get_iocs` response body.
    pub body: Bytes,
    /// `get_iocs` requests answered.
    pub requests: u64,
}

/// The fake sink: what it enforces and what it saw since the last reset.
#[derive(Default)]
pub struct SinkState {
    /// How long each request takes to answer.
    pub latency: Duration,
    /// Requests allowed in any 60 s window; `None` for no limit.
    pub limit: Option<u32>,
    /// Arrival times of accepted requests in the current window.
    window: VecDeque<Instant>,
    /// Batch requests accepted.
    pub requests: u64,
    /// Indicators carried by accepted batch requests.
    pub items: u64,
    /// Requests answered 429.
    pub throttled: u64,
    /// Single-indicator creates accepted (the Logic App way).
    pub single_creates: u64,
    /// When the first accepted request arrived.
    pub first_arrival: Option<Instant>,
    /// When the last answer left.
    pub last_answer: Option<Instant>,
    /// Time from each answer to the client's next request, summed: the client's own share.
    pub client_gaps: Duration,
    /// Time from each accepted request's arrival to its answer, summed: the sink's share.
    pub served: Duration,
}

impl SinkState {
    /// Sets the latency and limit for the next run and zeroes the counters.
    pub fn reset(&mut self, latency: Duration, limit: Option<u32>) {
        *self = SinkState {
            latency,
            limit,
            ..SinkState::default()
        };
    }

    /// Admits a request into the window, or says how long until it would be admitted.
    fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.window.pop_front();
        }
        if let (Some(limit), Some(oldest)) = (self.limit, self.window.front())
            && self.window.len() >= limit as usize
        {
            self.throttled += 1;
            return Err(WINDOW.saturating_sub(now.duration_since(*oldest)));
        }
        self.window.push_back(now);
        Ok(())
    }
}

/// Locks a fake's state; a poisoned lock only means a handler panicked, and the counters
/// are still worth reading.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the three fakes on the current tokio runtime.
pub async fn start() -> anyhow::Result<Fakes> {
    let feed = Arc::new(Mutex::new(FeedState::default()));
    let sink = Arc::new(Mutex::new(SinkState::default()));
    let tokens = Arc::new(Mutex::new(0));

    let threatfox = Router::new()
        .route("/api/v1/", post(threatfox))
        .with_state(feed.clone());
    let identity = Router::new()
        .route("/msi/token", get(identity))
        .with_state(tokens.clone());
    let graph = Router::new()
        .route(
            "/beta/security/tiIndicators/submitTiIndicators",
            post(submit_batch),
        )
        .route("/beta/security/tiIndicators", post(create_one))
        .route(
            "/workspaces/{workspace}/threat-intelligence-stix-objects:upload",
            post(upload_stix),
        )
        .with_state(sink.clone());

    let sink_base = spawn_server(graph).await?;
    Ok(Fakes {
        threatfox_url: format!("{}/api/v1/", spawn_server(threatfox).await?),
        identity_endpoint: format!("{}/msi/token", spawn_server(identity).await?),
        graph_url: format!("{sink_base}/beta"),
        sentinel_url: sink_base,
        feed,
        sink,
        tokens,
    })
}

async fn spawn_server(router: Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{address}"))
}

async fn threatfox(State(feed): State<Arc<Mutex<FeedState>>>, headers: HeaderMap) -> Response {
    if headers.get("auth-key").and_then(|v| v.to_str().ok()) != Some(AUTH_KEY) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Unauthorized"})),
        )
            .into_response();
    }
    let body = {
        let mut feed = lock(&feed);
        feed.requests += 1;
        feed.body.clone()
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn identity(State(tokens): State<Arc<Mutex<u64>>>, headers: HeaderMap) -> Response {
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(IDENTITY_HEADER)
    {
        return (StatusCode::BAD_REQUEST, "missing x-identity-header").into_response();
    }
    *lock(&tokens) += 1;
    let expires_on = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or_default();
    Json(json!({
        "access_token": TOKEN,
        "expires_on": expires_on.to_string(),
        "token_type": "Bearer",
        "resource": "https://graph.microsoft.com",
    }))
    .into_response()
}

#[derive(Deserialize)]
struct Batch {
    value: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
struct StixBatch {
    stixobjects: Vec<IgnoredAny>,
}

/// `submitTiIndicators`: counts the batch, waits the latency, answers 200.
async fn submit_batch(
    State(sink): State<Arc<Mutex<SinkState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let items = serde_json::from_slice::<Batch>(&body).map(|b| b.value.len());
    serve_batch(
        &sink,
        &headers,
        items,
        Json(json!({ "value": [] })).into_response(),
    )
    .await
}

/// The Sentinel Upload API: counts the objects, waits the latency, answers 200 with an
/// empty body (every object accepted).
async fn upload_stix(
    State(sink): State<Arc<Mutex<SinkState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let items = serde_json::from_slice::<StixBatch>(&body).map(|b| b.stixobjects.len());
    serve_batch(&sink, &headers, items, StatusCode::OK.into_response()).await
}

/// Admits a batch under the limit, counts its items, waits the latency, then answers.
async fn serve_batch(
    sink: &Arc<Mutex<SinkState>>,
    headers: &HeaderMap,
    items: serde_json::Result<usize>,
    answer: Response,
) -> Response {
    let (latency, arrived) = match admit(sink, headers) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let items = match items {
        Ok(items) => items as u64,
        Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    {
        let mut sink = lock(sink);
        sink.requests += 1;
        sink.items += items;
    }
    tokio::time::sleep(latency).await;
    answered(sink, arrived);
    answer
}

/// The single create the Logic App used: one indicator, 201.
async fn create_one(State(sink): State<Arc<Mutex<SinkState>>>, headers: HeaderMap) -> Response {
    let (latency, arrived) = match admit(&sink, &headers) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    lock(&sink).single_creates += 1;
    tokio::time::sleep(latency).await;
    answered(&sink, arrived);
    (StatusCode::CREATED, Json(json!({}))).into_response()
}

/// Why the sink refused a request.
enum Refusal {
    BadToken,
    Throttled { wait: Duration },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::BadToken => (StatusCode::UNAUTHORIZED, "bad token").into_response(),
            Refusal::Throttled { wait } => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let body = json!({"error": {"code": "TooManyRequests", "message": "throttled"}});
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, seconds.to_string())],
                    Json(body),
                )
                    .into_response()
            }
        }
    }
}

/// Checks the token and the rate limit; gives the latency to wait, or the refusal.
fn admit(sink: &Mutex<SinkState>, headers: &HeaderMap) -> Result<(Duration, Instant), Refusal> {
    let bearer = format!("Bearer {TOKEN}");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(bearer.as_str())
    {
        return Err(Refusal::BadToken);
    }
    let now = Instant::now();
    let mut sink = lock(sink);
    sink.admit(now)
        .map_err(|wait| Refusal::Throttled { wait })?;
    if let Some(done) = sink.last_answer {
        sink.client_gaps += now.duration_since(done);
    }
    sink.first_arrival.get_or_insert(now);
    Ok((sink.latency, now))
}

/// Notes when an answer leaves, so that the time the client takes between an answer and
/// its next request can be summed.
fn answered(sink: &Mutex<SinkState>, arrived: Instant) {
    let now = Instant::now();
    let mut sink = lock(sink);
    sink.last_answer = Some(now);
    sink.served += now.duration_since(arrived);
}
