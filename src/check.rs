//! `threatfox-sentinel check`: confirms, without importing anything, that every dependency
//! of an import answers: the settings, ThreatFox with this key, a token for the sink, the
//! sink itself, and the checkpoint store.

use std::fmt;

use crate::app::App;
use crate::auth::TokenSource;
use crate::config::SinkKind;
use crate::feed::ThreatFoxClient;
use crate::sink::{GRAPH_SCOPE, SENTINEL_SCOPE};

/// The result of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// What was checked.
    pub name: &'static str,
    /// What was seen when it passed, or what failed and how to fix it.
    pub outcome: Result<String, String>,
}

impl CheckResult {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(detail) => write!(f, "ok    {:<10} {detail}", self.name),
            Err(problem) => write!(f, "FAIL  {:<10} {problem}", self.name),
        }
    }
}

/// Runs every check in order; later checks still run when an earlier one fails, except
/// where they depend on it.
pub async fn run_checks(app: &App) -> Vec<CheckResult> {
    let settings = app.settings();
    let mut results = vec![CheckResult {
        name: "settings",
        outcome: Ok(format!("valid; sink {}", settings.sink.as_str())),
    }];

    let threatfox = match settings.require_auth_key() {
        Err(err) => Err(err.to_string()),
        Ok(key) => {
            let client =
                ThreatFoxClient::new(app.http(), settings.threatfox_api_url.clone(), key.clone());
            match client.fetch_recent(1).await {
                Ok(feed) => Ok(format!(
                    "answered with this key ({} IoCs in the last day)",
                    feed.received
                )),
                Err(err) => Err(err.to_string()),
            }
        }
    };
    results.push(CheckResult {
        name: "threatfox",
        outcome: threatfox,
    });

    let scope = match settings.sink {
        SinkKind::Graph => GRAPH_SCOPE,
        SinkKind::Sentinel => SENTINEL_SCOPE,
    };
    let token = match TokenSource::from_settings(settings) {
        Err(err) => Err(err.to_string()),
        Ok(tokens) => tokens
            .token(scope)
            .await
            .map(|_| format!("obtained for {scope}"))
            .map_err(|e| e.to_string()),
    };
    let has_token = token.is_ok();
    results.push(CheckResult {
        name: "token",
        outcome: token,
    });

    let sink = if !has_token {
        Err("skipped: no token (fix the token check first)".to_owned())
    } else {
        match app.build_sink(false, None).await {
            Err(err) => Err(err),
            Ok(sink) => sink.probe().await.map_err(|err| err.to_string()),
        }
    };
    results.push(CheckResult {
        name: settings.sink.as_str(),
        outcome: sink,
    });

    results.push(CheckResult {
        name: "checkpoint",
        outcome: app.check_checkpoint_store().await,
    });
    results
}
