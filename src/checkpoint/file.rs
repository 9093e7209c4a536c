//! The file store: `checkpoint.json` and `import.lock` in `STATE_DIR`, for the command line
//! and local runs.
//!
//! The checkpoint is replaced atomically (a temporary file in the same directory, flushed to
//! disk, then renamed over the old one), so a crash leaves either the old or the new
//! checkpoint, never half of one. The lock is an OS file lock on `import.lock`: the OS drops
//! it when the holder exits, however it exits.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Checkpoint, CheckpointError, Loaded, LockError, Version, VersionKind};

const CHECKPOINT_FILE: &str = "checkpoint.json";
const LOCK_FILE: &str = "import.lock";

/// The checkpoint and the lock in a local directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

/// The file's content: the checkpoint and a revision that every save increments, which is
/// what a save compares to detect another writer.
#[derive(Serialize, Deserialize)]
struct Stored {
    revision: u64,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

impl FileStore {
    /// A store in `dir`, which is created on the first save or lock.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    /// The lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// Reads the checkpoint; a missing file means no import delivered anything yet.
    pub fn load(&self) -> Result<Loaded, CheckpointError> {
        Ok(match self.read()? {
            None => Loaded {
                checkpoint: None,
                version: Version::absent(),
            },
            Some(stored) => Loaded {
                checkpoint: Some(stored.checkpoint),
                version: Version(VersionKind::Revision(stored.revision)),
            },
        })
    }

    /// Replaces the checkpoint if it is still at `expected`.
    ///
    /// The comparison and the rename are not one atomic step: two processes could both pass
    /// the comparison. Imports save only while they hold the import lock, which rules that
    /// out; the comparison catches a writer that ignored the lock, or a file edited by hand.
    pub fn save(
        &self,
        checkpoint: &Checkpoint,
        expected: &Version,
    ) -> Result<Version, CheckpointError> {
        let current = match self.read()? {
            None => Version::absent(),
            Some(stored) => Version(VersionKind::Revision(stored.revision)),
        };
        if &current != expected {
            return Err(CheckpointError::Conflict {
                location: self.checkpoint_path().display().to_string(),
            });
        }
        let revision = match current.0 {
            VersionKind::Revision(revision) => revision + 1,
            _ => 1,
        };

        let stored = Stored {
            revision,
            checkpoint: checkpoint.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&stored).map_err(|err| self.write_error(err))?;
        json.push(b'\n');
        self.replace(&json).map_err(|err| self.write_error(err))?;
        Ok(Version(VersionKind::Revision(revision)))
    }

    /// Takes the import lock without waiting.
    pub fn acquire(&self) -> Result<FileLock, LockError> {
        let path = self.lock_path();
        let failed = |err: std::io::Error| LockError::Failed {
            location: path.display().to_string(),
            reason: format!("{err} (check that STATE_DIR is a writable directory)"),
        };
        std::fs::create_dir_all(&self.dir).map_err(failed)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;

        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // The holder wrote who it is; it helps whoever finds the lock taken.
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let location = if holder.is_empty() {
                    path.display().to_string()
                } else {
                    format!("{}, {holder}", path.display())
                };
                return Err(LockError::Busy { location });
            }
            Err(TryLockError::Error(err)) => return Err(failed(err)),
        }

        let started = crate::sink::rfc3339(time::OffsetDateTime::now_utc());
        let note = format!("held by process {} since {started}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all(note.as_bytes()))
            .map_err(failed)?;
        Ok(FileLock { _file: file })
    }

