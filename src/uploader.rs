//! The bounded sequential uploader: the one place that decides when a request is sent.
//!
//! One request is in flight at a time. Requests are spaced evenly under the sink's rate
//! limit, so a normal run is never throttled; when the service throttles anyway, the
//! uploader waits exactly as long as it is told. Transient failures are retried with
//! exponential backoff and jitter, a refused token is renewed once, and a batch the service
//! rejects as a whole is split in halves until the offending items are isolated, so one bad
//! indicator never costs the other ninety-nine.

use std::ops::Range;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::sink::{SendError, Sink};

/// How the uploader paces and retries.
#[derive(Debug, Clone)]
pub struct UploadPolicy {
    /// Requests a minute the uploader stays under.
    pub requests_per_minute: u32,
    /// Tries of one request before the import gives up on it.
    pub max_attempts: u32,
    /// No new batch starts after this instant, and no wait runs past it.
    pub deadline: Instant,
    /// The first backoff pause; each retry doubles it, up to `backoff_cap`.
    pub backoff_base: Duration,
    /// The longest backoff pause.
    pub backoff_cap: Duration,
    /// Throttling answers tolerated for one request before giving up.
    pub max_throttle_waits: u32,
}

impl UploadPolicy {
    /// The default policy for a sink's limit, a try count and a time budget from now.
    pub fn new(requests_per_minute: u32, max_attempts: u32, budget: Duration) -> Self {
        Self {
            requests_per_minute,
            max_attempts,
            deadline: Instant::now() + budget,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            max_throttle_waits: 30,
        }
    }

    /// The even spacing between request starts: a minute over the limit, with 1% to spare
    /// so that clock drift never puts one request too many in a service's window.
    pub fn interval(&self) -> Duration {
        let limit = f64::from(self.requests_per_minute.max(1));
        Duration::from_secs_f64(60.0 / limit * 1.01)
    }
}

/// What the uploader did, for the import report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UploadStats {
    /// Requests sent, retries included.
    pub requests: u64,
    /// Requests sent again after a failure or a throttling answer.
    pub retries: u64,
    /// Throttling answers received.
    pub throttled: u64,
    /// Time spent waiting on throttling answers, in milliseconds.
    pub throttle_wait_ms: u64,
    /// Time spent in backoff pauses after failures, in milliseconds.
    pub backoff_wait_ms: u64,
    /// Batches split because the service rejected them as a whole.
    pub splits: u64,
}

/// Mapped indicators on their way, each with the ThreatFox id it came from.
///
/// Ids and items are kept side by side so that the items can be sent as they are, without
/// a copy.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The ThreatFox ids, in the order of `items`.
    pub ids: Vec<u64>,
    /// The sink's indicators.
    pub items: Vec<Value>,
}

impl Batch {
    /// An empty batch with room for `capacity` indicators.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            ids: Vec::with_capacity(capacity),
            items: Vec::with_capacity(capacity),
        }
    }

    /// Adds one indicator.
    pub fn push(&mut self, id: u64, item: Value) {
        self.ids.push(id);
        self.items.push(item);
    }

    /// How many indicators the batch holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no indicator.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The highest ThreatFox id in the batch.
    pub fn highest_id(&self) -> Option<u64> {
        self.ids.iter().copied().max()
    }
}

/// The settled fate of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Items the service accepted.
    pub delivered: u64,
    /// Items the service refused, with their ThreatFox id and the service's reason.
    pub rejected: Vec<(u64, String)>,
}

/// Why the uploader stopped before a batch was settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadStop {
    /// The time budget ran out; the batch was not (fully) sent.
    #[error("the time budget ran out (IMPORT_TIME_BUDGET_SECS); the next run carries on")]
    OutOfTime,
    /// The service kept failing, or failed in a way retries cannot fix.
    #[error("{0}")]
    Failed(String),
}

/// Why one request was not settled.
enum Unsettled {
    /// The service's answer, which retrying did not or cannot fix.
    Refused(SendError),
    /// The next try would have to wait past the time budget.
    NoTime,
}

/// Sends batches to one sink, one request at a time.
pub struct Uploader<'a> {
    sink: &'a dyn Sink,
    policy: UploadPolicy,
    stats: UploadStats,
    next_start: Option<Instant>,
}

impl<'a> Uploader<'a> {
    /// Creates an uploader for `sink`.
    pub fn new(sink: &'a dyn Sink, policy: UploadPolicy) -> Self {
        Self {
            sink,
            policy,
            stats: UploadStats::default(),
            next_start: None,
        }
    }

