//! The application: settings, the shared HTTP client and the one-import-at-a-time rule,
//! with the wiring that turns settings into a feed source, a sink and a checkpoint for each
//! import.

use std::io::Write;
use std::path::PathBuf;

use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::auth::{TokenSource, tenant_of_token};
use crate::checkpoint::{
    Checkpoint, CheckpointStore, ImportLock, Loaded, LockError, Version, feed_window,
};
use crate::config::{ConfigError, Settings, SinkKind};
use crate::feed::ThreatFoxClient;
use crate::import::{FeedSource, ImportPlan, OnSettled, Selection, describe_source, run_import};
use crate::report::{CheckpointSummary, ImportReport, Outcome};
use crate::sink::{
    DryRunSink, GRAPH_SCOPE, GraphOptions, GraphSink, SentinelOptions, SentinelSink, Sink,
};
use crate::uploader::UploadPolicy;

/// What one import should do.
#[derive(Default)]
pub struct ImportRequest {
    /// The feed window; `IMPORT_DAYS` when unset.
    pub days: Option<u8>,
    /// Send nothing; write the request bodies to `output` instead.
    pub dry_run: bool,
    /// Read a saved response instead of calling ThreatFox.
    pub input: Option<PathBuf>,
    /// Where a dry run writes its request bodies; discarded when unset.
    pub output: Option<Box<dyn Write + Send>>,
    /// Neither read nor write the checkpoint (the lock is still taken).
    pub no_checkpoint: bool,
}

/// Why an import did not start.
#[derive(Debug, thiserror::Error)]
pub enum ImportRefused {
    /// Another import holds the lock, in this process or another one.
    #[error(
        "another import is running, possibly on another instance; try again when it has \
         finished"
    )]
    Busy,
    /// A setting the import needs is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Shared state for every import this process runs.
pub struct App {
    settings: Settings,
    http: reqwest::Client,
    /// Refuses a second import in this process without asking the store.
    running: tokio::sync::Mutex<()>,
    checkpoints: CheckpointStore,
}

