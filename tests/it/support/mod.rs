//! Test support: recording fake upstreams on 127.0.0.1, the Functions host as far as the
//! handler can see it, and the command line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The key the fake ThreatFox expects; tests check it never leaks.
pub const AUTH_KEY: &str = "tf-key-7f3a9c2e-do-not-log";
/// The tenant the fake tokens carry.
pub const TENANT: &str = "4a1f2b3c-5d6e-4f70-8a9b-0c1d2e3f4a5b";

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_threatfox-sentinel"))
}

/// The repository root, where host.json and the examples live.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The sample feed shipped in the repository.
pub fn sample_feed() -> Value {
    let text = std::fs::read_to_string(repo().join("examples/threatfox-sample.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

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

/// What a fake answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        Self {
            status,
            headers,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn text(status: u16, content_type: &str, body: &str) -> Self {
        let headers = vec![("content-type".to_owned(), content_type.to_owned())];
        Self {
            status,
            headers,
            body: body.to_owned(),
            delay: Duration::ZERO,
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
}

type Responder = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct FakeState {
    requests: Arc<Mutex<Vec<Recorded>>>,
    respond: Arc<Responder>,
}

/// A local HTTP server that records every request and answers through a closure that sees
/// the request and how many came before it.
pub struct Fake {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Fake {
    pub async fn start(
        respond: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState {
            requests: requests.clone(),
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
            requests,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
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
    let reply = {
        let mut requests = state.requests.lock().unwrap();
        let reply = (state.respond)(&recorded, requests.len());
        requests.push(recorded);
        reply
    };
    tokio::time::sleep(reply.delay).await;
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

/// ThreatFox answering every request with `body`.
pub async fn fake_threatfox(body: Value) -> Fake {
    Fake::start(move |_, _| Reply::json(200, body.clone())).await
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

/// The fakes every import needs, with the environment that points the binary at them.
pub struct Upstreams {
    pub threatfox: Fake,
    pub identity: Fake,
    pub graph: Fake,
    pub token: String,
}

impl Upstreams {
    pub async fn new(threatfox: Fake, graph: Fake) -> Self {
        let token = fake_token("threatfox-sentinel-test");
        let identity = fake_identity(token.clone()).await;
        Self {
            threatfox,
            identity,
            graph,
            token,
        }
    }

    /// Settings as the function app would have them, pointing at the fakes.
    pub fn env(&self, state_dir: &Path) -> HashMap<String, String> {
        [
            ("THREATFOX_AUTH_KEY", AUTH_KEY.to_owned()),
            ("THREATFOX_API_URL", self.threatfox.url("/api/v1/")),
            ("GRAPH_API_URL", self.graph.url("/beta")),
            ("IDENTITY_ENDPOINT", self.identity.url("/msi/token")),
            ("IDENTITY_HEADER", "identity-header-secret".to_owned()),
            ("INDICATOR_EXPIRATION_DAYS", "3650".to_owned()),
            ("STATE_DIR", state_dir.display().to_string()),
            ("HTTP_TIMEOUT_SECS", "5".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// A fresh empty folder for the program's state.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tfs-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A command for the binary with a clean environment: nothing from the developer's shell
/// (such as an Azure identity) can leak in.
pub fn command(env: &HashMap<String, String>) -> Command {
    let mut command = Command::new(binary());
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env);
    command
}

/// Runs the command line to completion (off the async runtime).
pub async fn run_cli(env: HashMap<String, String>, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || command(&env).args(&args).output().unwrap())
        .await
        .unwrap()
}

/// The Functions host, as far as the handler sees it: it reads host.json and the
/// function.json files, starts the handler with FUNCTIONS_CUSTOMHANDLER_PORT, waits for `/`
/// and POSTs invocations.
pub struct Host {
    child: Child,
    port: u16,
    pub functions: HashMap<String, Value>,
    client: reqwest::Client,
    log_path: PathBuf,
}

impl Host {
    pub async fn start(env: HashMap<String, String>, log_dir: &Path) -> Host {
        let root = repo();
        let host: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("host.json")).unwrap())
                .unwrap();
        let description = &host["customHandler"]["description"];
        assert_eq!(description["defaultExecutablePath"], "threatfox-sentinel");
        let arguments: Vec<String> = description["arguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let mut functions = HashMap::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path().join("function.json");
            if path.is_file() {
                let name = path
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                functions.insert(
                    name,
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
                );
            }
        }

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_path = log_dir.join("handler.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = command(&env)
            .args(&arguments)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let host = Host {
            child,
            port,
            functions,
            client: reqwest::Client::new(),
            log_path,
        };
        host.wait_until_ready().await;
        host
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The host treats any answer on `/` as ready.
            if self
                .client
                .get(format!("http://127.0.0.1:{}/", self.port))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "handler not ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs an invocation to `/{function}` and returns the status and the JSON reply.
    pub async fn invoke(&self, function: &str, data: Value) -> (u16, Value) {
        assert!(
            self.functions.contains_key(function),
            "no function.json for {function}"
        );
        self.post(function, data).await
    }

    /// POSTs to a path no function.json names, as a misconfigured host might.
    pub async fn invoke_raw(&self, function: &str) -> (u16, Value) {
        self.post(function, json!({})).await
    }

    async fn post(&self, function: &str, data: Value) -> (u16, Value) {
        let payload = json!({ "Data": data, "Metadata": { "sys": { "MethodName": function } } });
        let response = self
            .client
            .post(format!("http://127.0.0.1:{}/{function}", self.port))
            .header(
                "X-Azure-Functions-InvocationId",
                "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            )
            .json(&payload)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        (status, response.json().await.unwrap())
    }

    /// The timer trigger's payload, as the host sends it.
    pub fn timer_data() -> Value {
        json!({ "timer": {
            "Schedule": { "AdjustForDST": true },
            "ScheduleStatus": { "Last": "2026-12-02T01:00:00+00:00", "Next": "2026-12-04T01:00:00+00:00", "LastUpdated": "2026-12-02T01:00:00.0035+00:00" },
            "IsPastDue": false
        } })
    }

    /// The HTTP trigger's payload for `POST /api/import?{query}`.
    pub fn http_data(query: &[(&str, &str)]) -> Value {
        let query: serde_json::Map<String, Value> = query
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        json!({ "req": {
            "Url": "https://func-tfs.azurewebsites.net/api/import",
            "Method": "POST",
            "Query": query,
            "Headers": { "Content-Type": ["application/json"] },
            "Params": {},
            "Identities": []
        } })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM, as the host does on shutdown, and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "handler ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