    /// What the uploader has done so far.
    pub fn stats(&self) -> &UploadStats {
        &self.stats
    }

    /// Whether the time budget still allows a new batch, counting the pacing pause the
    /// batch would have to wait first.
    pub fn has_time(&self) -> bool {
        let now = Instant::now();
        let start = self.next_start.map_or(now, |next| next.max(now));
        start < self.policy.deadline
    }

    /// Delivers one batch, settling every item as delivered or rejected.
    ///
    /// A batch rejected as a whole is split in halves until each rejection is pinned to
    /// one item. Items are sent in the order given.
    pub async fn upload(&mut self, batch: &Batch) -> Result<BatchOutcome, UploadStop> {
        if !self.has_time() {
            return Err(UploadStop::OutOfTime);
        }
        let (ids, items) = (&batch.ids, &batch.items);
        let mut outcome = BatchOutcome::default();
        // Ranges still to send, last first; a split pushes its two halves.
        let mut ranges: Vec<Range<usize>> = Vec::new();
        ranges.push(0..items.len());

        while let Some(range) = ranges.pop() {
            match self.send_with_retries(&items[range.clone()]).await {
                Ok(delivery) => {
                    for rejection in &delivery.rejected {
                        let id = ids[range.start + rejection.index.min(range.len() - 1)];
                        outcome.rejected.push((id, rejection.message.clone()));
                    }
                    outcome.delivered += (range.len() - delivery.rejected.len()) as u64;
                }
                Err(Unsettled::Refused(SendError::BatchRejected { message, .. }))
                    if range.len() == 1 =>
                {
                    outcome.rejected.push((ids[range.start], message));
                }
                Err(Unsettled::Refused(SendError::BatchRejected { message, .. })) => {
                    self.stats.splits += 1;
                    debug!(items = range.len(), %message, "batch rejected as a whole, splitting it");
                    let middle = range.start + range.len() / 2;
                    ranges.push(middle..range.end);
                    ranges.push(range.start..middle);
                }
                Err(Unsettled::NoTime) => return Err(UploadStop::OutOfTime),
                Err(Unsettled::Refused(err)) => return Err(UploadStop::Failed(err.to_string())),
            }
        }
        Ok(outcome)
    }

    /// Sends one request until it gets an answer that settles it.
    async fn send_with_retries(
        &mut self,
        items: &[Value],
    ) -> Result<crate::sink::Delivery, Unsettled> {
        let mut failures = 0;
        let mut throttles = 0;
        let mut renewed_token = false;
        loop {
            self.wait_for_turn().await;
            self.stats.requests += 1;
            let error = match self.sink.send(items).await {
                Ok(delivery) => return Ok(delivery),
                Err(err) => err,
            };

            let pause = match &error {
                SendError::Throttled { retry_after } => {
                    throttles += 1;
                    self.stats.throttled += 1;
                    if throttles > self.policy.max_throttle_waits {
                        return Err(Unsettled::Refused(SendError::Fatal {
                            message: format!(
                                "still throttled after {throttles} waits; lower UPLOAD_MAX_REQUESTS_PER_MINUTE"
                            ),
                        }));
                    }
                    let pause = retry_after.unwrap_or_else(|| self.backoff(throttles));
                    self.stats.throttle_wait_ms += pause.as_millis() as u64;
                    warn!(
                        wait_ms = pause.as_millis() as u64,
                        told = retry_after.is_some(),
                        "throttled by {}, waiting",
                        self.sink.name()
                    );
                    pause
                }
                SendError::Transient { reason } => {
                    failures += 1;
                    if failures >= self.policy.max_attempts {
                        return Err(Unsettled::Refused(SendError::Fatal {
                            message: format!(
                                "gave up after {failures} attempts (UPLOAD_MAX_ATTEMPTS): {reason}"
                            ),
                        }));
                    }
                    let pause = self.backoff(failures);
                    self.stats.backoff_wait_ms += pause.as_millis() as u64;
                    warn!(attempt = failures, wait_ms = pause.as_millis() as u64, %reason, "request to {} failed, retrying", self.sink.name());
                    pause
                }
                SendError::Unauthorized { message } if !renewed_token => {
                    renewed_token = true;
                    warn!(%message, "{} refused the token, retrying once with a fresh one", self.sink.name());
                    Duration::ZERO
                }
                _ => return Err(Unsettled::Refused(error)),
            };

            if Instant::now() + pause > self.policy.deadline {
                warn!(
                    wait_ms = pause.as_millis() as u64,
                    "the next try would end past the time budget; stopping"
                );
                return Err(Unsettled::NoTime);
            }
            self.stats.retries += 1;
            tokio::time::sleep(pause).await;
            self.next_start = Some(Instant::now());
        }
    }

