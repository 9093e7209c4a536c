//! The checkpoint and the import lock from the command line, with the file store: resuming
//! after the checkpoint, the feed window, dry runs, `--no-checkpoint`, and a second import
//! refused while one runs.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::*;

/// The fakes, with Graph answering every batch, and a feed of `ids` that can change.
async fn upstreams(ids: impl IntoIterator<Item = u64>) -> (Feed, Upstreams) {
    let feed = Feed::of_ids(ids);
    let upstreams = Upstreams::new(feed.start().await, fake_graph().await).await;
    (feed, upstreams)
}

/// The settings, with a two-day window and two indicators per batch, so that a handful of
/// ids makes several batches and so several checkpoint saves.
fn env(upstreams: &Upstreams, state: &Path) -> HashMap<String, String> {
    let mut env = upstreams.env(state);
    for (name, value) in [
        ("IMPORT_DAYS", "2"),
        ("UPLOAD_BATCH_SIZE", "2"),
        ("UPLOAD_MAX_REQUESTS_PER_MINUTE", "60000"),
    ] {
        env.insert(name.to_owned(), value.to_owned());
    }
    env
}

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

fn stderr(run: &std::process::Output) -> String {
    String::from_utf8_lossy(&run.stderr).into_owned()
}

#[tokio::test]
async fn a_second_import_skips_the_ids_the_first_delivered() {
    let state = temp_dir("checkpoint-resume");
    let (feed, upstreams) = upstreams(100..=104).await;
    let env = env(&upstreams, &state);

    let first = run_cli(env.clone(), &["import"]).await;
    let first_delivered = graph_ids(&upstreams.graph);
    let after_first = read_checkpoint(&state);
    feed.serve_ids(100..=107);
    let second = run_cli(env, &["import"]).await;
    let second_delivered = graph_ids(&upstreams.graph).split_off(first_delivered.len());

    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(first_delivered, vec![100, 101, 102, 103, 104]);
    assert!(
        stderr(&first).contains("checkpoint: last id none -> 104"),
        "{}",
        stderr(&first)
    );
    assert_eq!(after_first["last_id"], 104);
    assert!(after_first["last_success_at"].is_string(), "{after_first}");
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(second_delivered, vec![105, 106, 107]);
    assert!(
        stderr(&second).contains("skipped 5 as already_imported"),
        "{}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains("checkpoint: last id 104 -> 107"),
        "{}",
        stderr(&second)
    );
    assert_eq!(read_checkpoint(&state)["last_id"], 107);
    // A first import asks for IMPORT_DAYS; the next, minutes later, needs no wider window.
    assert_eq!(upstreams.days_asked(), vec![2, 2]);
}

#[tokio::test]
async fn the_window_reaches_back_to_the_last_complete_import() {
    let state = temp_dir("checkpoint-window");
    let (_, upstreams) = upstreams(100..=104).await;
    let env = env(&upstreams, &state);
    write_checkpoint(&state, 102, 4);

    let widened = run_cli(env.clone(), &["import"]).await;
    let delivered_by_widened = graph_ids(&upstreams.graph);
    let explicit = run_cli(env, &["import", "--days", "1"]).await;

    assert_eq!(widened.status.code(), Some(0), "{}", stderr(&widened));
    assert!(
        stderr(&widened).contains("skipped 3 as already_imported"),
        "{}",
        stderr(&widened)
    );
    assert_eq!(delivered_by_widened, vec![103, 104]);
    assert_eq!(explicit.status.code(), Some(0), "{}", stderr(&explicit));
    assert_eq!(
        graph_ids(&upstreams.graph),
        vec![103, 104],
        "nothing new for --days 1"
    );
    // Four days and a moment ago: five started days, plus one; --days wins over that.
    assert_eq!(upstreams.days_asked(), vec![6, 1]);
}

#[tokio::test]
async fn a_gap_longer_than_the_feed_reaches_is_reported() {
    let state = temp_dir("checkpoint-gap");
    let (_, upstreams) = upstreams(100..=101).await;
    let env = env(&upstreams, &state);
    write_checkpoint(&state, 99, 9);

    let late = run_cli(env, &["import"]).await;

    assert_eq!(late.status.code(), Some(0), "{}", stderr(&late));
    assert_eq!(upstreams.days_asked(), vec![7]);
    assert!(
        stderr(&late).contains("warning: the last complete import was 9.0 days ago"),
        "{}",
        stderr(&late)
    );
    assert_eq!(graph_ids(&upstreams.graph), vec![100, 101]);
}

