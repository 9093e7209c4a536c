//! The blob store: the checkpoint and the lock in the function app's storage account, where
//! every instance sees them.
//!
//! `checkpoint.json` is written with ETag conditions: `If-Match` on the ETag that was read,
//! `If-None-Match: *` when there was none, so a writer that raced another gets a conflict
//! instead of overwriting its progress. The lock is a lease on the blob `import.lock`,
//! renewed in the background while the import runs; a holder that crashes stops renewing, and
//! the lease expires on its own. Access uses the function's identity, never a shared key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RequestContent, StatusCode, Url};
use azure_storage_blob::models::{BlobClientDownloadOptions, BlobClientUploadOptions};
use azure_storage_blob::{BlobClient, BlobContainerClient, BlobContainerClientOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::{Checkpoint, CheckpointError, Loaded, LockError, Version, VersionKind};

/// The container that holds the checkpoint and the lock.
pub const CHECKPOINT_CONTAINER: &str = "threatfox-sentinel";

const CHECKPOINT_BLOB: &str = "checkpoint.json";
const LOCK_BLOB: &str = "import.lock";

/// How the blob store is reached and how it holds its lease.
#[derive(Debug, Clone)]
pub struct BlobStoreOptions {
    /// The container, created when missing.
    pub container: String,
    /// How long a lease lasts unless renewed: 15 to 60 seconds, as Azure allows.
    pub lease_duration: Duration,
    /// How often the lease is renewed; well under `lease_duration`, so one failed renewal
    /// can be retried before the lease runs out.
    pub renew_interval: Duration,
    /// HTTP pipeline options; tests set a transport that trusts their emulator.
    pub client_options: ClientOptions,
}

impl Default for BlobStoreOptions {
    fn default() -> Self {
        Self {
            container: CHECKPOINT_CONTAINER.to_owned(),
            lease_duration: Duration::from_secs(60),
            renew_interval: Duration::from_secs(20),
            client_options: ClientOptions::default(),
        }
    }
}

/// The checkpoint and the lock in a blob container.
#[derive(Clone)]
pub struct BlobStore {
    container: Arc<BlobContainerClient>,
    checkpoint: Arc<BlobClient>,
    lock: Arc<BlobClient>,
    lease_duration: Duration,
    renew_interval: Duration,
}

// The SDK's clients are not `Debug`; their URLs say all a reader needs.
impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("container", &self.container.url().as_str())
            .field("lease_duration", &self.lease_duration)
            .field("renew_interval", &self.renew_interval)
            .finish()
    }
}

impl BlobStore {
    /// A store in `options.container` of the blob service at `service` (such as
    /// `https://<account>.blob.core.windows.net`), authenticated by `credential`.
    pub fn new(
        service: &Url,
        credential: Arc<dyn TokenCredential>,
        options: BlobStoreOptions,
    ) -> anyhow::Result<Self> {
        let lease_secs = options.lease_duration.as_secs();
        anyhow::ensure!(
            (15..=60).contains(&lease_secs),
            "the lease duration must be 15 to 60 seconds, not {lease_secs}"
        );
        anyhow::ensure!(
            options.renew_interval < options.lease_duration,
            "the lease must be renewed more often than it lasts"
        );
        let mut container_url = service.clone();
        container_url
            .path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{service} cannot hold a container path"))?
            .pop_if_empty()
            .push(&options.container);
        let client_options = BlobContainerClientOptions {
            client_options: options.client_options,
            ..Default::default()
        };
        let container =
            BlobContainerClient::new(container_url, Some(credential), Some(client_options))?;
        Ok(Self {
            checkpoint: Arc::new(container.blob_client(CHECKPOINT_BLOB)),
            lock: Arc::new(container.blob_client(LOCK_BLOB)),
            container: Arc::new(container),
            lease_duration: options.lease_duration,
            renew_interval: options.renew_interval,
        })
    }

