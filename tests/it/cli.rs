//! The command line.

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn a_dry_run_on_the_sample_feed_writes_the_exact_request_bodies() {
    let dir = temp_dir("cli-dry-run");
    let output = dir.join("payloads.jsonl");
    let sample = repo().join("examples/threatfox-sample.json");
    let env = [
        ("INDICATOR_EXPIRATION_DAYS", "3650"),
        ("AZURE_TENANT_ID", TENANT),
        ("STATE_DIR", dir.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    let run = run_cli(
        env,
        &[
            "import",
            "--input",
            sample.to_str().unwrap(),
            "--dry-run",
            "--output",
            output.to_str().unwrap(),
        ],
    )
    .await;

    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let lines: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "one request body per line");
    let items = lines[0]["value"].as_array().unwrap();
    assert_eq!(items.len(), 25);
    assert!(items.iter().all(|i| i["azureTenantId"] == TENANT));
    let ids: Vec<u64> = items
        .iter()
        .map(|i| {
            i["externalId"]
                .as_str()
                .unwrap()
                .trim_start_matches("threatfox-")
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "sent in ascending id order: {ids:?}"
    );
    assert!(
        stderr.contains("fetched 34, written (dry run) 25, rejected 0, skipped 9"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_import_without_a_key_names_the_setting_and_fails() {
    let dir = temp_dir("cli-no-key");
    let env = [("STATE_DIR", dir.to_str().unwrap().to_owned())]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();

    let run = run_cli(env, &["import", "--dry-run"]).await;

    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("setting THREATFOX_AUTH_KEY"), "{stderr}");
}

#[tokio::test]
async fn a_bad_setting_stops_the_program_before_anything_runs() {
    let env = [("IMPORT_DAYS", "30")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

    let run = run_cli(env, &["import", "--dry-run"]).await;

    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("setting IMPORT_DAYS is \"30\""), "{stderr}");
}

#[tokio::test]
async fn graph_rejections_are_reported_and_the_exit_code_says_so() {
    // Graph refuses the first item of every batch, as a 206 with an `Error` entry.
    let graph = Fake::start(|request, _| {
        let mut items = request.json()["value"].as_array().cloned().unwrap();
        items[0]["Error"] =
            json!(r#"{"error":{"code":"InvalidInput","message":"Missing indicators value"}}"#);
        Reply::json(206, json!({ "value": items }))
    })
    .await;
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, graph).await;
    let dir = temp_dir("cli-206");

    let run = run_cli(upstreams.env(&dir), &["import"]).await;

    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("uploaded 24, rejected 1"), "{stderr}");
    assert!(
        stderr.contains("rejected threatfox-1641001: InvalidInput: Missing indicators value"),
        "{stderr}"
    );
    assert!(!stderr.contains(AUTH_KEY) && !stderr.contains(&upstreams.token));
}

#[tokio::test]
async fn a_whole_batch_rejected_with_400_is_split_until_the_bad_item_is_found() {
    // Graph rejects any batch that contains the SHA-1 indicator.
    let graph = Fake::start(|request, _| {
        let body = request.json();
        let items = body["value"].as_array().unwrap();
        if items.iter().any(|i| i["externalId"] == "threatfox-1641010") {
            Reply::json(
                400,
                json!({"error": {"code": "BadRequest", "message": "fileHashValue is invalid"}}),
            )
        } else {
            graph_accepts(request)
        }
    })
    .await;
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, graph).await;
    let dir = temp_dir("cli-400");

    let run = run_cli(upstreams.env(&dir), &["import"]).await;

    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("uploaded 24, rejected 1"), "{stderr}");
    assert!(stderr.contains("rejected threatfox-1641010"), "{stderr}");
    let requests = upstreams.graph.requests();
    let isolated = requests.iter().any(|r| {
        let items = r.json()["value"].as_array().unwrap().clone();
        items.len() == 1 && items[0]["externalId"] == "threatfox-1641010"
    });
    assert!(isolated, "the split ends with the bad item sent alone");
    let mut sent = graph_external_ids(&upstreams.graph);
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 25, "every item was sent");
}

#[tokio::test]
async fn check_passes_when_every_dependency_answers() {
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, fake_graph().await).await;
    let dir = temp_dir("check-ok");

    let run = run_cli(upstreams.env(&dir), &["check"]).await;

    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}");
    for name in ["settings", "threatfox", "token", "graph", "checkpoint"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{name}: {stdout}"
        );
    }
    assert!(stdout.contains("34 IoCs in the last day"), "{stdout}");
    let probe = &upstreams.graph.requests()[0];
    assert_eq!(
        (probe.method.as_str(), probe.uri.as_str()),
        ("GET", "/beta/security/tiIndicators?$top=1")
    );
    assert!(
        upstreams.graph.requests().iter().all(|r| r.method == "GET"),
        "check writes nothing"
    );
}

#[tokio::test]
async fn check_names_each_failing_dependency_with_its_fix() {
    let cases: [(&str, Fake, Fake, bool, &str); 3] = [
        (
            "threatfox",
            Fake::start(|_, _| Reply::json(401, json!({"error": "Unauthorized"}))).await,
            fake_graph().await,
            false,
            "set THREATFOX_AUTH_KEY",
        ),
        (
            "graph",
            fake_threatfox(sample_feed()).await,
            Fake::start(|_, _| Reply::json(403, json!({"error": {"code": "Forbidden"}}))).await,
            false,
            "ThreatIndicators.ReadWrite.OwnedBy",
        ),
        (
            "token",
            fake_threatfox(sample_feed()).await,
            fake_graph().await,
            true,
            "managed identity",
        ),
    ];
    for (failing, threatfox, graph, break_identity, fix) in cases {
        let upstreams = Upstreams::new(threatfox, graph).await;
        let dir = temp_dir("check-fail");
        let mut env = upstreams.env(&dir);
        let refusing_identity = Fake::start(|_, _| {
            Reply::json(
                400,
                json!({"error": "invalid_request", "error_description": "Identity not found"}),
            )
        })
        .await;
        if break_identity {
            env.insert(
                "IDENTITY_ENDPOINT".into(),
                refusing_identity.url("/msi/token"),
            );
        }

        let run = run_cli(env, &["check"]).await;

        let stdout = String::from_utf8_lossy(&run.stdout);
        assert_eq!(run.status.code(), Some(1), "{stdout}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("FAIL") && l.contains(failing))
            .unwrap_or_else(|| panic!("{failing}: {stdout}"));
        assert!(line.contains(fix), "{line}");
        assert!(!stdout.contains(AUTH_KEY));
    }
}

#[tokio::test]
async fn check_says_when_the_checkpoint_store_cannot_be_written() {
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, fake_graph().await).await;
    let dir = temp_dir("check-state");
    let blocker = dir.join("not-a-directory");
    std::fs::write(&blocker, "a file where the state folder should be").unwrap();
    let mut env = upstreams.env(&dir);
    env.insert(
        "STATE_DIR".into(),
        blocker.join("state").display().to_string(),
    );

    let run = run_cli(env, &["check"]).await;

    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    let line = stdout.lines().find(|l| l.contains("checkpoint")).unwrap();
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("STATE_DIR"), "{line}");
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok")).count() == 4,
        "{stdout}"
    );
}
