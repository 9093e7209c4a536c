//! A crash in the middle of an upload: the process is killed while Graph holds a batch, and
//! the next import carries on from the checkpoint without sending any batch twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// The settings for the sample feed in five batches of five, with the file checkpoint.
fn env(upstreams: &Upstreams, state: &Path) -> HashMap<String, String> {
    let mut env = upstreams.env(state);
    env.insert("UPLOAD_BATCH_SIZE".to_owned(), "5".to_owned());
    env
}

fn external_ids(request: &Recorded) -> Vec<String> {
    request.json()["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["externalId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_import_killed_mid_upload_resumes_after_the_last_delivered_batch() {
    let state = temp_dir("crash");
    // The first Graph answers two batches and never answers the third.
    let never = Gate::closed();
    let crashing_graph = Fake::start(move |request, count| match count {
        0 | 1 => graph_accepts(request),
        _ => graph_accepts(request).held_by(&never),
    })
    .await;
    let crashing = Upstreams::new(fake_threatfox(sample_feed()).await, crashing_graph).await;
    let working = Upstreams::new(fake_threatfox(sample_feed()).await, fake_graph().await).await;

    let first = start_cli(&env(&crashing, &state), &["import"]);
    crashing.graph.received(3).await;
    let killed = first.kill();
    let checkpoint_at_kill: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("checkpoint.json")).unwrap())
            .unwrap();
    let second = run_cli(env(&working, &state), &["import"]).await;

    assert_eq!(killed.signal(), Some(9), "{killed:?}");
    let first_sent = crashing.graph.requests();
    assert_eq!(first_sent.len(), 3, "nothing after the held batch");
    let in_flight = external_ids(&first_sent[2]);
    let before_kill = accepted_counts(&crashing.graph);
    assert_eq!(
        before_kill.len(),
        10,
        "two batches answered: {before_kill:?}"
    );
    assert!(in_flight.iter().all(|id| !before_kill.contains_key(id)));
    let highest_delivered = before_kill.keys().max().unwrap();
    assert_eq!(
        format!("threatfox-{}", checkpoint_at_kill["last_id"]),
        *highest_delivered,
        "the checkpoint stops at the second batch: {checkpoint_at_kill}"
    );

    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{stderr}");
    // The ten delivered indicators; the sample's second copy of 1641004 is still a duplicate.
    assert!(
        stderr.contains("skipped 10 as already_imported"),
        "{stderr}"
    );
    assert!(stderr.contains("skipped 1 as duplicate"), "{stderr}");
    assert!(stderr.contains("uploaded 15"), "{stderr}");
    let resent = working.graph.requests();
    assert_eq!(resent.len(), 3, "batches 3 to 5, and only them");
    assert_eq!(
        external_ids(&resent[0]),
        in_flight,
        "the held batch comes first"
    );
    let after_restart: BTreeSet<String> = graph_external_ids(&working.graph).into_iter().collect();
    assert!(
        after_restart.iter().all(|id| !before_kill.contains_key(id)),
        "a delivered batch was sent again: {after_restart:?}"
    );

    let mut accepted: BTreeMap<String, usize> = before_kill;
    for (id, count) in accepted_counts(&working.graph) {
        *accepted.entry(id).or_default() += count;
    }
    assert!(
        accepted.values().all(|count| *count == 1),
        "accepted twice: {accepted:?}"
    );
    let accepted: BTreeSet<String> = accepted.into_keys().collect();
    assert_eq!(accepted, sample_external_ids());
}
