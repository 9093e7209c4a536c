//! The binary with the file store: resuming after the checkpoint, the feed window, dry runs,
//! `--no-checkpoint`, and a second import refused while one runs.

use std::path::Path;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{TempDir, Upstreams, command, finish, run};

fn read_checkpoint(state: &Path) -> Value {
    let text = std::fs::read_to_string(state.join("checkpoint.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Writes a checkpoint as an earlier import would have left it.
fn write_checkpoint(state: &Path, last_id: u64, succeeded_days_ago: i64) {
    let at = OffsetDateTime::now_utc() - time::Duration::days(succeeded_days_ago);
    let at = at.format(&Rfc3339).unwrap();
    let stored = json!({
        "revision": 1,
        "last_id": last_id,
        "delivered_at": at,
        "last_success_at": at,
    });
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(state.join("checkpoint.json"), stored.to_string()).unwrap();
}

#[tokio::test]
async fn a_second_import_skips_the_ids_the_first_delivered() {
    let state = TempDir::new("state");
    let upstreams = Upstreams::start(100..=104).await;
    let env = upstreams.env(state.path());

    let first = run(&env, &["import"]).await;
    let first_delivered = upstreams.take_delivered();
    let after_first = read_checkpoint(state.path());
    upstreams.serve_feed(100..=107);
    let second = run(&env, &["import"]).await;
    let second_delivered = upstreams.take_delivered();

    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first_delivered, vec![100, 101, 102, 103, 104]);
    assert!(
        first.stderr.contains("checkpoint: last id none -> 104"),
        "{}",
        first.stderr
    );
    assert_eq!(after_first["last_id"], 104);
    assert!(after_first["last_success_at"].is_string(), "{after_first}");
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second_delivered, vec![105, 106, 107]);
    assert!(
        second.stderr.contains("skipped 5 as already_imported"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("checkpoint: last id 104 -> 107"),
        "{}",
        second.stderr
    );
    assert_eq!(read_checkpoint(state.path())["last_id"], 107);
    // A first import asks for IMPORT_DAYS; the next, minutes later, needs no wider window.
    assert_eq!(upstreams.days_asked(), vec![2, 2]);
}

#[tokio::test]
async fn the_window_reaches_back_to_the_last_complete_import() {
    let state = TempDir::new("state");
    let upstreams = Upstreams::start(100..=104).await;
    let env = upstreams.env(state.path());
    write_checkpoint(state.path(), 102, 4);

    let widened = run(&env, &["import"]).await;
    let explicit = run(&env, &["import", "--days", "1"]).await;

    assert_eq!(widened.code, 0, "{}", widened.stderr);
    assert!(
        widened.stderr.contains("skipped 3 as already_imported"),
        "{}",
        widened.stderr
    );
    assert_eq!(upstreams.take_delivered(), vec![103, 104]);
    assert_eq!(explicit.code, 0, "{}", explicit.stderr);
    // Four days and a moment ago: five started days, plus one; --days wins over that.
    assert_eq!(upstreams.days_asked(), vec![6, 1]);
}

#[tokio::test]
async fn a_gap_longer_than_the_feed_reaches_is_reported() {
    let state = TempDir::new("state");
    let upstreams = Upstreams::start(100..=101).await;
    let env = upstreams.env(state.path());
    write_checkpoint(state.path(), 99, 9);

    let late = run(&env, &["import"]).await;

    assert_eq!(late.code, 0, "{}", late.stderr);
    assert_eq!(upstreams.days_asked(), vec![7]);
    assert!(
        late.stderr
            .contains("warning: the last complete import was 9.0 days ago"),
        "{}",
        late.stderr
    );
}

#[tokio::test]
async fn a_dry_run_reads_the_checkpoint_but_never_moves_it() {
    let state = TempDir::new("state");
    let upstreams = Upstreams::start(100..=104).await;
    let env = upstreams.env(state.path());
    write_checkpoint(state.path(), 102, 0);
    let before = std::fs::read(state.path().join("checkpoint.json")).unwrap();
    let output = state.path().join("dry-run.jsonl");

    let dry = run(
        &env,
        &["import", "--dry-run", "--output", output.to_str().unwrap()],
    )
    .await;

    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stderr.contains("skipped 3 as already_imported"),
        "{}",
        dry.stderr
    );
    assert!(upstreams.take_delivered().is_empty());
    let written = std::fs::read_to_string(&output).unwrap();
    assert!(written.contains("threatfox-103") && written.contains("threatfox-104"));
    assert!(!written.contains("threatfox-102"), "{written}");
    assert_eq!(
        std::fs::read(state.path().join("checkpoint.json")).unwrap(),
        before
    );
}

#[tokio::test]
async fn no_checkpoint_imports_the_whole_window_and_leaves_the_checkpoint_alone() {
    let state = TempDir::new("state");
    let upstreams = Upstreams::start(100..=104).await;
    let env = upstreams.env(state.path());
    write_checkpoint(state.path(), 102, 0);
    let before = std::fs::read(state.path().join("checkpoint.json")).unwrap();

    let again = run(&env, &["import", "--no-checkpoint"]).await;

    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(upstreams.take_delivered(), vec![100, 101, 102, 103, 104]);
    assert!(!again.stderr.contains("checkpoint:"), "{}", again.stderr);
    assert_eq!(
        std::fs::read(state.path().join("checkpoint.json")).unwrap(),
        before
    );
}

#[tokio::test]
async fn a_saved_response_resumes_from_the_checkpoint_too() {
    let state = TempDir::new("state");
    let upstreams = Upstreams::start(100..=104).await;
    let env = upstreams.env(state.path());
    write_checkpoint(state.path(), 102, 0);
    let saved = state.path().join("saved.json");
    let response = reqwest::Client::new()
        .post(env_value(&env, "THREATFOX_API_URL"))
        .json(&json!({ "query": "get_iocs", "days": 1 }))
        .send()
        .await
        .unwrap();
    std::fs::write(&saved, response.bytes().await.unwrap()).unwrap();

    let from_file = run(&env, &["import", "--input", saved.to_str().unwrap()]).await;

    assert_eq!(from_file.code, 0, "{}", from_file.stderr);
    assert_eq!(upstreams.take_delivered(), vec![103, 104]);
    assert_eq!(read_checkpoint(state.path())["last_id"], 104);
    // Only the request that made the saved response reached ThreatFox.
    assert_eq!(upstreams.days_asked(), vec![1]);
}

#[tokio::test]
async fn a_concurrent_import_is_refused_while_the_first_runs() {
    let state = TempDir::new("state");
    let upstreams = Upstreams::start(100..=104).await;
    let env = upstreams.env(state.path());
    upstreams.hold_graph();

    let first = command(&env, &["import"]).spawn().unwrap();
    upstreams.graph_called().await;
    let second = run(&env, &["import"]).await;
    upstreams.open_graph();
    let first = finish(first).await;

    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("another import is running, possibly on another instance"),
        "{}",
        second.stderr
    );
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(upstreams.take_delivered(), vec![100, 101, 102, 103, 104]);
    // The refused import stopped before it asked ThreatFox for anything.
    assert_eq!(upstreams.days_asked(), vec![2]);
}

fn env_value(env: &[(String, String)], name: &str) -> String {
    env.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
        .unwrap()
}