    fn read(&self) -> Result<Option<Stored>, CheckpointError> {
        let path = self.checkpoint_path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(CheckpointError::Store {
                    action: "read",
                    location: path.display().to_string(),
                    reason: err.to_string(),
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|err| CheckpointError::Corrupt {
                location: path.display().to_string(),
                reason: err.to_string(),
            })
    }

    /// Writes `content` to a temporary file beside the checkpoint, flushes it to disk and
    /// renames it over the checkpoint, then flushes the directory so the rename survives a
    /// power cut.
    fn replace(&self, content: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let temp = self
            .dir
            .join(format!(".{CHECKPOINT_FILE}.{}.tmp", uuid::Uuid::new_v4()));
        let written = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(content)?;
            file.sync_all()?;
            std::fs::rename(&temp, self.checkpoint_path())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        #[cfg(unix)]
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn write_error(&self, err: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Store {
            action: "write",
            location: self.checkpoint_path().display().to_string(),
            reason: format!("{err} (check that STATE_DIR is a writable directory)"),
        }
    }
}

/// The held import lock; dropping it closes the file, which releases the lock.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir =
                std::env::temp_dir().join(format!("checkpoint-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn checkpoint(last_id: u64) -> Checkpoint {
        Checkpoint {
            last_id,
            delivered_at: datetime!(2026-03-10 01:02:03 UTC),
            last_success_at: Some(datetime!(2026-03-10 01:00 UTC)),
        }
    }

    #[test]
    fn a_missing_checkpoint_loads_as_absent() {
        let dir = TempDir::new();
        let store = FileStore::new(&dir.0.join("not-yet"));

        let loaded = store.load().unwrap();

        assert_eq!(loaded.checkpoint, None);
        assert_eq!(loaded.version, Version::absent());
    }

    #[test]
    fn a_saved_checkpoint_loads_back_unchanged() {
        let dir = TempDir::new();
        let store = FileStore::new(&dir.0.join("state"));

        let first = store
            .save(&checkpoint(841_500), &Version::absent())
            .unwrap();
        let second = store.save(&checkpoint(841_600), &first).unwrap();
        let loaded = store.load().unwrap();

        assert_eq!(loaded.checkpoint, Some(checkpoint(841_600)));
        assert_eq!(loaded.version, second);
        let text = std::fs::read_to_string(store.checkpoint_path()).unwrap();
        assert!(
            text.contains(r#""delivered_at": "2026-03-10T01:02:03Z""#),
            "{text}"
        );
    }

    fn file_names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_save_leaves_no_temporary_file_behind() {
        let dir = TempDir::new();
        let store = FileStore::new(&dir.0);

        store.save(&checkpoint(1), &Version::absent()).unwrap();

        assert_eq!(file_names(&dir.0), vec![CHECKPOINT_FILE.to_owned()]);
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_checkpoint_in_place() {
        let dir = TempDir::new();
        let store = FileStore::new(&dir.0);
        let version = store.save(&checkpoint(1), &Version::absent()).unwrap();
        // What a process killed half way through writing leaves behind.
        let stray = dir.0.join(format!(".{CHECKPOINT_FILE}.crashed.tmp"));
        std::fs::write(&stray, "{\"revision\": 2, \"last_").unwrap();

        let loaded = store.load().unwrap();
        let saved = store.save(&checkpoint(2), &loaded.version);

        assert_eq!(loaded.checkpoint, Some(checkpoint(1)));
        assert_eq!(loaded.version, version);
        assert!(saved.is_ok(), "{saved:?}");
    }

    #[test]
    fn a_write_that_cannot_finish_removes_its_temporary_file() {
        let dir = TempDir::new();
        let store = FileStore::new(&dir.0);
        // A directory in the checkpoint's place makes the final rename fail.
        std::fs::create_dir(store.checkpoint_path()).unwrap();

        let written = store.replace(b"{}");

        assert!(written.is_err());
        assert_eq!(file_names(&dir.0), vec![CHECKPOINT_FILE.to_owned()]);
    }

    #[test]
    fn a_stale_version_is_a_conflict_and_changes_nothing() {
        let dir = TempDir::new();
        let store = FileStore::new(&dir.0);
        let first = store.save(&checkpoint(1), &Version::absent()).unwrap();
        store.save(&checkpoint(2), &first).unwrap();

        let stale = store.save(&checkpoint(3), &first);
        let recreated = store.save(&checkpoint(3), &Version::absent());

        assert!(
            matches!(stale, Err(CheckpointError::Conflict { .. })),
            "{stale:?}"
        );
        assert!(matches!(recreated, Err(CheckpointError::Conflict { .. })));
        assert_eq!(store.load().unwrap().checkpoint, Some(checkpoint(2)));
    }

    #[test]
    fn an_unreadable_checkpoint_says_how_to_start_over() {
        let dir = TempDir::new();
        let store = FileStore::new(&dir.0);
        std::fs::write(store.checkpoint_path(), "{\"last_id\":").unwrap();

        let err = store.load().unwrap_err();

        assert!(matches!(err, CheckpointError::Corrupt { .. }));
        assert!(err.to_string().contains("delete it"), "{err}");
    }

    #[test]
    fn the_lock_is_busy_while_held_and_free_once_dropped() {
        let dir = TempDir::new();
        let store = FileStore::new(&dir.0.join("state"));

        let held = store.acquire().unwrap();
        let second = store.acquire();
        drop(held);
        let third = store.acquire();

        let err = second.unwrap_err();
        assert!(matches!(err, LockError::Busy { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&format!("held by process {}", std::process::id())),
            "{err}"
        );
        assert!(third.is_ok(), "{third:?}");
    }
}
