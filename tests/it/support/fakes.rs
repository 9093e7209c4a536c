//! Recording fake upstreams on 127.0.0.1: ThreatFox, Graph and the managed-identity
//! endpoint, each a local HTTP server that answers through a closure and remembers what it
//! received and what it answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::TENANT;

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: String,
    /// When it arrived, for pacing checks.
    pub at: Instant,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// A gate that held replies wait behind until the test opens it.
#[derive(Debug, Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    /// A closed gate: replies held by it are not sent until [`Gate::open`].
    pub fn closed() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    /// Lets every held reply go, and every later one pass at once.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// What a fake answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
    /// Held until this gate opens, after the delay.
    pub gate: Option<Gate>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        Self {
            status,
            headers,
            body: body.to_string(),
            delay: Duration::ZERO,
            gate: None,
        }
    }

    pub fn text(status: u16, content_type: &str, body: &str) -> Self {
        let headers = vec![("content-type".to_owned(), content_type.to_owned())];
        Self {
            status,
            headers,
            body: body.to_owned(),
            delay: Duration::ZERO,
            gate: None,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Holds the reply until `gate` opens; a gate that never opens means no answer at all.
    pub fn held_by(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }
}

type Responder = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

/// What a fake has seen: the requests in arrival order, and the status it answered each
/// one with (by index), once it has.
#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    answered: BTreeMap<usize, u16>,
}

#[derive(Clone)]
struct FakeState {
    log: Arc<Mutex<Log>>,
    arrived: Arc<Notify>,
    respond: Arc<Responder>,
}

/// A local HTTP server that records every request and answers through a closure that sees
/// the request and how many came before it.
pub struct Fake {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    arrived: Arc<Notify>,
    _task: tokio::task::JoinHandle<()>,
}

impl Fake {
    pub async fn start(
        respond: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let arrived = Arc::new(Notify::new());
        let state = FakeState {
            log: log.clone(),
            arrived: arrived.clone(),
            respond: Arc::new(respond),
        };
        let app = Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            log,
            arrived,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().requests.clone()
    }

    /// The requests the fake has answered, with the status of each answer; a request still
    /// held, or whose answer is still delayed, is not among them.
    pub fn answered(&self) -> Vec<(Recorded, u16)> {
        let log = self.log.lock().unwrap();
        log.answered
            .iter()
            .map(|(index, status)| (log.requests[*index].clone(), *status))
            .collect()
    }

    /// Waits until the fake has received `count` requests in all.
    pub async fn received(&self, count: usize) {
        let waiting = async {
            loop {
                // Created before the check, so an arrival in between still wakes it.
                let arrival = self.arrived.notified();
                if self.log.lock().unwrap().requests.len() >= count {
                    return;
                }
                arrival.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .unwrap_or_else(|_| panic!("the fake did not receive {count} requests in 20 s"));
    }
}

async fn record(State(state): State<FakeState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let recorded = Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    };
    let (index, reply) = {
        let mut log = state.log.lock().unwrap();
        let index = log.requests.len();
        let reply = (state.respond)(&recorded, index);
        log.requests.push(recorded);
        (index, reply)
    };
    state.arrived.notify_waiters();

    tokio::time::sleep(reply.delay).await;
    if let Some(gate) = &reply.gate {
        gate.passed().await;
    }
    state
        .log
        .lock()
        .unwrap()
        .answered
        .insert(index, reply.status);

    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// A JWT-shaped token carrying `tid`, as Entra ID issues them (the signature is not checked
/// by anyone here).
pub fn fake_token(name: &str) -> String {
    let b64 = base64_url;
    let claims = json!({ "aud": "https://graph.microsoft.com", "tid": TENANT, "sub": name });
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    )
}

fn base64_url(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The managed-identity endpoint of App Service / Functions, answering with `token`.
pub async fn fake_identity(token: String) -> Fake {
    Fake::start(move |request, _| {
        let resource = request
            .uri
            .split("resource=")
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let expires_on = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        Reply::json(
            200,
            json!({
                "access_token": token,
                "expires_on": expires_on.to_string(),
                "token_type": "Bearer",
                "resource": resource,
            }),
        )
    })
    .await
}

/// Graph accepting every batch.
pub async fn fake_graph() -> Fake {
    Fake::start(|request, _| graph_accepts(request)).await
}

/// Graph's answer to a fully created batch: the indicators back, with ids.
pub fn graph_accepts(request: &Recorded) -> Reply {
    if request.method == "GET" {
        return Reply::json(200, json!({ "value": [] }));
    }
    let items = request.json()["value"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Reply::json(200, json!({ "value": items }))
}

/// The `externalId`s Graph received, in order.
pub fn graph_external_ids(graph: &Fake) -> Vec<String> {
    graph
        .requests()
        .iter()
        .filter(|r| r.uri.ends_with("/submitTiIndicators"))
        .flat_map(|r| r.json()["value"].as_array().cloned().unwrap_or_default())
        .map(|i| i["externalId"].as_str().unwrap().to_owned())
        .collect()
}

/// The ThreatFox ids of the indicators Graph received, in order.
pub fn graph_ids(graph: &Fake) -> Vec<u64> {
    graph_external_ids(graph)
        .iter()
        .map(|external| {
            external
                .strip_prefix("threatfox-")
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("unexpected externalId {external}"))
        })
        .collect()
}

/// How often Graph accepted each `externalId`: only batches it actually answered 200 count.
pub fn accepted_counts(graph: &Fake) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (request, status) in graph.answered() {
        if request.method == "POST" && status == 200 {
            for item in request.json()["value"].as_array().unwrap() {
                *counts
                    .entry(item["externalId"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    counts
}

/// Asserts that Graph accepted `expected` distinct indicators, each exactly once.
pub fn assert_accepted_once(graph: &Fake, expected: usize) {
    let counts = accepted_counts(graph);
    assert!(
        counts.len() == expected && counts.values().all(|c| *c == 1),
        "expected {expected} indicators accepted once each: {counts:?}"
    );
}

/// A TCP front for `target` that accepts and at once closes its first `drops` connections,
/// as a load balancer resetting connections would, and relays the rest.
pub async fn flaky_front(target: SocketAddr, drops: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            accepted += 1;
            if accepted <= drops {
                drop(inbound);
                continue;
            }
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    addr
}
