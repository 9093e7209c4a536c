//! The Microsoft Sentinel STIX objects Upload API sink.
//!
//! Uploads the STIX indicators of [`super::stix`] up to 100 a request. Sentinel answers 200
//! even when some objects fail; the failed ones are listed by position in an `errors` array
//! and become per-item rejections.

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use serde_json::Value;
use tracing::warn;

use super::http::{execute, short};
use super::stix::map_stix_indicator;
use super::{Delivery, ItemRejection, SendError, Sink};
use crate::auth::TokenSource;
use crate::feed::{Ioc, SkipReason};

/// The token scope for the Upload API (Azure Resource Manager).
pub const SENTINEL_SCOPE: &str = "https://management.azure.com/.default";

/// The Upload API version this sink speaks.
const API_VERSION: &str = "2024-02-01-preview";

/// The fixed parts of every Sentinel request and indicator.
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// `sourcesystem`: the source name Sentinel shows for these indicators.
    pub source_system: String,
    /// Days an indicator stays valid after ThreatFox last reported it.
    pub expiration_days: u16,
}

/// The body of an upload request.
#[derive(Serialize)]
struct UploadBody<'a> {
    sourcesystem: &'a str,
    stixobjects: &'a [Value],
}

/// Writes indicators through the Sentinel STIX objects Upload API.
#[derive(Debug, Clone)]
pub struct SentinelSink {
    http: reqwest::Client,
    base: Url,
    workspace_id: String,
    tokens: TokenSource,
    options: SentinelOptions,
}

impl SentinelSink {
    /// Creates the sink for the Upload API at `base` and the workspace with GUID
    /// `workspace_id`.
    pub fn new(
        http: reqwest::Client,
        base: Url,
        workspace_id: String,
        tokens: TokenSource,
        options: SentinelOptions,
    ) -> Self {
        Self {
            http,
            base,
            workspace_id,
            tokens,
            options,
        }
    }

    fn endpoint(&self) -> String {
        format!(
            "{}/workspaces/{}/threat-intelligence-stix-objects:upload?api-version={API_VERSION}",
            self.base.as_str().trim_end_matches('/'),
            self.workspace_id
        )
    }

    async fn bearer(&self) -> Result<String, SendError> {
        let token = self
            .tokens
            .token(SENTINEL_SCOPE)
            .await
            .map_err(|err| SendError::Fatal {
                message: err.to_string(),
            })?;
        Ok(format!("Bearer {}", token.expose()))
    }
}

/// The answers that retrying cannot fix, each with what to change.
fn fatal_for_status(status: u16, body: &str) -> SendError {
    let message = match status {
        403 => format!(
            "sentinel refused the upload (HTTP 403): grant the function's identity the \
             Microsoft Sentinel Contributor role on the workspace ({})",
            short(body)
        ),
        404 => format!(
            "sentinel did not find the workspace (HTTP 404): check SENTINEL_WORKSPACE_ID, \
             which must be the workspace GUID (its workspace ID), not its name ({})",
            short(body)
        ),
        _ => format!("sentinel answered HTTP {status}: {}", short(body)),
    };
    SendError::Fatal { message }
}

#[async_trait]
impl Sink for SentinelSink {
    fn name(&self) -> &'static str {
        "sentinel"
    }

    fn requests_per_minute(&self) -> u32 {
        100
    }

    fn map(&self, ioc: &Ioc) -> Result<Value, SkipReason> {
        map_stix_indicator(ioc, &self.options)
    }

    fn request_body(&self, items: &[Value]) -> Result<Vec<u8>, SendError> {
        super::encode(&UploadBody {
            sourcesystem: &self.options.source_system,
            stixobjects: items,
        })
    }

    async fn send(&self, items: &[Value]) -> Result<Delivery, SendError> {
        let request = self
            .http
            .post(self.endpoint())
            .header("Authorization", self.bearer().await?)
            .header(CONTENT_TYPE, "application/json")
            .body(self.request_body(items)?);
        let answer = execute(request).await?;

        match answer.status.as_u16() {
            200 => Ok(Delivery {
                rejected: record_errors(items.len(), &answer.body),
            }),
            400 => Err(SendError::BatchRejected {
                status: 400,
                message: short(&answer.body),
            }),
            _ => Err(answer.error(fatal_for_status)),
        }
    }

    /// Checks only that a token for the Upload API can be obtained.
    ///
    /// The Upload API has no read endpoint, and what it does with an empty `stixobjects`
    /// array is not documented, so the probe sends nothing to Sentinel: the role
    /// assignment and the workspace id are first checked by the first real upload.
    async fn probe(&self) -> Result<String, SendError> {
        self.bearer().await?;
        Ok(format!(
            "got a token for {SENTINEL_SCOPE}; the Upload API has no read endpoint, so the \
             Microsoft Sentinel Contributor role on workspace {} is checked by the first upload",
            self.workspace_id
        ))
    }
}

