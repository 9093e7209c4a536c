//! The Functions custom handler: an HTTP server the host starts, with one route per
//! function (`ScheduledImport`, `ImportNow`) and `/` for the host's readiness probe.

mod protocol;

pub use protocol::{Invocation, InvocationReply, query_param};

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::app::{App, ImportRefused, ImportRequest};
use crate::report::{ImportReport, Outcome};

/// The routes the host calls, over a shared [`App`].
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", any(ready))
        .route("/ScheduledImport", post(scheduled_import))
        .route("/ImportNow", post(import_now))
        .fallback(unknown_function)
        .with_state(app)
}

/// Serves on `listener` until `shutdown` completes; an import in progress finishes first.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    info!(address = %listener.local_addr()?, "custom handler listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    info!("custom handler stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM, the signal the Functions host sends on shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    info!("shutdown requested");
}

async fn ready() -> Json<Value> {
    Json(json!({ "status": "ready" }))
}

async fn unknown_function(uri: axum::http::Uri) -> Response {
    let reply = InvocationReply {
        logs: vec![format!("no function is served at {}", uri.path())],
        return_value: json!({ "error": "unknown function" }),
        ..Default::default()
    };
    (StatusCode::NOT_FOUND, Json(reply)).into_response()
}

/// The timer trigger. A failed import answers 500 so that the host records the failure.
async fn scheduled_import(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let invocation: Invocation = serde_json::from_slice(&body).unwrap_or_default();
    let is_past_due = invocation
        .data
        .pointer("/timer/IsPastDue")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if is_past_due {
        warn!("the timer is past due: the previous schedule was missed");
    }

    match app.import(ImportRequest::default()).await {
        Ok(report) => {
            let status = if report.outcome == Outcome::Failed {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            (status, Json(reply_for(&report))).into_response()
        }
        Err(refused) => {
            let status = refused_status(&refused);
            error!(error = %refused, "scheduled import did not start");
            let reply = InvocationReply {
                logs: vec![refused.to_string()],
                return_value: json!({ "error": refused.to_string() }),
                ..Default::default()
            };
            (status, Json(reply)).into_response()
        }
    }
}

/// The HTTP trigger. The invocation itself always succeeds; the HTTP status for the caller
/// travels in the `res` output binding.
async fn import_now(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Json<InvocationReply> {
    let invocation: Invocation = serde_json::from_slice(&body).unwrap_or_default();
    let req = invocation.data.get("req").cloned().unwrap_or(Value::Null);

    let request = match parse_import_params(&req) {
        Ok(request) => request,
        Err(message) => {
            let reply = InvocationReply {
                logs: vec![message.clone()],
                ..Default::default()
            };
            return Json(reply.with_http_response(400, &json!({ "error": message })));
        }
    };

    match app.import(request).await {
        Ok(report) => {
            let status = match report.outcome {
                Outcome::Failed => 502,
                _ => 200,
            };
            let body = serde_json::to_value(&report).unwrap_or(Value::Null);
            Json(reply_for(&report).with_http_response(status, &body))
        }
        Err(refused) => {
            let status = refused_status(&refused).as_u16();
            let reply = InvocationReply {
                logs: vec![refused.to_string()],
                ..Default::default()
            };
            Json(reply.with_http_response(status, &json!({ "error": refused.to_string() })))
        }
    }
}

fn refused_status(refused: &ImportRefused) -> StatusCode {
    match refused {
        ImportRefused::Busy => StatusCode::CONFLICT,
        ImportRefused::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Reads `days` (1-7) and `dry_run` (true/false) from the query string.
fn parse_import_params(req: &Value) -> Result<ImportRequest, String> {
    let days = match query_param(req, "days") {
        None => None,
        Some(text) => match text.trim().parse::<u8>() {
            Ok(days @ 1..=7) => Some(days),
            _ => {
                return Err(format!(
                    "query parameter days is {text:?}; use a whole number from 1 to 7"
                ));
            }
        },
    };
    let dry_run = match query_param(req, "dry_run").as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(format!(
                "query parameter dry_run is {other:?}; use true or false"
            ));
        }
    };
    Ok(ImportRequest {
        days,
        dry_run,
        ..Default::default()
    })
}

fn reply_for(report: &ImportReport) -> InvocationReply {
    InvocationReply {
        outputs: Default::default(),
        logs: report.summary().lines().map(str::to_owned).collect(),
        return_value: serde_json::to_value(report).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_parameters_are_checked() {
        let ok = parse_import_params(&json!({"Query": {"days": "7", "dry_run": "true"}})).unwrap();
        let defaults = parse_import_params(&json!({"Query": {}})).unwrap();

        assert_eq!((ok.days, ok.dry_run), (Some(7), true));
        assert_eq!((defaults.days, defaults.dry_run), (None, false));
        for bad in [
            json!({"days": "0"}),
            json!({"days": "8"}),
            json!({"days": "x"}),
            json!({"dry_run": "maybe"}),
        ] {
            let err = parse_import_params(&json!({ "Query": bad })).err().unwrap();
            assert!(err.starts_with("query parameter"), "{err}");
        }
    }
}
