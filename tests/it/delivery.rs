//! Delivery through an unreliable sink: throttling, failures, slow answers and refusals,
//! asserted from what the fake sink received.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Items per request in these tests: the 25 sample indicators make five batches.
const BATCH: &str = "5";

async fn import_with(graph: Fake, extra: &[(&str, &str)]) -> (Upstreams, std::process::Output) {
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, graph).await;
    let dir = temp_dir("delivery");
    let mut env = upstreams.env(&dir);
    env.insert("UPLOAD_BATCH_SIZE".into(), BATCH.into());
    for (name, value) in extra {
        env.insert(name.to_string(), value.to_string());
    }
    let run = run_cli(env, &["import"]).await;
    (upstreams, run)
}

fn report_line(run: &std::process::Output) -> String {
    String::from_utf8_lossy(&run.stderr).into_owned()
}

#[tokio::test]
async fn server_errors_are_retried_and_every_indicator_arrives_exactly_once() {
    let failing = [1, 3, 4];
    let graph = Fake::start(move |request, count| {
        if failing.contains(&count) {
            Reply::json(
                if count == 1 { 500 } else { 503 },
                json!({"error": {"code": "ServiceUnavailable"}}),
            )
        } else {
            graph_accepts(request)
        }
    })
    .await;

    let (upstreams, run) = import_with(graph, &[]).await;

    let stderr = report_line(&run);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert_accepted_once(&upstreams.graph, 25);
    assert_eq!(upstreams.graph.requests().len(), 8);
    assert!(
        stderr.contains("requests 8, retries 3, throttled 0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_batch_that_keeps_failing_stops_the_import_after_the_attempt_limit() {
    let graph = Fake::start(|request, count| {
        if count == 0 {
            graph_accepts(request)
        } else {
            Reply::json(503, json!({}))
        }
    })
    .await;

    let (upstreams, run) = import_with(graph, &[("UPLOAD_MAX_ATTEMPTS", "2")]).await;

    let stderr = report_line(&run);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(
        upstreams.graph.requests().len(),
        3,
        "one good batch, then two tries"
    );
    assert!(
        stderr.contains("gave up after 2 attempts (UPLOAD_MAX_ATTEMPTS)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("uploaded 5, rejected 0, skipped 9, not delivered 20"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_slow_answer_past_the_timeout_is_sent_again() {
    let graph = Fake::start(|request, count| {
        let reply = graph_accepts(request);
        if count == 0 {
            reply.after(Duration::from_secs(3))
        } else {
            reply
        }
    })
    .await;

    let (upstreams, run) = import_with(graph, &[("HTTP_TIMEOUT_SECS", "1")]).await;

    let stderr = report_line(&run);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let requests = upstreams.graph.requests();
    assert_eq!(requests.len(), 6);
    assert_eq!(
        requests[0].body, requests[1].body,
        "the timed-out batch is sent again"
    );
    assert!(stderr.contains("retries 1"), "{stderr}");
}

#[tokio::test]
async fn throttling_without_retry_after_backs_off_before_the_next_request() {
    let graph = Fake::start(|request, count| {
        if count == 2 {
            Reply::json(429, json!({"error": {"code": "TooManyRequests"}}))
        } else {
            graph_accepts(request)
        }
    })
    .await;

    let (upstreams, run) = import_with(graph, &[]).await;

    let stderr = report_line(&run);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let requests = upstreams.graph.requests();
    let waited = requests[3].at - requests[2].at;
    assert!(
        waited >= Duration::from_millis(500),
        "resent after {waited:?}"
    );
    assert_eq!(requests[2].body, requests[3].body);
    assert_accepted_once(&upstreams.graph, 25);
    assert!(stderr.contains("throttled 1"), "{stderr}");
}

#[tokio::test]
async fn sentinel_throttling_messages_and_record_errors_are_honoured() {
    let sentinel = Fake::start(|request, count| match count {
        0 => Reply::json(429, json!({"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."})),
        1 => {
            let objects = request.json()["stixobjects"].as_array().unwrap().len();
            assert_eq!(objects, 5);
            Reply::json(200, json!({"errors": [{"recordIndex": 2, "errorMessages": ["Invalid pattern"]}]}))
        }
        _ => Reply::text(200, "application/json", ""),
    })
    .await;
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, sentinel).await;
    let dir = temp_dir("sentinel-throttle");
    let mut env = upstreams.env(&dir);
    env.extend([
        ("UPLOAD_BATCH_SIZE".to_owned(), BATCH.to_owned()),
        ("IMPORT_SINK".to_owned(), "sentinel".to_owned()),
        (
            "SENTINEL_WORKSPACE_ID".to_owned(),
            "9b2a3c1e-3f5d-4a7b-8c9d-0e1f2a3b4c5d".to_owned(),
        ),
        ("SENTINEL_API_URL".to_owned(), upstreams.graph.url("")),
        // Far above the real limit, so that only the throttling answer makes it wait.
        (
            "UPLOAD_MAX_REQUESTS_PER_MINUTE".to_owned(),
            "6000".to_owned(),
        ),
    ]);

    let run = run_cli(env, &["import"]).await;

    let stderr = report_line(&run);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    let requests = upstreams.graph.requests();
    assert_eq!(requests.len(), 6);
    assert!(
        requests[1].at - requests[0].at >= Duration::from_secs(1),
        "no request while told to wait"
    );
    let third: Value = requests[1].json()["stixobjects"][2].clone();
    assert!(stderr.contains("uploaded 24, rejected 1"), "{stderr}");
    assert!(stderr.contains("Invalid pattern"), "{stderr}");
    assert!(
        third["external_references"][0]["external_id"]
            .as_str()
            .is_some_and(|id| stderr.contains(&format!("threatfox-{id}"))),
        "{stderr}"
    );
    assert!(stderr.contains("throttled 1 (1000 ms waiting)"), "{stderr}");
}

#[tokio::test]
async fn a_reset_connection_is_retried() {
    let graph = fake_graph().await;
    let front = flaky_front(graph.addr, 1).await;

    let (upstreams, run) =
        import_with(graph, &[("GRAPH_API_URL", &format!("http://{front}/beta"))]).await;

    let stderr = report_line(&run);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert_accepted_once(&upstreams.graph, 25);
    assert!(stderr.contains("requests 6, retries 1"), "{stderr}");
}
