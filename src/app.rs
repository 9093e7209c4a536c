//! The application: settings, the shared HTTP client and the one-import-at-a-time rule,
//! with the wiring that turns settings into a feed source and a sink for each import.

use std::io::Write;
use std::path::PathBuf;

use tracing::warn;

use crate::auth::{TokenSource, tenant_of_token};
use crate::config::{ConfigError, Settings, SinkKind};
use crate::feed::ThreatFoxClient;
use crate::import::{FeedSource, ImportPlan, Selection, run_import};
use crate::report::{ImportReport, Outcome};
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
}

/// Why an import did not start.
#[derive(Debug, thiserror::Error)]
pub enum ImportRefused {
    /// Another import holds the lock.
    #[error("an import is already running; try again when it has finished")]
    Busy,
    /// A setting the import needs is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Shared state for every import this process runs.
pub struct App {
    settings: Settings,
    http: reqwest::Client,
    running: tokio::sync::Mutex<()>,
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
        Ok(Self {
            settings,
            http,
            running: tokio::sync::Mutex::new(()),
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

    /// Runs one import, unless one is already running in this process.
    pub async fn import(&self, request: ImportRequest) -> Result<ImportReport, ImportRefused> {
        let _running = self.running.try_lock().map_err(|_| ImportRefused::Busy)?;
        let settings = &self.settings;
        let days = request.days.unwrap_or(settings.import_days);
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
                let mut report = ImportReport::new(
                    settings.sink.as_str(),
                    &source.describe(),
                    days,
                    request.dry_run,
                );
                report.outcome = Outcome::Failed;
                report.error = Some(message);
                return Ok(report);
            }
        };
        let selection = Selection {
            types: settings.ioc_types.clone(),
            min_confidence: settings.min_confidence,
            expiration_days: settings.expiration_days,
            after_id: None,
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
        let report = run_import(&source, sink.as_ref(), plan, |_| Ok(())).await;
        Ok(report)
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