/// Reads a 200 answer: empty when every object was accepted, otherwise
/// `{"errors":[{"recordIndex":N,"errorMessages":["..."]}]}`.
///
/// Messages for one record are joined; indices outside the batch are logged and dropped,
/// since they cannot name an item.
fn record_errors(count: usize, body: &str) -> Vec<ItemRejection> {
    if body.trim().is_empty() {
        return Vec::new();
    }
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let Some(errors) = parsed.get("errors").and_then(Value::as_array) else {
        // A 200 is the service's word that the batch was taken; an unexpected body is kept
        // in the log rather than guessed at.
        warn!(body = %short(body), "sentinel accepted the batch with an unexpected body");
        return Vec::new();
    };

    let mut by_index: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for error in errors {
        let index = error
            .get("recordIndex")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i < count);
        let Some(index) = index else {
            warn!(%error, batch = count, "sentinel reported an error for no item of the batch");
            continue;
        };
        let messages = error
            .get("errorMessages")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        by_index.entry(index).or_default().extend(messages);
    }

    by_index
        .into_iter()
        .map(|(index, messages)| ItemRejection {
            index,
            message: if messages.is_empty() {
                "rejected by sentinel without a message".to_owned()
            } else {
                messages.join("; ")
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::sink::http::common_status_error;
    use serde_json::json;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
    use reqwest::header::HeaderMap;

    use super::*;
    use crate::sink::stix::tests::{ioc, ioc_with, options};
    use time::OffsetDateTime;

    #[test]
    fn a_200_with_errors_rejects_the_named_records() {
        let body = r#"{"errors":[
            {"recordIndex":2,"errorMessages":["Invalid pattern","Unsupported"]},
            {"recordIndex":0,"errorMessages":["Bad id"]},
            {"recordIndex":0,"errorMessages":["Bad created"]},
            {"recordIndex":7,"errorMessages":["out of range"]}]}"#;

        let rejected = record_errors(3, body);

        assert_eq!(
            rejected,
            [
                ItemRejection {
                    index: 0,
                    message: "Bad id; Bad created".into()
                },
                ItemRejection {
                    index: 2,
                    message: "Invalid pattern; Unsupported".into()
                },
            ]
        );
        assert_eq!(record_errors(3, ""), []);
        assert_eq!(record_errors(3, "{}"), []);
    }

    #[test]
    fn statuses_are_sorted_by_what_helps() {
        let headers = HeaderMap::new();
        let forbidden = fatal_for_status(403, "Forbidden");
        let missing = fatal_for_status(404, "Workspace not found");
        let throttled = common_status_error(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            r#"{"statusCode":429,"message":"Rate limit is exceeded. Try again in 9 seconds."}"#,
        );

        assert!(
            matches!(&forbidden, SendError::Fatal { message }
                if message.contains("Microsoft Sentinel Contributor")),
            "{forbidden}"
        );
        assert!(
            matches!(&missing, SendError::Fatal { message }
                if message.contains("SENTINEL_WORKSPACE_ID") && message.contains("GUID")),
            "{missing}"
        );
        assert_eq!(
            throttled,
            Some(SendError::Throttled {
                retry_after: Some(Duration::from_secs(9))
            })
        );
    }

    /// A credential that hands out a fixed token and never touches the network.
    #[derive(Debug)]
    struct FakeCredential;

    #[async_trait]
    impl TokenCredential for FakeCredential {
        async fn get_token(
            &self,
            scopes: &[&str],
            _options: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            assert_eq!(scopes, [SENTINEL_SCOPE]);
            Ok(AccessToken::new(
                "fake-token",
                OffsetDateTime::now_utc() + time::Duration::hours(1),
            ))
        }
    }

    /// One request as the fake Upload API saw it.
    #[derive(Debug, Clone)]
    struct Received {
        path: String,
        query: Option<String>,
        authorization: Option<String>,
        body: Value,
    }

    #[derive(Clone)]
    struct FakeApi {
        received: Arc<Mutex<Vec<Received>>>,
        status: StatusCode,
        answer: &'static str,
    }

    async fn record(State(api): State<FakeApi>, request: Request) -> (StatusCode, &'static str) {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        api.received.lock().unwrap().push(Received {
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            authorization: parts
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        });
        (api.status, api.answer)
    }

    /// Starts a fake Upload API that answers every request with `status` and `answer`.
    async fn spawn_fake_api(
        status: StatusCode,
        answer: &'static str,
    ) -> (SentinelSink, Arc<Mutex<Vec<Received>>>) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let api = FakeApi {
            received: received.clone(),
            status,
            answer,
        };
        let router = axum::Router::new().fallback(record).with_state(api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        let tokens = TokenSource::new(Arc::new(FakeCredential), "a fake credential");
        let sink = SentinelSink::new(
            reqwest::Client::new(),
            Url::parse(&format!("http://{address}/")).unwrap(),
            "9b2a3c1e-3f5d-4a7b-8c9d-0e1f2a3b4c5d".into(),
            tokens,
            options(),
        );
        (sink, received)
    }

    #[tokio::test]
    async fn an_upload_posts_the_stix_objects_to_the_workspace() {
        let (sink, received) = spawn_fake_api(StatusCode::OK, "").await;
        let items = vec![
            sink.map(&ioc("domain", "evil.example")).unwrap(),
            sink.map(&ioc_with(
                "2",
                "url",
                "http://evil.example/'",
                "payload_delivery",
            ))
            .unwrap(),
        ];

        let delivery = sink.send(&items).await.unwrap();

        assert_eq!(delivery, Delivery::default());
        let received = received.lock().unwrap().clone();
        assert_eq!(received.len(), 1);
        let request = &received[0];
        assert_eq!(
            request.path,
            "/workspaces/9b2a3c1e-3f5d-4a7b-8c9d-0e1f2a3b4c5d/threat-intelligence-stix-objects:upload"
        );
        assert_eq!(
            request.query.as_deref(),
            Some("api-version=2024-02-01-preview")
        );
        assert_eq!(request.authorization.as_deref(), Some("Bearer fake-token"));
        assert_eq!(
            request.body,
            json!({ "sourcesystem": "ThreatFox", "stixobjects": items })
        );
    }

    #[tokio::test]
    async fn records_sentinel_refuses_are_reported_by_position() {
        let answer = r#"{"errors":[{"recordIndex":1,"errorMessages":["Invalid pattern"]}]}"#;
        let (sink, received) = spawn_fake_api(StatusCode::OK, answer).await;
        let items = vec![
            sink.map(&ioc("domain", "a.example")).unwrap(),
            sink.map(&ioc_with("2", "domain", "b.example", "payload"))
                .unwrap(),
        ];

        let delivery = sink.send(&items).await.unwrap();

        assert_eq!(
            delivery.rejected,
            [ItemRejection {
                index: 1,
                message: "Invalid pattern".into()
            }]
        );
        assert_eq!(received.lock().unwrap().len(), 1);
    }

    /// Whether an error is the one a status should give.
    type Expectation = fn(&SendError) -> bool;

    #[tokio::test]
    async fn error_statuses_become_the_matching_send_errors() {
        let items = vec![json!({"type": "indicator"})];
        let cases: [(StatusCode, &str, Expectation); 5] = [
            (StatusCode::BAD_REQUEST, "bad format", |e| {
                matches!(e, SendError::BatchRejected { status: 400, .. })
            }),
            (StatusCode::UNAUTHORIZED, "expired", |e| {
                matches!(e, SendError::Unauthorized { .. })
            }),
            (
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"statusCode":429,"message":"Rate limit is exceeded. Try again in 4 seconds."}"#,
                |e| {
                    *e == SendError::Throttled {
                        retry_after: Some(Duration::from_secs(4)),
                    }
                },
            ),
            (StatusCode::FORBIDDEN, "no role", |e| {
                e.to_string().contains("Microsoft Sentinel Contributor")
            }),
            (StatusCode::NOT_FOUND, "", |e| {
                e.to_string().contains("SENTINEL_WORKSPACE_ID")
            }),
        ];

        for (status, answer, expected) in cases {
            let (sink, _) = spawn_fake_api(status, answer).await;

            let error = sink.send(&items).await.unwrap_err();

            assert!(expected(&error), "{status}: {error:?}");
        }
    }

    #[tokio::test]
    async fn the_probe_checks_only_that_a_token_can_be_had() {
        let (sink, received) = spawn_fake_api(StatusCode::OK, "").await;

        let report = sink.probe().await.unwrap();

        assert!(report.contains(SENTINEL_SCOPE), "{report}");
        assert!(received.lock().unwrap().is_empty());
    }
}
