//! The ThreatFox side: fetching the feed, parsing it and validating each record.

mod client;
mod ioc;
mod parse;
mod record;

pub use client::ThreatFoxClient;
pub use ioc::{HashAlgorithm, Ioc, IocType, Observable, SkipCounts, SkipReason, Text};
pub use parse::{ParsedFeed, parse_response};
pub use record::{Interner, parse_domain, parse_record, parse_record_json, parse_timestamp};

use std::path::{Path, PathBuf};

/// Why the feed could not be read.
///
/// Messages name the cause and, where the fix is a setting, the setting.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// HTTP 401: no key, or a key ThreatFox refuses outright.
    #[error(
        "threatfox refused the request (HTTP 401 unauthorized): set THREATFOX_AUTH_KEY to a \
         valid key from https://auth.abuse.ch/"
    )]
    Unauthorized,
    /// HTTP 403 or `unknown_auth_key`: the key is not one ThreatFox knows.
    #[error(
        "threatfox does not recognise the auth key: check THREATFOX_AUTH_KEY (keys are issued \
         at https://auth.abuse.ch/)"
    )]
    UnknownAuthKey,
    /// HTTP 402/429 or `ratelimited`.
    #[error("threatfox rate-limited the request{}: run the import again later", status_suffix(*status))]
    RateLimited {
        /// The HTTP status, when the limit was signalled by status.
        status: Option<u16>,
    },
    /// A 5xx answer.
    #[error("threatfox is unavailable (HTTP {status})")]
    Unavailable {
        /// The HTTP status.
        status: u16,
    },
    /// Any other unexpected HTTP status.
    #[error("threatfox answered HTTP {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body, for diagnosis.
        body: String,
    },
    /// The body is not JSON at all, typically an HTML error page from a proxy.
    #[error("threatfox answered with a body that is not JSON (content type {content_type:?})")]
    NotJson {
        /// The `Content-Type` header as received.
        content_type: String,
    },
    /// The body is JSON but not a complete `get_iocs` response.
    #[error("threatfox response is malformed: {0}")]
    Malformed(String),
    /// ThreatFox answered with a `query_status` other than `ok` or `no_result`.
    #[error("threatfox rejected the query with query_status {query_status:?}")]
    Rejected {
        /// The `query_status` value.
        query_status: String,
    },
    /// The request never got an answer: DNS, connection or timeout.
    #[error("could not reach threatfox at {url}: {reason}")]
    Transport {
        /// The API URL (it never carries the key).
        url: String,
        /// What went wrong, from the HTTP client.
        reason: String,
    },
    /// A local file (a saved response, or the download buffer) could not be read or written.
    #[error("could not read feed file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl FeedError {
    /// Whether trying the same request again soon may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FeedError::Unavailable { .. } | FeedError::Transport { .. }
        )
    }
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

/// Reads a saved `get_iocs` response from a file.
pub fn read_saved_response(path: &Path) -> Result<ParsedFeed, FeedError> {
    let file = std::fs::File::open(path).map_err(|source| FeedError::File {
        path: path.to_owned(),
        source,
    })?;
    parse_response(std::io::BufReader::new(file))
}
