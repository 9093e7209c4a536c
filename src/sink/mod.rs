//! Sinks: where indicators go. Each sink maps an [`Ioc`] to its own indicator format and
//! sends one batch per request; pacing, retries and splitting live in the uploader, which
//! treats every sink alike.

mod dry_run;
mod graph;
mod http;
mod sentinel;
mod stix;

pub use dry_run::DryRunSink;
pub(crate) use graph::rfc3339;
pub use graph::{GRAPH_SCOPE, GraphOptions, GraphSink, map_graph_indicator};
pub use http::{parse_retry_after, retry_after_from_message};
pub use sentinel::{SENTINEL_SCOPE, SentinelOptions, SentinelSink};
pub use stix::{STIX_ID_NAMESPACE, TLP_CLEAR, map_stix_indicator, stix_id};

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::feed::{Ioc, SkipReason};

/// A sink's answer to a request that it accepted as a whole.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Items the service refused one by one, by their position in the batch.
    pub rejected: Vec<ItemRejection>,
}

/// One item that the service refused, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRejection {
    /// The 0-based position of the item in the batch that was sent.
    pub index: usize,
    /// The service's message.
    pub message: String,
}

/// Why a request did not deliver its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// HTTP 429: the service asks to wait.
    #[error("throttled by the service{}", wait_suffix(*retry_after))]
    Throttled {
        /// How long the service asked to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// HTTP 401: the token was refused; a fresh one may help once.
    #[error("the service refused the access token (HTTP 401): {message}")]
    Unauthorized {
        /// The service's message.
        message: String,
    },
    /// HTTP 400 for the request as a whole: some item in it is unacceptable.
    #[error("the service rejected the batch (HTTP {status}): {message}")]
    BatchRejected {
        /// The HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// A failure that may pass: 5xx, 408, a timeout or a broken connection.
    #[error("{reason}")]
    Transient {
        /// What happened.
        reason: String,
    },
    /// A failure that retrying cannot fix: the import stops.
    #[error("{message}")]
    Fatal {
        /// What happened and what to do about it.
        message: String,
    },
}

/// A phase of the Lockheed Martin cyber kill chain, named where ThreatFox's threat type
/// states it plainly; each sink spells it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillChainPhase {
    /// The malware is being delivered (`payload_delivery`).
    Delivery,
    /// Infected hosts talk to their controller (`botnet_cc`).
    CommandAndControl,
}

impl KillChainPhase {
    /// The phase a ThreatFox threat type implies, if it implies one.
    pub(crate) fn of_threat_type(threat_type: &str) -> Option<Self> {
        match threat_type {
            "botnet_cc" => Some(Self::CommandAndControl),
            "payload_delivery" => Some(Self::Delivery),
            _ => None,
        }
    }

    /// Graph's `killChain` value.
    pub(crate) fn graph_name(self) -> &'static str {
        match self {
            Self::Delivery => "Delivery",
            Self::CommandAndControl => "C2",
        }
    }

    /// The STIX `phase_name`: lowercase words joined by hyphens.
    pub(crate) fn stix_name(self) -> &'static str {
        match self {
            Self::Delivery => "delivery",
            Self::CommandAndControl => "command-and-control",
        }
    }
}

/// Encodes a request body; JSON values always encode, but the error is passed on rather
/// than assumed away.
fn encode(body: &impl serde::Serialize) -> Result<Vec<u8>, SendError> {
    serde_json::to_vec(body).map_err(|err| SendError::Fatal {
        message: format!("could not encode the request body: {err}"),
    })
}

fn wait_suffix(wait: Option<Duration>) -> String {
    wait.map(|w| format!(", asked to wait {} ms", w.as_millis()))
        .unwrap_or_default()
}

/// A destination for indicators.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name as used in settings and reports (`graph`, `sentinel`).
    fn name(&self) -> &'static str;

    /// How many requests a minute the service allows.
    fn requests_per_minute(&self) -> u32;

    /// Maps one IoC to this sink's indicator, or says why it cannot be represented.
    fn map(&self, ioc: &Ioc) -> Result<Value, SkipReason>;

    /// Encodes the exact request body that carries `items`, straight from the borrowed
    /// items (a batch is never copied on its way out).
    fn request_body(&self, items: &[Value]) -> Result<Vec<u8>, SendError>;

    /// Sends one batch of mapped items in one request.
    async fn send(&self, items: &[Value]) -> Result<Delivery, SendError>;

    /// Checks, without writing anything, that the service answers with this identity.
    async fn probe(&self) -> Result<String, SendError>;
}