    /// The checkpoint blob.
    pub fn checkpoint_url(&self) -> &Url {
        self.checkpoint.url()
    }

    /// Reads the checkpoint and its ETag; a missing blob or container means no import
    /// delivered anything yet.
    pub async fn load(&self) -> Result<Loaded, CheckpointError> {
        let location = self.checkpoint_url().to_string();
        let failed = |err: &azure_core::Error| CheckpointError::Store {
            action: "read",
            location: location.clone(),
            reason: describe(err),
        };
        let download = match self
            .checkpoint
            .download(Some(BlobClientDownloadOptions::default()))
            .await
        {
            Ok(download) => download,
            Err(err) if err.http_status() == Some(StatusCode::NotFound) => {
                return Ok(Loaded {
                    checkpoint: None,
                    version: Version::absent(),
                });
            }
            Err(err) => return Err(failed(&err)),
        };
        let etag = download.properties.etag.clone();
        let body = download.body.collect().await.map_err(|err| failed(&err))?;

        let checkpoint = serde_json::from_slice(&body).map_err(|err| CheckpointError::Corrupt {
            location: location.clone(),
            reason: err.to_string(),
        })?;
        let etag = etag.ok_or_else(|| CheckpointError::Store {
            action: "read",
            location: location.clone(),
            reason: "the answer carried no ETag".to_owned(),
        })?;
        Ok(Loaded {
            checkpoint: Some(checkpoint),
            version: Version(VersionKind::ETag(etag.to_string())),
        })
    }

    /// Replaces the checkpoint if its ETag is still `expected` (creates it if `expected` is
    /// absent and nobody created it meanwhile).
    pub async fn save(
        &self,
        checkpoint: &Checkpoint,
        expected: &Version,
    ) -> Result<Version, CheckpointError> {
        let location = self.checkpoint_url().to_string();
        let failed = |reason: String| CheckpointError::Store {
            action: "write",
            location: location.clone(),
            reason,
        };
        let body = serde_json::to_vec(checkpoint).map_err(|err| failed(err.to_string()))?;
        let mut options = BlobClientUploadOptions {
            blob_content_type: Some("application/json".to_owned()),
            ..Default::default()
        };
        match &expected.0 {
            VersionKind::Absent => options.if_none_match = Some("*".into()),
            VersionKind::ETag(etag) => options.if_match = Some(etag.clone().into()),
            VersionKind::Revision(_) => {
                return Err(failed(
                    "the version read came from the file store".to_owned(),
                ));
            }
        }

        let mut uploaded = self
            .checkpoint
            .upload(RequestContent::from(body.clone()), Some(options.clone()))
            .await;
        if uploaded.as_ref().is_err_and(is_container_missing) {
            self.create_container().await.map_err(failed)?;
            uploaded = self
                .checkpoint
                .upload(RequestContent::from(body), Some(options))
                .await;
        }
        let uploaded = match uploaded {
            Ok(uploaded) => uploaded,
            Err(err) if is_condition_failure(&err) => {
                return Err(CheckpointError::Conflict { location });
            }
            Err(err) => return Err(failed(describe(&err))),
        };
        let etag = uploaded
            .etag
            .ok_or_else(|| failed("the answer carried no ETag".to_owned()))?;
        debug!(last_id = checkpoint.last_id, "checkpoint saved");
        Ok(Version(VersionKind::ETag(etag.to_string())))
    }

