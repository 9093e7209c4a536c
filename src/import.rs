//! One import, start to end: read the feed, select and order the IoCs, map them for the
//! sink, and hand them to the uploader batch by batch.

use std::collections::BTreeSet;
use std::path::PathBuf;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::feed::{FeedError, Ioc, IocType, ParsedFeed, SkipCounts, SkipReason, ThreatFoxClient};
use crate::report::{ImportReport, Outcome};
use crate::sink::Sink;
use crate::uploader::{Batch, UploadPolicy, UploadStop, Uploader};

/// Where the feed comes from.
#[derive(Debug, Clone)]
pub enum FeedSource {
    /// The ThreatFox API.
    Api(ThreatFoxClient),
    /// A saved `get_iocs` response.
    File(PathBuf),
}

impl FeedSource {
    /// How the source is named in reports.
    pub fn describe(&self) -> String {
        match self {
            FeedSource::Api(_) => describe_source(None),
            FeedSource::File(path) => describe_source(Some(path)),
        }
    }

    async fn read(&self, days: u8) -> Result<ParsedFeed, FeedError> {
        match self {
            FeedSource::Api(client) => client.fetch_recent(days).await,
            FeedSource::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || crate::feed::read_saved_response(&path))
                    .await
                    .map_err(|err| FeedError::Malformed(format!("the parser stopped: {err}")))?
            }
        }
    }
}

/// How a feed source is named in reports: `threatfox`, or the saved file's path.
pub fn describe_source(input: Option<&std::path::Path>) -> String {
    input.map_or_else(|| "threatfox".to_owned(), |path| path.display().to_string())
}

/// Which IoCs an import keeps.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The ThreatFox types to import.
    pub types: BTreeSet<IocType>,
    /// IoCs below this confidence are skipped.
    pub min_confidence: u8,
    /// Indicator lifetime after the IoC was last reported.
    pub expiration_days: u16,
    /// Ids at or below this were delivered by an earlier import.
    pub after_id: Option<u64>,
}

impl Selection {
    /// Orders the IoCs by id (the order the checkpoint relies on) and drops the ones this
    /// import should not send, counting each by reason.
    pub fn apply(
        &self,
        mut iocs: Vec<Ioc>,
        now: OffsetDateTime,
        skipped: &mut SkipCounts,
    ) -> Vec<Ioc> {
        // In place: a second vector would hold a second copy of the feed at the peak.
        iocs.sort_unstable_by_key(|ioc| ioc.id);
        let mut previous_id = None;
        iocs.retain(|ioc| {
            let is_repeat = previous_id == Some(ioc.id);
            previous_id = Some(ioc.id);
            let reason = if is_repeat {
                Some(SkipReason::Duplicate)
            } else if self.after_id.is_some_and(|after| ioc.id <= after) {
                Some(SkipReason::AlreadyImported)
            } else if !self.types.contains(&ioc.ioc_type) {
                Some(SkipReason::NotSelected)
            } else if ioc.confidence < self.min_confidence {
                Some(SkipReason::BelowMinConfidence)
            } else if ioc.expires_at(self.expiration_days) <= now {
                Some(SkipReason::Expired)
            } else {
                None
            };
            if let Some(reason) = reason {
                skipped.add(reason);
            }
            reason.is_none()
        });
        iocs
    }
}

/// Told the highest id of each batch once every item in it is delivered or permanently
/// rejected: what keeps a checkpoint exact. A plain closure will do when nothing is awaited.
#[async_trait]
pub trait OnSettled: Send {
    /// Records that every id up to `highest_id` is settled; an error stops the import.
    async fn settled(&mut self, highest_id: u64) -> Result<(), String>;
}

#[async_trait]
impl<F> OnSettled for F
where
    F: FnMut(u64) -> Result<(), String> + Send,
{
    async fn settled(&mut self, highest_id: u64) -> Result<(), String> {
        self(highest_id)
    }
}

/// The parameters of one import.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    /// Which IoCs to keep.
    pub selection: Selection,
    /// How to pace and retry.
    pub policy: UploadPolicy,
    /// Indicators per request.
    pub batch_size: usize,
    /// The feed window, in days.
    pub days: u8,
    /// Whether the sink only writes what it would send.
    pub dry_run: bool,
}

