//! Test support, the one helper module of the end-to-end tests: paths, temporary state
//! folders, the command line, and the upstreams an import needs. The fakes, ThreatFox's
//! feeds, the Functions host and Azurite have a file each.

pub mod azurite;
mod fakes;
mod feed;
mod host;

use std::collections::{BTreeSet, HashMap};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use serde_json::Value;

pub use fakes::*;
pub use feed::*;
pub use host::Host;

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

/// The `externalId`s of the sample feed's 25 records that every sink can take.
pub fn sample_external_ids() -> BTreeSet<String> {
    [
        1641001, 1641002, 1641003, 1641004, 1641005, 1641006, 1641007, 1641008, 1641009, 1641010,
        1641011, 1641012, 1641014, 1641015, 1641016, 1641017, 1641018, 1641019, 1641020, 1641021,
        1641022, 1641023, 1641024, 1641025, 1641026,
    ]
    .iter()
    .map(|id| format!("threatfox-{id}"))
    .collect()
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

    /// The `days` of every request ThreatFox received, in order.
    pub fn days_asked(&self) -> Vec<u64> {
        self.threatfox
            .requests()
            .iter()
            .map(|r| r.json()["days"].as_u64().unwrap())
            .collect()
    }
}

/// A fresh empty folder of its own, removed when dropped; it derefs to its path.
pub struct TempDir(PathBuf);

impl Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh empty folder, named after the test for whoever looks in the temporary directory
/// while it runs. The uuid keeps tests that share a name apart under `cargo test`, which
/// runs them as threads of one process.
pub fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("tfs-test-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
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
    start_cli(&env, args).finish().await
}

/// Starts the command line without waiting for it, its output captured.
pub fn start_cli(env: &HashMap<String, String>, args: &[&str]) -> Running {
    let child = command(env)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running(Some(child))
}

/// A started command line; killed if the test ends without waiting for it.
pub struct Running(Option<Child>);

impl Running {
    /// Waits for the program to end (off the async runtime) and returns what it wrote.
    pub async fn finish(mut self) -> Output {
        let child = self.0.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    }

    /// Kills the program with SIGKILL, as a crash or a recycled instance would end it, and
    /// returns how it ended.
    pub fn kill(mut self) -> ExitStatus {
        let mut child = self.0.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