    /// Takes a lease on the lock blob, creating the container and the blob on first use, and
    /// starts renewing it.
    pub async fn acquire(&self) -> Result<Lease, LockError> {
        let location = self.lock.url().to_string();
        let lease_id = uuid::Uuid::new_v4().to_string();
        let failed = |reason: String| LockError::Failed {
            location: location.clone(),
            reason,
        };

        let mut leased = self.try_lease(&lease_id).await;
        if leased
            .as_ref()
            .is_err_and(|err| err.http_status() == Some(StatusCode::NotFound))
        {
            self.create_lock_blob().await.map_err(failed)?;
            leased = self.try_lease(&lease_id).await;
        }
        match leased {
            Ok(()) => {}
            Err(err) if err.http_status() == Some(StatusCode::Conflict) => {
                return Err(LockError::Busy { location });
            }
            Err(err) => return Err(failed(describe(&err))),
        }

        let lost = Arc::new(Mutex::new(None));
        let renewal = tokio::spawn(renew(
            Arc::clone(&self.lock),
            lease_id.clone(),
            self.lease_duration,
            self.renew_interval,
            Arc::clone(&lost),
        ));
        Ok(Lease {
            lock: Arc::clone(&self.lock),
            lease_id,
            renewal: Some(renewal),
            lost,
        })
    }

    async fn try_lease(&self, lease_id: &str) -> azure_core::Result<()> {
        let options = azure_storage_blob::models::BlobClientAcquireLeaseOptions {
            proposed_lease_id: Some(lease_id.to_owned()),
            ..Default::default()
        };
        // Whole seconds from 15 to 60, checked in `new`.
        let seconds = self.lease_duration.as_secs() as i32;
        self.lock.acquire_lease(seconds, Some(options)).await?;
        Ok(())
    }

    async fn create_lock_blob(&self) -> Result<(), String> {
        let create = || {
            let options = BlobClientUploadOptions {
                if_none_match: Some("*".into()),
                ..Default::default()
            };
            self.lock
                .upload(RequestContent::from(Vec::<u8>::new()), Some(options))
        };
        let mut created = create().await;
        if created.as_ref().is_err_and(is_container_missing) {
            self.create_container().await?;
            created = create().await;
        }
        match created {
            // Another instance created it first: the lease decides who runs.
            Err(err) if is_condition_failure(&err) => Ok(()),
            Err(err) => Err(describe(&err)),
            Ok(_) => Ok(()),
        }
    }

    async fn create_container(&self) -> Result<(), String> {
        match self.container.create(None).await {
            Ok(_) => Ok(()),
            Err(err) if err.http_status() == Some(StatusCode::Conflict) => Ok(()),
            Err(err) => Err(format!(
                "could not create container {}: {}",
                self.container.url(),
                describe(&err)
            )),
        }
    }
}

/// The held lease on the lock blob.
pub struct Lease {
    lock: Arc<BlobClient>,
    lease_id: String,
    renewal: Option<JoinHandle<()>>,
    /// Set by the renewal task when the lease could not be kept.
    lost: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("lock", &self.lock.url().as_str())
            .field("lease_id", &self.lease_id)
            .finish()
    }
}

impl Lease {
    /// Fails once the renewal task has given up on the lease.
    pub fn check(&self) -> Result<(), LockError> {
        let lost = self
            .lost
            .lock()
            .map(|lost| lost.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        match lost {
            None => Ok(()),
            Some(reason) => Err(LockError::Lost {
                location: self.lock.url().to_string(),
                reason,
            }),
        }
    }

    /// Stops renewing and releases the lease, so the next import need not wait for it to
    /// expire.
    pub async fn release(mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        release(&self.lock, self.lease_id.clone()).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(renewal) = self.renewal.take() else {
            return;
        };
        // Dropped without `release`, as when the import's task is cancelled: release in the
        // background where a runtime is running; otherwise the lease expires on its own.
        renewal.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lock = Arc::clone(&self.lock);
            let lease_id = self.lease_id.clone();
            runtime.spawn(async move { release(&lock, lease_id).await });
        }
    }
}

async fn release(lock: &BlobClient, lease_id: String) {
    if let Err(err) = lock.release_lease(lease_id, None).await {
        warn!(
            error = %describe(&err),
            "could not release the import lock; it expires within a minute"
        );
    }
}