    /// Waits until the pacing interval since the previous request has passed.
    ///
    /// Turns are counted from the scheduled start, not from when the timer fired: timers
    /// wake up to a millisecond late, and counting from the wake-up would add that to every
    /// request. A late wake-up lets the next request follow a little sooner, which the 1%
    /// margin in [`UploadPolicy::interval`] absorbs.
    async fn wait_for_turn(&mut self) {
        let now = Instant::now();
        let start = match self.next_start {
            Some(next) if next > now => {
                tokio::time::sleep_until(next).await;
                next
            }
            _ => now,
        };
        self.next_start = Some(start + self.policy.interval());
    }

    /// Exponential backoff with jitter: a random pause between half and all of
    /// `base * 2^(n-1)`, capped, so that retries from several clients spread out.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let ceiling = self
            .policy
            .backoff_base
            .saturating_mul(1 << exponent)
            .min(self.policy.backoff_cap);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use serde_json::json;

    use super::*;
    use crate::feed::{Ioc, SkipReason};
    use crate::sink::{Delivery, ItemRejection};

    /// A sink that answers from a script, then accepts everything; items with `"bad": true`
    /// make the whole batch fail with 400, as a strict service would.
    #[derive(Default)]
    struct ScriptedSink {
        script: Mutex<VecDeque<Result<Delivery, SendError>>>,
        sent: Mutex<Vec<(Instant, Vec<Value>)>>,
    }

    impl ScriptedSink {
        fn answering(script: impl IntoIterator<Item = Result<Delivery, SendError>>) -> Self {
            Self {
                script: Mutex::new(script.into_iter().collect()),
                ..Default::default()
            }
        }

        fn sent(&self) -> Vec<(Instant, Vec<Value>)> {
            self.sent.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Sink for ScriptedSink {
        fn name(&self) -> &'static str {
            "scripted"
        }

        fn requests_per_minute(&self) -> u32 {
            1_000
        }

        fn map(&self, _ioc: &Ioc) -> Result<Value, SkipReason> {
            Err(SkipReason::UnsupportedBySink)
        }

        fn request_body(&self, items: &[Value]) -> Result<Vec<u8>, SendError> {
            Ok(serde_json::to_vec(items).unwrap())
        }

        async fn send(&self, items: &[Value]) -> Result<Delivery, SendError> {
            self.sent
                .lock()
                .unwrap()
                .push((Instant::now(), items.to_vec()));
            if let Some(answer) = self.script.lock().unwrap().pop_front() {
                return answer;
            }
            if items.iter().any(|item| item["bad"] == true) {
                return Err(SendError::BatchRejected {
                    status: 400,
                    message: "bad item".into(),
                });
            }
            Ok(Delivery::default())
        }

        async fn probe(&self) -> Result<String, SendError> {
            Ok(String::new())
        }
    }

    fn batch(ids: impl IntoIterator<Item = u64>) -> Batch {
        let mut batch = Batch::default();
        for id in ids {
            batch.push(id, json!({ "id": id }));
        }
        batch
    }

    fn policy(requests_per_minute: u32, budget_secs: u64) -> UploadPolicy {
        UploadPolicy::new(requests_per_minute, 6, Duration::from_secs(budget_secs))
    }

    fn throttled(wait: Option<u64>) -> Result<Delivery, SendError> {
        Err(SendError::Throttled {
            retry_after: wait.map(Duration::from_secs),
        })
    }