/// Runs one import and reports what happened; errors end up in the report, never lost.
///
/// `on_settled` is called with the highest id of each batch once every item in it is
/// delivered or permanently rejected, so a checkpoint can be kept exact; an error from it
/// stops the import.
pub async fn run_import(
    source: &FeedSource,
    sink: &dyn Sink,
    plan: ImportPlan,
    mut on_settled: impl OnSettled,
) -> ImportReport {
    let ImportPlan {
        selection,
        policy,
        batch_size,
        days,
        dry_run,
    } = plan;
    let started = Instant::now();
    let mut report = ImportReport::new(sink.name(), &source.describe(), days, dry_run);
    info!(sink = sink.name(), source = %report.source, days, dry_run, "import started");

    let feed = match source.read(days).await {
        Ok(feed) => feed,
        Err(err) => {
            report.outcome = Outcome::Failed;
            report.error = Some(err.to_string());
            report.duration_ms = started.elapsed().as_millis() as u64;
            error!(error = %err, "import failed: could not read the feed");
            return report;
        }
    };
    report.fetched = feed.received;
    report.skipped = feed.skipped;
    let iocs = selection.apply(feed.iocs, OffsetDateTime::now_utc(), &mut report.skipped);

    // A bounded queue between mapping and uploading: the next batches are mapped while a
    // request is in flight, and no more than QUEUED_BATCHES wait, whatever the feed's size.
    let (queue, mut queued) = tokio::sync::mpsc::channel::<Batch>(QUEUED_BATCHES);
    let mut remaining = iocs.into_iter();
    let mut unmapped = SkipCounts::default();
    let producer = async {
        // Owned here, so that the queue closes when the mapping is done.
        let queue = queue;
        loop {
            let batch = next_batch(&mut remaining, sink, batch_size, &mut unmapped);
            if batch.is_empty() {
                return None;
            }
            if let Err(refused) = queue.send(batch).await {
                // The uploader stopped: this batch was never sent.
                return Some(refused.0);
            }
        }
    };
    let mut uploader = Uploader::new(sink, policy);
    let mut delivered = Delivered::default();
    let consumer = async {
        // A settled batch's checkpoint is saved while the next batch is in flight, so that
        // a slow store (a blob write, an fsync) never holds the upload back.
        let mut unsaved: Option<u64> = None;
        let stop = loop {
            let Some(batch) = queued.recv().await else {
                break None;
            };
            let save = save_checkpoint(&mut on_settled, unsaved.take());
            let (sent, saved) = tokio::join!(uploader.upload(&batch), save);
            match sent {
                Ok(outcome) => {
                    delivered.uploaded += outcome.delivered;
                    delivered.rejected.extend(outcome.rejected);
                    unsaved = batch.highest_id();
                }
                Err(err) => {
                    delivered.unsent += batch.len() as u64;
                    if let Err(save_error) = saved {
                        error!(error = %save_error, "the checkpoint was not saved either");
                    }
                    break Some(err);
                }
            }
            if let Err(err) = saved {
                break Some(err);
            }
        };
        let last_save = save_checkpoint(&mut on_settled, unsaved).await;
        let stop = stop.or(last_save.err());
        // Closing wakes a mapper waiting for room, so that it stops too.
        queued.close();
        stop
    };
    let (unqueued, stop) = tokio::join!(producer, consumer);
    while let Ok(batch) = queued.try_recv() {
        delivered.unsent += batch.len() as u64;
    }

    report.skipped.merge(&unmapped);
    report.uploaded = delivered.uploaded;
    for (id, message) in delivered.rejected {
        report.reject(id, message);
    }
    if let Some(stop) = stop {
        // Whatever was not settled is counted, mapped or not, so the totals still add up.
        report.not_delivered = delivered.unsent + unqueued.map_or(0, |b| b.len() as u64);
        for ioc in remaining {
            match sink.map(&ioc) {
                Ok(_) => report.not_delivered += 1,
                Err(reason) => report.skipped.add(reason),
            }
        }
        report.outcome = match stop {
            UploadStop::OutOfTime => Outcome::Incomplete,
            UploadStop::Failed(_) => Outcome::Failed,
        };
        report.error = Some(stop.to_string());
    }
    report.upload = uploader.stats().clone();
    report.duration_ms = started.elapsed().as_millis() as u64;
    log_report(&report);
    report
}

/// Saves the checkpoint up to `highest_id`, when there is one to save.
async fn save_checkpoint(
    on_settled: &mut impl OnSettled,
    highest_id: Option<u64>,
) -> Result<(), UploadStop> {
    let Some(id) = highest_id else { return Ok(()) };
    on_settled
        .settled(id)
        .await
        .map_err(|err| UploadStop::Failed(format!("could not save the checkpoint: {err}")))
}