/// Renews the lease every `interval` until aborted. A failed renewal is retried at the next
/// tick; once the lease has gone unrenewed for its whole duration it is counted as lost.
async fn renew(
    lock: Arc<BlobClient>,
    lease_id: String,
    duration: Duration,
    interval: Duration,
    lost: Arc<Mutex<Option<String>>>,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        match lock.renew_lease(lease_id.clone(), None).await {
            Ok(_) => {
                renewed = Instant::now();
                debug!("import lock renewed");
            }
            Err(err) => {
                let reason = describe(&err);
                let is_refused = err.http_status() == Some(StatusCode::Conflict);
                if is_lost(is_refused, renewed.elapsed(), interval, duration) {
                    error!(error = %reason, "the import lock was lost");
                    if let Ok(mut slot) = lost.lock() {
                        *slot = Some(reason);
                    }
                    return;
                }
                warn!(error = %reason, "could not renew the import lock, retrying");
            }
        }
    }
}

/// Whether a failed renewal means the lease is gone: the service refused it outright (409:
/// it expired and was taken, or was broken), or it will have expired before the next try.
fn is_lost(is_refused: bool, since_renewed: Duration, interval: Duration, lease: Duration) -> bool {
    is_refused || since_renewed + interval >= lease
}

/// Whether a write failed on its ETag condition (412), or on `If-None-Match: *` because the
/// blob exists (409).
fn is_condition_failure(err: &azure_core::Error) -> bool {
    matches!(
        err.http_status(),
        Some(StatusCode::PreconditionFailed) | Some(StatusCode::Conflict)
    )
}

fn is_container_missing(err: &azure_core::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::HttpResponse { error_code: Some(code), .. } if code == "ContainerNotFound"
    )
}

/// An error's message with its causes, and a hint when storage refused the identity.
fn describe(err: &azure_core::Error) -> String {
    let text = crate::error_chain(err);
    match err.http_status() {
        Some(StatusCode::Forbidden) | Some(StatusCode::Unauthorized) => format!(
            "{text} (grant the function app's identity the Storage Blob Data Owner role on the \
             account named by AzureWebJobsStorage__accountName)"
        ),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(60);
    const INTERVAL: Duration = Duration::from_secs(20);

    #[test]
    fn one_failed_renewal_is_retried_while_the_lease_lasts() {
        let first_failure = is_lost(false, INTERVAL, INTERVAL, LEASE);
        let second_failure = is_lost(false, INTERVAL * 2, INTERVAL, LEASE);

        assert!(!first_failure);
        assert!(second_failure);
    }

    #[test]
    fn a_refused_renewal_loses_the_lease_at_once() {
        assert!(is_lost(true, INTERVAL, INTERVAL, LEASE));
    }

    #[test]
    fn a_store_needs_a_lease_azure_allows() {
        let service = Url::parse("https://account.blob.core.windows.net").unwrap();
        let credential: Arc<dyn TokenCredential> = Arc::new(NoCredential);
        let options = |lease, renew| BlobStoreOptions {
            lease_duration: Duration::from_secs(lease),
            renew_interval: Duration::from_secs(renew),
            ..Default::default()
        };

        let too_short = BlobStore::new(&service, credential.clone(), options(10, 5));
        let too_long = BlobStore::new(&service, credential.clone(), options(90, 20));
        let never_renewed = BlobStore::new(&service, credential.clone(), options(15, 15));
        let fine = BlobStore::new(&service, credential, options(60, 20)).unwrap();

        assert!(too_short.is_err() && too_long.is_err() && never_renewed.is_err());
        assert_eq!(
            fine.checkpoint_url().as_str(),
            "https://account.blob.core.windows.net/threatfox-sentinel/checkpoint.json"
        );
    }

    #[derive(Debug)]
    struct NoCredential;

    #[async_trait::async_trait]
    impl TokenCredential for NoCredential {
        async fn get_token(
            &self,
            _scopes: &[&str],
            _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                "no token in this test",
            ))
        }
    }
}
