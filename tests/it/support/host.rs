//! The Functions host, as far as the handler can see it: host.json, the function.json files,
//! the port it hands the handler, and the invocations it POSTs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{command, repo};

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