/// How many mapped batches may wait for the uploader.
const QUEUED_BATCHES: usize = 2;

/// What the uploader settled, gathered while the mapping goes on beside it.
#[derive(Default)]
struct Delivered {
    uploaded: u64,
    rejected: Vec<(u64, String)>,
    /// Mapped indicators in batches that were never settled.
    unsent: u64,
}

/// Maps IoCs until a batch is full or the feed ends; unmappable ones are counted.
fn next_batch(
    iocs: &mut impl Iterator<Item = Ioc>,
    sink: &dyn Sink,
    batch_size: usize,
    skipped: &mut SkipCounts,
) -> Batch {
    let mut batch = Batch::with_capacity(batch_size);
    for ioc in iocs.by_ref() {
        match sink.map(&ioc) {
            Ok(item) => batch.push(ioc.id, item),
            Err(reason) => skipped.add(reason),
        }
        if batch.len() == batch_size {
            break;
        }
    }
    batch
}

fn log_report(report: &ImportReport) {
    if report.skipped.total() > 0 {
        let by_reason: Vec<String> = report
            .skipped
            .iter()
            .map(|(r, c)| format!("{r}={c}"))
            .collect();
        warn!(skipped = report.skipped.total(), by_reason = %by_reason.join(","), "records skipped");
    }
    let outcome = format!("{:?}", report.outcome).to_lowercase();
    if report.outcome == Outcome::Complete {
        info!(
            outcome,
            fetched = report.fetched,
            uploaded = report.uploaded,
            rejected = report.rejected,
            skipped = report.skipped.total(),
            requests = report.upload.requests,
            retries = report.upload.retries,
            duration_ms = report.duration_ms,
            "import finished"
        );
    } else {
        error!(
            outcome,
            error = report.error.as_deref().unwrap_or(""),
            fetched = report.fetched,
            uploaded = report.uploaded,
            not_delivered = report.not_delivered,
            duration_ms = report.duration_ms,
            "import did not finish"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::parse_record;
    use serde_json::json;

    fn ioc(id: u64, confidence: u8) -> Ioc {
        parse_record(json!({
            "id": id.to_string(), "ioc": format!("host{id}.example"), "ioc_type": "domain",
            "threat_type": "botnet_cc", "confidence_level": confidence,
            "first_seen": "2026-12-01 00:00:00 UTC"
        }))
        .unwrap()
    }

    fn selection(after_id: Option<u64>) -> Selection {
        Selection {
            types: IocType::ALL.into_iter().collect(),
            min_confidence: 50,
            expiration_days: 90,
            after_id,
        }
    }

    #[test]
    fn iocs_are_ordered_by_id_and_each_skip_is_counted_by_reason() {
        let now = time::macros::datetime!(2026-12-02 00:00 UTC);
        let iocs = vec![
            ioc(5, 90),
            ioc(3, 90),
            ioc(4, 10),
            ioc(5, 90),
            ioc(1, 90),
            ioc(2, 90),
        ];
        let mut skipped = SkipCounts::default();

        let kept = selection(Some(2)).apply(iocs, now, &mut skipped);

        let ids: Vec<u64> = kept.iter().map(|i| i.id).collect();
        assert_eq!(ids, [3, 5]);
        assert_eq!(skipped.get(SkipReason::AlreadyImported), 2);
        assert_eq!(skipped.get(SkipReason::BelowMinConfidence), 1);
        assert_eq!(skipped.get(SkipReason::Duplicate), 1);
    }

    #[test]
    fn repeated_ids_count_as_duplicates_even_below_the_checkpoint() {
        let now = time::macros::datetime!(2026-12-02 00:00 UTC);
        let mut skipped = SkipCounts::default();

        let kept = selection(Some(9)).apply(vec![ioc(7, 90), ioc(7, 90)], now, &mut skipped);

        assert!(kept.is_empty());
        assert_eq!(skipped.get(SkipReason::AlreadyImported), 1);
        assert_eq!(skipped.get(SkipReason::Duplicate), 1);
    }

    #[test]
    fn expired_iocs_are_skipped() {
        let later = time::macros::datetime!(2027-06-01 00:00 UTC);
        let mut skipped = SkipCounts::default();

        let kept = selection(None).apply(vec![ioc(1, 90)], later, &mut skipped);

        assert!(kept.is_empty());
        assert_eq!(skipped.get(SkipReason::Expired), 1);
    }
}
