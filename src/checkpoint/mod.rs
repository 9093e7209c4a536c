//! The checkpoint and the import lock: what lets an import resume where the last one
//! stopped, and keeps imports one at a time across processes and instances.
//!
//! The checkpoint records the highest ThreatFox id delivered. IoCs are uploaded in ascending
//! id order and the checkpoint is saved after every settled batch, so everything at or below
//! it has reached the sink. Every save names the version it replaces, so two writers can
//! never silently lose each other's progress.
//!
//! Two stores keep both: a directory on disk ([`FileStore`]) for the command line and local
//! runs, and a blob container ([`BlobStore`]) in Azure, where instances share no disk.

mod blob;
mod file;
mod window;

pub use blob::{BlobStore, BlobStoreOptions, CHECKPOINT_CONTAINER};
pub use file::FileStore;
pub use window::{FEED_MAX_DAYS, Window, feed_window};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::auth::TokenSource;
use crate::config::Settings;

/// Where the last import left off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The highest ThreatFox id delivered; ids at or below it are skipped.
    pub last_id: u64,
    /// When `last_id` was saved.
    #[serde(with = "time::serde::rfc3339")]
    pub delivered_at: OffsetDateTime,
    /// When the last complete import started; the next feed window reaches back to it.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_success_at: Option<OffsetDateTime>,
}

/// The version of the stored checkpoint that a save expects to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(VersionKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum VersionKind {
    /// Nothing is stored yet.
    Absent,
    /// The file store's revision counter.
    Revision(u64),
    /// The blob's ETag.
    ETag(String),
}

impl Version {
    /// The version of a store that holds no checkpoint yet.
    pub fn absent() -> Self {
        Version(VersionKind::Absent)
    }
}

/// A checkpoint as read, with the version a save must match.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The checkpoint, or `None` before the first import delivered anything.
    pub checkpoint: Option<Checkpoint>,
    /// What the next save must replace.
    pub version: Version,
}

/// Why the checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Someone else wrote the checkpoint since this import read it.
    #[error(
        "the checkpoint {location} changed since this import read it: another import wrote it, \
         so this one stops rather than overwrite its progress"
    )]
    Conflict {
        /// The file or blob.
        location: String,
    },
    /// The stored checkpoint is not one this program wrote.
    #[error(
        "the checkpoint {location} is unreadable ({reason}): delete it to start again from \
         IMPORT_DAYS"
    )]
    Corrupt {
        /// The file or blob.
        location: String,
        /// The parser's message.
        reason: String,
    },
    /// The store could not be reached or refused the request.
    #[error("could not {action} the checkpoint {location}: {reason}")]
    Store {
        /// `read` or `write`.
        action: &'static str,
        /// The file or blob.
        location: String,
        /// The cause, with a hint at the fix when there is one.
        reason: String,
    },
}

/// Why the import lock was not taken or not kept.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another import holds the lock, possibly on another instance.
    #[error("another import is running (it holds {location}), possibly on another instance")]
    Busy {
        /// The lock file or blob, with what is known of its holder.
        location: String,
    },
    /// The lock could not be taken for another reason.
    #[error("could not take the import lock {location}: {reason}")]
    Failed {
        /// The lock file or blob.
        location: String,
        /// The cause, with a hint at the fix when there is one.
        reason: String,
    },
    /// The lock was taken but could not be kept, so another import may have started.
    #[error("the import lock {location} was lost: {reason}")]
    Lost {
        /// The lock blob.
        location: String,
        /// Why renewing it failed.
        reason: String,
    },
}

/// Where the checkpoint and the lock live.
#[derive(Debug, Clone)]
pub enum CheckpointStore {
    /// A directory on disk.
    File(FileStore),
    /// A blob container.
    Blob(BlobStore),
}

impl CheckpointStore {
    /// The blob store when the Functions storage account is configured, the file store in
    /// `STATE_DIR` otherwise.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let Some(service) = &settings.checkpoint_blob_service else {
            return Ok(CheckpointStore::File(FileStore::new(&settings.state_dir)));
        };
        let tokens = TokenSource::from_settings(settings)?;
        let store = BlobStore::new(service, tokens.credential(), BlobStoreOptions::default())?;
        Ok(CheckpointStore::Blob(store))
    }

    /// Where the checkpoint is kept, for logs and reports.
    pub fn location(&self) -> String {
        match self {
            CheckpointStore::File(store) => store.checkpoint_path().display().to_string(),
            CheckpointStore::Blob(store) => store.checkpoint_url().to_string(),
        }
    }

    /// Reads the checkpoint and its version.
    pub async fn load(&self) -> Result<Loaded, CheckpointError> {
        match self {
            CheckpointStore::File(store) => {
                let stopped = store_stopped("read", store);
                let store = store.clone();
                spawn_blocking(move || store.load(), stopped).await?
            }
            CheckpointStore::Blob(store) => store.load().await,
        }
    }

    /// Replaces the checkpoint at `expected` with `checkpoint` and returns the new version;
    /// fails with [`CheckpointError::Conflict`] when the stored version is another.
    pub async fn save(
        &self,
        checkpoint: &Checkpoint,
        expected: &Version,
    ) -> Result<Version, CheckpointError> {
        match self {
            CheckpointStore::File(store) => {
                let stopped = store_stopped("write", store);
                let (store, checkpoint, expected) =
                    (store.clone(), checkpoint.clone(), expected.clone());
                spawn_blocking(move || store.save(&checkpoint, &expected), stopped).await?
            }
            CheckpointStore::Blob(store) => store.save(checkpoint, expected).await,
        }
    }

    /// Takes the import lock, or says that another import holds it.
    pub async fn acquire(&self) -> Result<ImportLock, LockError> {
        match self {
            CheckpointStore::File(store) => {
                let stopped = LockError::Failed {
                    location: store.lock_path().display().to_string(),
                    reason: "the file task stopped".to_owned(),
                };
                let store = store.clone();
                let lock = spawn_blocking(move || store.acquire(), stopped).await??;
                Ok(ImportLock(LockKind::File(lock)))
            }
            CheckpointStore::Blob(store) => Ok(ImportLock(LockKind::Blob(store.acquire().await?))),
        }
    }
}

/// The error for a file task that panicked instead of answering.
fn store_stopped(action: &'static str, store: &FileStore) -> CheckpointError {
    CheckpointError::Store {
        action,
        location: store.checkpoint_path().display().to_string(),
        reason: "the file task stopped".to_owned(),
    }
}

/// Runs blocking file work off the async threads; `stopped` is the error if it panics.
async fn spawn_blocking<T: Send + 'static, E>(
    work: impl FnOnce() -> T + Send + 'static,
    stopped: E,
) -> Result<T, E> {
    tokio::task::spawn_blocking(work).await.map_err(|_| stopped)
}

/// The import lock, held until [`ImportLock::release`] or drop.
#[derive(Debug)]
pub struct ImportLock(LockKind);

#[derive(Debug)]
enum LockKind {
    File(file::FileLock),
    Blob(blob::Lease),
}

impl ImportLock {
    /// Fails when the lock can no longer be relied on, so an import stops before it writes
    /// anything more.
    pub fn check(&self) -> Result<(), LockError> {
        match &self.0 {
            LockKind::File(_) => Ok(()),
            LockKind::Blob(lease) => lease.check(),
        }
    }

    /// Releases the lock now; dropping it releases it too, a little later for a blob.
    pub async fn release(self) {
        match self.0 {
            LockKind::File(lock) => drop(lock),
            LockKind::Blob(lease) => lease.release().await,
        }
    }
}
