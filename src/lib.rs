//! threatfox-sentinel: imports abuse.ch ThreatFox IoCs into Microsoft Sentinel, through
//! Microsoft Graph `tiIndicators` or the Sentinel STIX Upload API.
//!
//! The same library serves the Azure Functions custom handler ([`server`]) and the command
//! line ([`cli`]). An import reads the feed ([`feed`]), selects and orders the IoCs
//! ([`import`]), maps them for a [`sink`], and delivers them through the [`uploader`]; the
//! [`checkpoint`] lets the next import resume after the last id delivered.

pub mod app;
pub mod auth;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod feed;
pub mod import;
pub mod logging;
pub mod report;
pub mod secret;
pub mod server;
pub mod sink;
pub mod uploader;

/// Joins an error and its sources into one line, dropping repeats (HTTP clients often
/// repeat their cause in their own message).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}
