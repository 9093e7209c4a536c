//! The ThreatFox API client: one `get_iocs` call with the mandatory `Auth-Key` header.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::json;
use tracing::{debug, warn};

use super::{FeedError, ParsedFeed, parse_response};
use crate::secret::Secret;

/// How many times a transient failure (5xx, timeout, connection) is tried in all.
const ATTEMPTS: u32 = 3;

/// Calls ThreatFox's `get_iocs` query.
#[derive(Debug, Clone)]
pub struct ThreatFoxClient {
    http: reqwest::Client,
    url: reqwest::Url,
    auth_key: Secret,
    retry_delay: Duration,
}

impl ThreatFoxClient {
    /// Creates a client for the API at `url`, sending `auth_key` on every request.
    pub fn new(http: reqwest::Client, url: reqwest::Url, auth_key: Secret) -> Self {
        Self {
            http,
            url,
            auth_key,
            retry_delay: Duration::from_secs(2),
        }
    }

    /// Fetches the IoCs first seen in the last `days` days (1 to 7).
    ///
    /// Transient failures are tried again a few times with a growing pause; everything
    /// else fails at once with a message that names the cause.
    pub async fn fetch_recent(&self, days: u8) -> Result<ParsedFeed, FeedError> {
        let mut attempt = 1;
        loop {
            match self.fetch_once(days).await {
                Err(err) if err.is_transient() && attempt < ATTEMPTS => {
                    let pause = self.retry_delay * 2u32.pow(attempt - 1);
                    warn!(attempt, error = %err, pause_ms = pause.as_millis() as u64, "threatfox request failed, retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn fetch_once(&self, days: u8) -> Result<ParsedFeed, FeedError> {
        debug!(url = %self.url, days, "requesting threatfox get_iocs");
        let response = self
            .http
            .post(self.url.clone())
            .header("Auth-Key", self.auth_key.expose())
            .json(&json!({ "query": "get_iocs", "days": days }))
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;

        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        match status {
            200 => {}
            401 => return Err(FeedError::Unauthorized),
            403 => return Err(FeedError::UnknownAuthKey),
            402 | 429 => {
                return Err(FeedError::RateLimited {
                    status: Some(status),
                });
            }
            500..=599 => return Err(FeedError::Unavailable { status }),
            _ => {
                let body = response.text().await.unwrap_or_default();
                let body: String = body.chars().take(200).collect();
                return Err(FeedError::Status { status, body });
            }
        }
        if content_type.contains("html") {
            return Err(FeedError::NotJson { content_type });
        }

        let buffer = self.download(response).await?;
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&buffer.path).map_err(|source| FeedError::File {
                path: buffer.path.clone(),
                source,
            })?;
            match parse_response(std::io::BufReader::new(file)) {
                Err(FeedError::Malformed(_)) if !looks_like_json(&buffer.path) => {
                    Err(FeedError::NotJson { content_type })
                }
                other => other,
            }
        })
        .await
        .map_err(|err| FeedError::Malformed(format!("the parser stopped: {err}")))?
    }

    /// Streams the body to a temporary file so that a large feed is never held in memory
    /// as text.
    async fn download(&self, mut response: reqwest::Response) -> Result<TempFile, FeedError> {
        let path = std::env::temp_dir().join(format!("threatfox-{}.json", uuid::Uuid::new_v4()));
        let buffer = TempFile { path };
        let file_error = |source| FeedError::File {
            path: buffer.path.clone(),
            source,
        };
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(&buffer.path).map_err(file_error)?);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(&err))?
        {
            file.write_all(&chunk).map_err(file_error)?;
        }
        file.flush().map_err(file_error)?;
        Ok(buffer)
    }

    fn transport_error(&self, err: &reqwest::Error) -> FeedError {
        let reason = if err.is_timeout() {
            "the request timed out (raise HTTP_TIMEOUT_SECS if the feed is large)".to_owned()
        } else {
            crate::error_chain(err)
        };
        FeedError::Transport {
            url: self.url.to_string(),
            reason,
        }
    }
}

/// Whether a downloaded body starts like a JSON document, to tell an HTML page or plain
/// text apart from a JSON response that is broken further in.
fn looks_like_json(path: &std::path::Path) -> bool {
    let mut head = [0u8; 64];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    head[..read]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// A file removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