impl App {
    /// Builds the application from validated settings.
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.http_timeout)
            .connect_timeout(
                settings
                    .http_timeout
                    .min(std::time::Duration::from_secs(15)),
            )
            .user_agent(concat!("threatfox-sentinel/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let checkpoints = CheckpointStore::from_settings(&settings)?;
        Ok(Self {
            settings,
            http,
            running: tokio::sync::Mutex::new(()),
            checkpoints,
        })
    }

    /// The settings this application runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The HTTP client every upstream shares.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// Confirms that the checkpoint store can be read and the import lock taken (which
    /// writes to the store), then lets the lock go; imports nothing.
    pub async fn check_checkpoint_store(&self) -> Result<String, String> {
        let location = self.checkpoints.location();
        let lock = match self.checkpoints.acquire().await {
            Ok(lock) => lock,
            Err(LockError::Busy { .. }) => {
                return Ok(format!(
                    "{location} answers; an import holds the lock right now"
                ));
            }
            Err(err) => return Err(err.to_string()),
        };
        let loaded = self.checkpoints.load().await;
        lock.release().await;
        match loaded {
            Ok(loaded) => Ok(match loaded.checkpoint {
                Some(checkpoint) => format!("{location} holds last id {}", checkpoint.last_id),
                None => format!("{location} is writable and holds no checkpoint yet"),
            }),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Runs one import, unless one is already running here or on another instance.
    pub async fn import(&self, request: ImportRequest) -> Result<ImportReport, ImportRefused> {
        let _running = self.running.try_lock().map_err(|_| ImportRefused::Busy)?;
        let lock = match self.checkpoints.acquire().await {
            Ok(lock) => lock,
            Err(LockError::Busy { location }) => {
                info!(lock = %location, "import refused: another import holds the lock");
                return Err(ImportRefused::Busy);
            }
            Err(err) => {
                let days = request.days.unwrap_or(self.settings.import_days);
                let source = describe_source(request.input.as_deref());
                return Ok(self.failed_report(&source, days, request.dry_run, err.to_string()));
            }
        };
        let result = self.import_locked(request, &lock).await;
        lock.release().await;
        result
    }

    /// The import proper, once the lock is held.
    async fn import_locked(
        &self,
        request: ImportRequest,
        lock: &ImportLock,
    ) -> Result<ImportReport, ImportRefused> {
        let settings = &self.settings;
        let started = OffsetDateTime::now_utc();
        let loaded = if request.no_checkpoint {
            None
        } else {
            match self.checkpoints.load().await {
                Ok(loaded) => Some(loaded),
                Err(err) => {
                    let days = request.days.unwrap_or(settings.import_days);
                    let source = describe_source(request.input.as_deref());
                    return Ok(self.failed_report(&source, days, request.dry_run, err.to_string()));
                }
            }
        };
        let previous = loaded.as_ref().and_then(|l| l.checkpoint.clone());
        let window = feed_window(
            request.days,
            settings.import_days,
            previous.as_ref(),
            started,
        );
        let days = window.days;
        let source = match request.input {
            Some(path) => FeedSource::File(path),
            None => FeedSource::Api(ThreatFoxClient::new(
                self.http.clone(),
                settings.threatfox_api_url.clone(),
                settings.require_auth_key()?.clone(),
            )),
        };

        let sink = match self.build_sink(request.dry_run, request.output).await {
            Ok(sink) => sink,
            Err(message) => {
                return Ok(self.failed_report(&source.describe(), days, request.dry_run, message));
            }
        };
        let selection = Selection {
            types: settings.ioc_types.clone(),
            min_confidence: settings.min_confidence,
            expiration_days: settings.expiration_days,
            after_id: previous.as_ref().map(|c| c.last_id),
        };
        let limit = settings
            .max_requests_per_minute
            .unwrap_or_else(|| sink.requests_per_minute());
        let limit = if request.dry_run { u32::MAX } else { limit };
        let policy = UploadPolicy::new(limit, settings.max_attempts, settings.time_budget);
        let plan = ImportPlan {
            selection,
            policy,
            batch_size: settings.batch_size,
            days,
            dry_run: request.dry_run,
        };

        // Dry runs read the checkpoint, to show what a real import would send, but never
        // move it.
        let mut progress = Progress {
            lock,
            saving: loaded
                .filter(|_| !request.dry_run)
                .map(|loaded| Saving::new(&self.checkpoints, loaded)),
        };
        let mut report = run_import(&source, sink.as_ref(), plan, &mut progress).await;

        if report.outcome == Outcome::Complete
            && let Some(saving) = progress.saving.as_mut()
            && let Err(err) = saving.succeeded(started).await
        {
            // The delivered ids are saved; only the next window may come out wider.
            warn!(error = %err, "could not record the successful import in the checkpoint");
            report
                .warnings
                .push(format!("could not record the successful import: {err}"));
        }
        if let Some(gap) = window.gap_exceeded_days {
            warn!(
                gap_days = gap,
                "the last complete import is older than the 7 days threatfox serves: IoCs first \
                 seen in between were missed"
            );
            report.warnings.push(format!(
                "the last complete import was {gap:.1} days ago, more than the 7 days threatfox \
                 serves: IoCs first seen in between were missed"
            ));
        }
        if !request.no_checkpoint {
            report.checkpoint = Some(CheckpointSummary {
                location: self.checkpoints.location(),
                last_id_before: previous.as_ref().map(|c| c.last_id),
                last_id_after: progress
                    .saving
                    .as_ref()
                    .map_or(previous.as_ref(), |saving| saving.current.as_ref())
                    .map(|c| c.last_id),
            });
        }
        Ok(report)
    }

    /// A report for an import that failed before it read the feed.
    fn failed_report(&self, source: &str, days: u8, dry_run: bool, error: String) -> ImportReport {
        let mut report = ImportReport::new(self.settings.sink.as_str(), source, days, dry_run);
        report.outcome = Outcome::Failed;
        report.error = Some(error);
        error!(
            error = report.error.as_deref().unwrap_or(""),
            "import failed"
        );
        report
    }

    /// Builds the configured sink, wrapped for a dry run when asked.
    pub(crate) async fn build_sink(
        &self,
        dry_run: bool,
        output: Option<Box<dyn Write + Send>>,
    ) -> Result<Box<dyn Sink>, String> {
        let settings = &self.settings;
        let tokens = TokenSource::from_settings(settings).map_err(|err| err.to_string())?;
        let sink: Box<dyn Sink> = match settings.sink {
            SinkKind::Graph => {
                let tenant_id = match (&settings.azure_tenant_id, dry_run) {
                    (Some(tenant), _) => tenant.clone(),
                    (None, true) => {
                        warn!(
                            "AZURE_TENANT_ID is unset: the dry run shows a placeholder azureTenantId"
                        );
                        "AZURE_TENANT_ID-unset".to_owned()
                    }
                    (None, false) => {
                        let token = tokens
                            .token(GRAPH_SCOPE)
                            .await
                            .map_err(|err| err.to_string())?;
                        tenant_of_token(&token).ok_or(
                            "the access token carries no tenant id (tid claim): set AZURE_TENANT_ID",
                        )?
                    }
                };
                let options = GraphOptions {
                    tenant_id,
                    target_product: settings.graph_target_product,
                    action: settings.indicator_action.clone(),
                    expiration_days: settings.expiration_days,
                };
                Box::new(GraphSink::new(
                    self.http.clone(),
                    settings.graph_api_url.clone(),
                    tokens,
                    options,
                ))
            }
            SinkKind::Sentinel => {
                // Settings refuse IMPORT_SINK=sentinel without a workspace; checked again
                // here so that a Settings built another way cannot reach the API without one.
                let workspace_id = settings.sentinel_workspace_id.clone().ok_or(
                    "setting SENTINEL_WORKSPACE_ID is required when IMPORT_SINK is sentinel",
                )?;
                let options = SentinelOptions {
                    source_system: settings.sentinel_source_system.clone(),
                    expiration_days: settings.expiration_days,
                };
                Box::new(SentinelSink::new(
                    self.http.clone(),
                    settings.sentinel_api_url.clone(),
                    workspace_id,
                    tokens,
                    options,
                ))
            }
        };
        Ok(if dry_run {
            Box::new(DryRunSink::new(
                sink,
                output.unwrap_or_else(|| Box::new(std::io::sink())),
            ))
        } else {
            sink
        })
    }
}

/// What an import does after each settled batch: check that it still holds the lock, then
/// save the checkpoint (unless this import does not move it).
struct Progress<'a> {
    lock: &'a ImportLock,
    saving: Option<Saving<'a>>,
}

#[async_trait::async_trait]
impl OnSettled for &mut Progress<'_> {
    async fn settled(&mut self, highest_id: u64) -> Result<(), String> {
        self.lock.check().map_err(|err| err.to_string())?;
        match self.saving.as_mut() {
            Some(saving) => saving.delivered(highest_id).await,
            None => Ok(()),
        }
    }
}

