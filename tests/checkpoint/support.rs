//! Test helpers: temporary directories, fake upstreams on 127.0.0.1:0 (ThreatFox, Graph and
//! the managed identity endpoint), and a runner for the `threatfox-sentinel` binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/<prefix>-<uuid>`.
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the fake upstreams serve and what they were sent.
#[derive(Default)]
struct Recorded {
    /// The ids the fake ThreatFox serves.
    feed_ids: Vec<u64>,
    /// The `days` of each `get_iocs` request.
    days_asked: Vec<u64>,
    /// The `externalId` of each indicator Graph received.
    delivered: Vec<String>,
}

struct Shared {
    recorded: Mutex<Recorded>,
    /// Graph answers only while this is true.
    graph_open: watch::Sender<bool>,
    /// Woken when a Graph request arrives.
    graph_called: Notify,
}

/// ThreatFox, Graph and the managed identity endpoint, faked on one local port.
pub struct Upstreams {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Upstreams {
    /// Starts the fakes, serving a feed of `feed_ids`.
    pub async fn start(feed_ids: impl IntoIterator<Item = u64>) -> Self {
        let (graph_open, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            recorded: Mutex::new(Recorded {
                feed_ids: feed_ids.into_iter().collect(),
                ..Default::default()
            }),
            graph_open,
            graph_called: Notify::new(),
        });
        let router = Router::new()
            .route("/threatfox/", post(threatfox))
            .route(
                "/graph/security/tiIndicators/submitTiIndicators",
                post(graph),
            )
            .route("/identity", get(identity))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake upstreams");
        let addr = listener.local_addr().expect("a local address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Upstreams { addr, shared }
    }

    /// Replaces the feed.
    pub fn serve_feed(&self, ids: impl IntoIterator<Item = u64>) {
        self.shared.recorded.lock().unwrap().feed_ids = ids.into_iter().collect();
    }

    /// Makes Graph hold every request until [`Upstreams::open_graph`].
    pub fn hold_graph(&self) {
        self.shared.graph_open.send_replace(false);
    }

    /// Lets Graph answer again, held requests included.
    pub fn open_graph(&self) {
        self.shared.graph_open.send_replace(true);
    }

    /// Waits for the next Graph request.
    pub async fn graph_called(&self) {
        self.shared.graph_called.notified().await;
    }

    /// The `days` of every ThreatFox request so far.
    pub fn days_asked(&self) -> Vec<u64> {
        self.shared.recorded.lock().unwrap().days_asked.clone()
    }

    /// The ids of every indicator Graph received so far, and forgets them.
    pub fn take_delivered(&self) -> Vec<u64> {
        let delivered = std::mem::take(&mut self.shared.recorded.lock().unwrap().delivered);
        delivered
            .iter()
            .map(|external| {
                external
                    .strip_prefix("threatfox-")
                    .and_then(|id| id.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected externalId {external}"))
            })
            .collect()
    }

    /// The settings that point the program at these fakes and at `state_dir`.
    pub fn env(&self, state_dir: &Path) -> Vec<(String, String)> {
        let base = format!("http://{}", self.addr);
        [
            ("THREATFOX_AUTH_KEY", "test-key".to_owned()),
            ("THREATFOX_API_URL", format!("{base}/threatfox/")),
            ("GRAPH_API_URL", format!("{base}/graph")),
            (
                "AZURE_TENANT_ID",
                "72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned(),
            ),
            ("IDENTITY_ENDPOINT", format!("{base}/identity")),
            ("IDENTITY_HEADER", "test-identity-header".to_owned()),
            ("STATE_DIR", state_dir.display().to_string()),
            ("IMPORT_DAYS", "2".to_owned()),
            ("UPLOAD_BATCH_SIZE", "2".to_owned()),
            ("UPLOAD_MAX_REQUESTS_PER_MINUTE", "60000".to_owned()),
            ("HTTP_TIMEOUT_SECS", "10".to_owned()),
            ("LOG_FORMAT", "text".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }
}

async fn threatfox(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Json<Value> {
    let mut recorded = shared.recorded.lock().unwrap();
    recorded
        .days_asked
        .push(body["days"].as_u64().expect("days in the request"));
    let first_seen = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let first_seen = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        first_seen.year(),
        u8::from(first_seen.month()),
        first_seen.day(),
        first_seen.hour(),
        first_seen.minute(),
        first_seen.second()
    );
    let data: Vec<Value> = recorded
        .feed_ids
        .iter()
        .map(|id| {
            json!({
                "id": id.to_string(),
                "ioc": format!("c2-{id}.example.com"),
                "threat_type": "botnet_cc",
                "ioc_type": "domain",
                "malware": "win.cobalt_strike",
                "malware_printable": "Cobalt Strike",
                "malware_alias": null,
                "confidence_level": 90,
                "first_seen": first_seen,
                "last_seen": null,
                "reference": null,
                "reporter": "test",
                "tags": ["test"],
            })
        })
        .collect();
    Json(json!({ "query_status": "ok", "data": data }))
}

async fn graph(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Json<Value> {
    shared.graph_called.notify_one();
    let mut open = shared.graph_open.subscribe();
    let _ = open.wait_for(|open| *open).await;
    let items = body["value"].as_array().cloned().unwrap_or_default();
    let mut recorded = shared.recorded.lock().unwrap();
    for item in &items {
        let external = item["externalId"].as_str().unwrap_or_default().to_owned();
        recorded.delivered.push(external);
    }
    Json(json!({ "value": items }))
}

async fn identity() -> Json<Value> {
    let expires_on = OffsetDateTime::now_utc().unix_timestamp() + 3600;
    Json(json!({
        "access_token": "fake-graph-token",
        "expires_on": expires_on.to_string(),
        "token_type": "Bearer",
        "resource": "https://graph.microsoft.com",
    }))
}

/// How a run of the binary ended.
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// Standard error: the summary and the logs.
    pub stderr: String,
}

/// Starts `threatfox-sentinel` with only `env` in its environment, so that nothing from the
/// machine (an Azure login, a storage setting) leaks into the test.
pub fn command(env: &[(String, String)], args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_threatfox-sentinel"));
    command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the binary to the end.
pub async fn run(env: &[(String, String)], args: &[&str]) -> Run {
    let child = command(env, args)
        .spawn()
        .expect("start threatfox-sentinel");
    finish(child).await
}

/// Waits for a started binary to end.
pub async fn finish(child: tokio::process::Child) -> Run {
    let output = child
        .wait_with_output()
        .await
        .expect("wait for threatfox-sentinel");
    Run {
        code: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