#[tokio::test]
async fn a_dry_run_reads_the_checkpoint_but_never_moves_it() {
    let state = temp_dir("checkpoint-dry-run");
    let (_, upstreams) = upstreams(100..=104).await;
    let env = env(&upstreams, &state);
    write_checkpoint(&state, 102, 0);
    let before = std::fs::read(state.join("checkpoint.json")).unwrap();
    let output = state.join("dry-run.jsonl");

    let dry = run_cli(
        env,
        &["import", "--dry-run", "--output", output.to_str().unwrap()],
    )
    .await;

    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert!(
        stderr(&dry).contains("skipped 3 as already_imported"),
        "{}",
        stderr(&dry)
    );
    assert!(upstreams.graph.requests().is_empty());
    let written = std::fs::read_to_string(&output).unwrap();
    assert!(written.contains("threatfox-103") && written.contains("threatfox-104"));
    assert!(!written.contains("threatfox-102"), "{written}");
    assert_eq!(
        std::fs::read(state.join("checkpoint.json")).unwrap(),
        before
    );
}

#[tokio::test]
async fn no_checkpoint_imports_the_whole_window_and_leaves_the_checkpoint_alone() {
    let state = temp_dir("checkpoint-none");
    let (_, upstreams) = upstreams(100..=104).await;
    let env = env(&upstreams, &state);
    write_checkpoint(&state, 102, 0);
    let before = std::fs::read(state.join("checkpoint.json")).unwrap();

    let again = run_cli(env, &["import", "--no-checkpoint"]).await;

    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(graph_ids(&upstreams.graph), vec![100, 101, 102, 103, 104]);
    assert!(
        !stderr(&again).contains("checkpoint:"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(state.join("checkpoint.json")).unwrap(),
        before
    );
}

#[tokio::test]
async fn a_saved_response_resumes_from_the_checkpoint_too() {
    let state = temp_dir("checkpoint-saved");
    let (_, upstreams) = upstreams(100..=104).await;
    let env = env(&upstreams, &state);
    write_checkpoint(&state, 102, 0);
    let saved = state.join("saved.json");
    let response = reqwest::Client::new()
        .post(upstreams.threatfox.url("/api/v1/"))
        .json(&json!({ "query": "get_iocs", "days": 1 }))
        .send()
        .await
        .unwrap();
    std::fs::write(&saved, response.bytes().await.unwrap()).unwrap();

    let from_file = run_cli(env, &["import", "--input", saved.to_str().unwrap()]).await;

    assert_eq!(from_file.status.code(), Some(0), "{}", stderr(&from_file));
    assert_eq!(graph_ids(&upstreams.graph), vec![103, 104]);
    assert_eq!(read_checkpoint(&state)["last_id"], 104);
    // Only the request that made the saved response reached ThreatFox.
    assert_eq!(upstreams.days_asked(), vec![1]);
}

#[tokio::test]
async fn a_concurrent_import_is_refused_while_the_first_runs() {
    let state = temp_dir("checkpoint-lock");
    let gate = Gate::closed();
    let held = gate.clone();
    let graph = Fake::start(move |request, _| graph_accepts(request).held_by(&held)).await;
    let feed = Feed::of_ids(100..=104);
    let upstreams = Upstreams::new(feed.start().await, graph).await;
    let env = env(&upstreams, &state);

    let first = start_cli(&env, &["import"]);
    upstreams.graph.received(1).await;
    let second = run_cli(env, &["import"]).await;
    gate.open();
    let first = first.finish().await;

    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another import is running, possibly on another instance"),
        "{}",
        stderr(&second)
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(graph_ids(&upstreams.graph), vec![100, 101, 102, 103, 104]);
    assert_accepted_once(&upstreams.graph, 5);
    // The refused import stopped before it asked ThreatFox for anything.
    assert_eq!(upstreams.days_asked(), vec![2]);
}
