//! The import report: one per import, as JSON for the Functions host and as a readable
//! summary for people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::feed::SkipCounts;
use crate::uploader::UploadStats;

/// How many rejections are listed by name; the rest are only counted.
pub const REJECTION_SAMPLES: usize = 10;

/// How an import ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every record was settled: delivered, rejected by the service, or skipped.
    Complete,
    /// The time budget ran out; the rest is left for the next run.
    Incomplete,
    /// The import stopped on an error.
    Failed,
}

/// One indicator the service refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// `threatfox-<id>`.
    pub external_id: String,
    /// The service's reason.
    pub message: String,
}

/// Where the checkpoint stood before and after an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointSummary {
    /// The checkpoint file or blob.
    pub location: String,
    /// The highest id delivered before this import; `None` on a first import.
    pub last_id_before: Option<u64>,
    /// The highest id delivered once this import ended.
    pub last_id_after: Option<u64>,
}

/// Everything an import did, in numbers.
///
/// Every record fetched ends in exactly one of `skipped`, `uploaded`, `rejected` or
/// `not_delivered`, so the four always add up to `fetched`.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// How the import ended.
    pub outcome: Outcome,
    /// The sink written to.
    pub sink: String,
    /// Whether nothing was sent.
    pub dry_run: bool,
    /// Where the feed came from: `threatfox` or a file path.
    pub source: String,
    /// The feed window, in days.
    pub window_days: u8,
    /// When the import started (RFC 3339).
    pub started_at: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Records in the feed.
    pub fetched: u64,
    /// Records skipped, by reason.
    pub skipped: SkipCounts,
    /// Indicators the sink accepted.
    pub uploaded: u64,
    /// Indicators the sink refused.
    pub rejected: u64,
    /// The first few refusals with their reasons.
    pub rejections: Vec<Rejection>,
    /// Valid indicators not sent because the import stopped early.
    pub not_delivered: u64,
    /// What the uploader did: requests, retries, waits.
    #[serde(flatten)]
    pub upload: UploadStats,
    /// Why the import failed or stopped early.
    pub error: Option<String>,
    /// The checkpoint, unless the import ran without one.
    pub checkpoint: Option<CheckpointSummary>,
    /// Things that went wrong without stopping the import, such as a gap since the last
    /// import longer than the feed reaches back.
    pub warnings: Vec<String>,
}

impl ImportReport {
    /// An empty report for an import that is starting.
    pub fn new(sink: &str, source: &str, window_days: u8, dry_run: bool) -> Self {
        let started_at = crate::sink::rfc3339(time::OffsetDateTime::now_utc());
        Self {
            outcome: Outcome::Complete,
            sink: sink.to_owned(),
            dry_run,
            source: source.to_owned(),
            window_days,
            started_at,
            duration_ms: 0,
            fetched: 0,
            skipped: SkipCounts::default(),
            uploaded: 0,
            rejected: 0,
            rejections: Vec::new(),
            not_delivered: 0,
            upload: UploadStats::default(),
            error: None,
            checkpoint: None,
            warnings: Vec::new(),
        }
    }

    /// Records a refusal, keeping the first few reasons.
    pub fn reject(&mut self, id: u64, message: String) {
        self.rejected += 1;
        if self.rejections.len() < REJECTION_SAMPLES {
            self.rejections.push(Rejection {
                external_id: format!("threatfox-{id}"),
                message,
            });
        }
    }

    /// Whether every valid indicator reached the sink.
    pub fn is_fully_delivered(&self) -> bool {
        self.outcome == Outcome::Complete && self.rejected == 0 && self.not_delivered == 0
    }

    /// A few lines for a terminal or the Functions `Logs`.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        let verb = if self.dry_run {
            "written (dry run)"
        } else {
            "uploaded"
        };
        let outcome = match self.outcome {
            Outcome::Complete => "complete",
            Outcome::Incomplete => "incomplete",
            Outcome::Failed => "failed",
        };
        let _ = writeln!(
            text,
            "import {outcome}: {} -> {} ({} day window) in {:.1} s",
            self.source,
            self.sink,
            self.window_days,
            self.duration_ms as f64 / 1000.0
        );
        let _ = writeln!(
            text,
            "  fetched {}, {verb} {}, rejected {}, skipped {}, not delivered {}",
            self.fetched,
            self.uploaded,
            self.rejected,
            self.skipped.total(),
            self.not_delivered
        );
        for (reason, count) in self.skipped.iter() {
            let _ = writeln!(text, "  skipped {count} as {reason}");
        }
        for rejection in &self.rejections {
            let _ = writeln!(
                text,
                "  rejected {}: {}",
                rejection.external_id, rejection.message
            );
        }
        let _ = writeln!(
            text,
            "  requests {}, retries {}, throttled {} ({} ms waiting)",
            self.upload.requests,
            self.upload.retries,
            self.upload.throttled,
            self.upload.throttle_wait_ms
        );
        if let Some(checkpoint) = &self.checkpoint {
            let id = |id: Option<u64>| id.map_or_else(|| "none".to_owned(), |id| id.to_string());
            let _ = writeln!(
                text,
                "  checkpoint: last id {} -> {} ({})",
                id(checkpoint.last_id_before),
                id(checkpoint.last_id_after),
                checkpoint.location
            );
        }
        for warning in &self.warnings {
            let _ = writeln!(text, "  warning: {warning}");
        }
        if let Some(error) = &self.error {
            let _ = writeln!(text, "  error: {error}");
        }
        text
    }
}