    fn transient() -> Result<Delivery, SendError> {
        Err(SendError::Transient {
            reason: "HTTP 503".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_requests_wait_exactly_the_retry_after() {
        let sink = ScriptedSink::answering([throttled(Some(7))]);
        let mut uploader = Uploader::new(&sink, policy(60_000, 600));

        let outcome = uploader.upload(&batch(1..=3)).await.unwrap();

        let sent = sink.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].0 - sent[0].0, Duration::from_secs(7));
        assert_eq!(sent[0].1, sent[1].1, "the same batch is sent again");
        assert_eq!(outcome.delivered, 3);
        let stats = uploader.stats();
        assert_eq!((stats.requests, stats.retries, stats.throttled), (2, 1, 1));
        assert_eq!(stats.throttle_wait_ms, 7_000);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_without_retry_after_falls_back_to_backoff() {
        let sink = ScriptedSink::answering([throttled(None), throttled(None)]);
        let mut uploader = Uploader::new(&sink, policy(60_000, 600));

        uploader.upload(&batch([1])).await.unwrap();

        let sent = sink.sent();
        let first = sent[1].0 - sent[0].0;
        let second = sent[2].0 - sent[1].0;
        assert!(
            first >= Duration::from_millis(500) && first <= Duration::from_secs(1),
            "{first:?}"
        );
        assert!(
            second >= Duration::from_secs(1) && second <= Duration::from_secs(2),
            "{second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_then_give_up_after_max_attempts() {
        let sink = ScriptedSink::answering((0..10).map(|_| transient()));
        let mut uploader = Uploader::new(
            &sink,
            UploadPolicy::new(60_000, 3, Duration::from_secs(600)),
        );

        let stop = uploader.upload(&batch(1..=2)).await.unwrap_err();

        assert!(
            matches!(&stop, UploadStop::Failed(m) if m.contains("gave up after 3 attempts")),
            "{stop:?}"
        );
        let sent = sink.sent();
        assert_eq!(sent.len(), 3);
        assert!(sent[2].0 - sent[1].0 > sent[1].0 - sent[0].0 - Duration::from_millis(500));
        assert_eq!(uploader.stats().retries, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_tried_once_more_and_then_fails() {
        let refused = || {
            Err(SendError::Unauthorized {
                message: "expired".into(),
            })
        };
        let sink = ScriptedSink::answering([refused(), refused()]);
        let mut uploader = Uploader::new(&sink, policy(60_000, 600));

        let stop = uploader.upload(&batch([1])).await.unwrap_err();

        assert_eq!(sink.sent().len(), 2);
        assert!(matches!(stop, UploadStop::Failed(m) if m.contains("401")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_batch_is_split_until_only_the_bad_items_are_left() {
        let sink = ScriptedSink::default();
        let mut pending = batch(1..=10);
        pending.items[3]["bad"] = json!(true);
        pending.items[8]["bad"] = json!(true);
        let mut uploader = Uploader::new(&sink, policy(60_000, 600));

        let outcome = uploader.upload(&pending).await.unwrap();

        assert_eq!(outcome.delivered, 8);
        assert_eq!(
            outcome.rejected,
            [(4, "bad item".to_owned()), (9, "bad item".to_owned())]
        );
        let delivered: Vec<u64> = sink
            .sent()
            .iter()
            .filter(|(_, items)| items.iter().all(|i| i["bad"] != true))
            .flat_map(|(_, items)| {
                items
                    .iter()
                    .map(|i| i["id"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            delivered,
            [1, 2, 3, 5, 6, 7, 8, 10],
            "each good item sent once, in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_item_rejections_are_mapped_back_to_their_ids() {
        let partial = Delivery {
            rejected: vec![ItemRejection {
                index: 1,
                message: "no".into(),
            }],
        };
        let sink = ScriptedSink::answering([Ok(partial)]);
        let mut uploader = Uploader::new(&sink, policy(60_000, 600));

        let outcome = uploader.upload(&batch([10, 20, 30])).await.unwrap();

        assert_eq!(
            outcome,
            BatchOutcome {
                delivered: 2,
                rejected: vec![(20, "no".into())]
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_evenly_under_the_rate_limit() {
        let sink = ScriptedSink::default();
        let mut uploader = Uploader::new(&sink, policy(100, 3_600));

        for id in 1..=4 {
            uploader.upload(&batch([id])).await.unwrap();
        }

        let sent = sink.sent();
        for pair in sent.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(gap >= Duration::from_millis(600), "{gap:?}");
            assert!(gap <= Duration::from_millis(610), "{gap:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_batch_starts_once_the_time_budget_is_spent() {
        let sink = ScriptedSink::default();
        // Six requests a minute: the second batch could only start after ten seconds.
        let mut uploader = Uploader::new(&sink, policy(6, 10));

        let first = uploader.upload(&batch([1])).await;
        let second = uploader.upload(&batch([2])).await;

        assert!(first.is_ok());
        assert_eq!(second, Err(UploadStop::OutOfTime));
        assert_eq!(sink.sent().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_budget_stops_the_import_instead() {
        let sink = ScriptedSink::answering([throttled(Some(3_600))]);
        let mut uploader = Uploader::new(&sink, policy(60_000, 60));

        let stop = uploader.upload(&batch([1])).await;

        assert_eq!(stop, Err(UploadStop::OutOfTime));
        assert_eq!(
            sink.sent().len(),
            1,
            "nothing is sent while the service says to wait"
        );
    }
}