/// The checkpoint as an import moves it: saved after every settled batch.
struct Saving<'a> {
    store: &'a CheckpointStore,
    current: Option<Checkpoint>,
    version: Version,
}

impl<'a> Saving<'a> {
    fn new(store: &'a CheckpointStore, loaded: Loaded) -> Self {
        Self {
            store,
            current: loaded.checkpoint,
            version: loaded.version,
        }
    }

    /// Records that every id up to `highest` is settled.
    async fn delivered(&mut self, highest: u64) -> Result<(), String> {
        let last_id = self
            .current
            .as_ref()
            .map_or(highest, |c| c.last_id.max(highest));
        let next = Checkpoint {
            last_id,
            delivered_at: OffsetDateTime::now_utc(),
            last_success_at: self.current.as_ref().and_then(|c| c.last_success_at),
        };
        self.save(next).await
    }

    /// Records that the import which started at `started` settled every record.
    async fn succeeded(&mut self, started: OffsetDateTime) -> Result<(), String> {
        let next = match &self.current {
            Some(current) => Checkpoint {
                last_success_at: Some(started),
                ..current.clone()
            },
            // Nothing was ever delivered: id 0 skips nothing, but the window is remembered.
            None => Checkpoint {
                last_id: 0,
                delivered_at: started,
                last_success_at: Some(started),
            },
        };
        self.save(next).await
    }

    async fn save(&mut self, next: Checkpoint) -> Result<(), String> {
        self.version = self
            .store
            .save(&next, &self.version)
            .await
            .map_err(|err| err.to_string())?;
        self.current = Some(next);
        Ok(())
    }
}
