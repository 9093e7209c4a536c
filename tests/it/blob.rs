//! The blob store against Azurite in OAuth mode, over HTTPS: ETag-guarded saves and the
//! leased lock.

use std::sync::Arc;
use std::time::Duration;

use azure_storage_blob::BlobClient;
use azure_storage_blob::models::BlobClientBreakLeaseOptions;
use threatfox_sentinel::checkpoint::{
    BlobStore, BlobStoreOptions, Checkpoint, CheckpointError, LockError, Version,
};
use time::macros::datetime;

use crate::support::azurite::{Azurite, FakeStorageCredential};

fn store(azurite: &Azurite, lease: Duration, renew: Duration) -> BlobStore {
    let options = BlobStoreOptions {
        lease_duration: lease,
        renew_interval: renew,
        client_options: azurite.client_options(),
        ..Default::default()
    };
    BlobStore::new(
        &azurite.service_url(),
        Arc::new(FakeStorageCredential),
        options,
    )
    .unwrap()
}

fn default_store(azurite: &Azurite) -> BlobStore {
    store(azurite, Duration::from_secs(60), Duration::from_secs(20))
}

fn checkpoint(last_id: u64) -> Checkpoint {
    Checkpoint {
        last_id,
        delivered_at: datetime!(2026-03-10 01:02:03 UTC),
        last_success_at: Some(datetime!(2026-03-10 01:00 UTC)),
    }
}

#[tokio::test]
async fn a_checkpoint_saved_to_a_new_container_loads_back_unchanged() {
    let azurite = Azurite::start();
    let store = default_store(&azurite);

    let before = store.load().await.unwrap();
    let first = store
        .save(&checkpoint(841_500), &before.version)
        .await
        .unwrap();
    let second = store.save(&checkpoint(841_600), &first).await.unwrap();
    let loaded = store.load().await.unwrap();

    assert_eq!(before.checkpoint, None);
    assert_eq!(before.version, Version::absent());
    assert_ne!(first, second);
    assert_eq!(loaded.checkpoint, Some(checkpoint(841_600)));
    assert_eq!(loaded.version, second);
    assert!(
        store
            .checkpoint_url()
            .as_str()
            .ends_with("/devstoreaccount1/threatfox-sentinel/checkpoint.json")
    );
}

#[tokio::test]
async fn a_save_from_a_stale_read_is_a_conflict_that_changes_nothing() {
    let azurite = Azurite::start();
    let store = default_store(&azurite);
    let first = store
        .save(&checkpoint(1), &Version::absent())
        .await
        .unwrap();
    store.save(&checkpoint(2), &first).await.unwrap();

    let stale = store.save(&checkpoint(3), &first).await;
    let recreated = store.save(&checkpoint(3), &Version::absent()).await;

    let err = stale.unwrap_err();
    assert!(matches!(err, CheckpointError::Conflict { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("changed since this import read it"),
        "{err}"
    );
    assert!(
        matches!(recreated, Err(CheckpointError::Conflict { .. })),
        "{recreated:?}"
    );
    assert_eq!(store.load().await.unwrap().checkpoint, Some(checkpoint(2)));
}

#[tokio::test]
async fn a_second_lock_is_busy_until_the_first_is_released() {
    let azurite = Azurite::start();
    let here = default_store(&azurite);
    let other_instance = default_store(&azurite);

    let held = here.acquire().await.unwrap();
    let refused = other_instance.acquire().await;
    held.release().await;
    let after_release = other_instance.acquire().await;

    let err = refused.unwrap_err();
    assert!(matches!(err, LockError::Busy { .. }), "{err:?}");
    assert!(
        err.to_string().contains("possibly on another instance"),
        "{err}"
    );
    let lease = after_release.unwrap();
    assert!(lease.check().is_ok());
    lease.release().await;
}

#[tokio::test]
async fn the_lease_is_renewed_past_its_duration() {
    let azurite = Azurite::start();
    let here = store(&azurite, Duration::from_secs(15), Duration::from_secs(5));
    let other_instance = default_store(&azurite);
    let held = here.acquire().await.unwrap();

    // Unrenewed, a 15 s lease would have expired by now.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let refused = other_instance.acquire().await;

    assert!(
        matches!(refused, Err(LockError::Busy { .. })),
        "{refused:?}"
    );
    assert!(held.check().is_ok());
    held.release().await;
}

#[tokio::test]
async fn a_lease_broken_by_someone_else_is_reported_lost() {
    let azurite = Azurite::start();
    let here = store(
        &azurite,
        Duration::from_secs(15),
        Duration::from_millis(300),
    );
    let held = here.acquire().await.unwrap();
    let lock_url = here
        .checkpoint_url()
        .as_str()
        .replace("checkpoint.json", "import.lock");
    let operator = BlobClient::new(
        lock_url.parse().unwrap(),
        Some(Arc::new(FakeStorageCredential)),
        Some(azure_storage_blob::BlobClientOptions {
            client_options: azurite.client_options(),
            ..Default::default()
        }),
    )
    .unwrap();

    let options = BlobClientBreakLeaseOptions {
        break_period: Some(0),
        ..Default::default()
    };
    operator.break_lease(Some(options)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let err = held.check().unwrap_err();
    assert!(matches!(err, LockError::Lost { .. }), "{err:?}");
    assert!(err.to_string().contains("was lost"), "{err}");
}
