//! The handler as the Functions host runs it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn the_timer_imports_the_feed_into_graph_under_the_managed_identity() {
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, fake_graph().await).await;
    let dir = temp_dir("timer");
    let host = Host::start(upstreams.env(&dir), &dir).await;

    let (status, reply) = host.invoke("ScheduledImport", Host::timer_data()).await;

    assert_eq!(status, 200, "{reply}\n{}", host.log());
    let feed_requests = upstreams.threatfox.requests();
    assert_eq!(feed_requests.len(), 1);
    assert_eq!(feed_requests[0].method, "POST");
    assert_eq!(feed_requests[0].uri, "/api/v1/");
    assert_eq!(
        feed_requests[0].header("auth-key").as_deref(),
        Some(AUTH_KEY)
    );
    assert_eq!(
        feed_requests[0].json(),
        json!({ "query": "get_iocs", "days": 1 })
    );

    let identity = upstreams.identity.requests();
    assert!(!identity.is_empty());
    assert!(
        identity[0]
            .uri
            .contains("resource=https%3A%2F%2Fgraph.microsoft.com"),
        "{}",
        identity[0].uri
    );
    assert_eq!(
        identity[0].header("x-identity-header").as_deref(),
        Some("identity-header-secret")
    );

    let graph = upstreams.graph.requests();
    assert_eq!(graph.len(), 1, "25 indicators fit one batch");
    assert_eq!(
        graph[0].uri,
        "/beta/security/tiIndicators/submitTiIndicators"
    );
    assert_eq!(
        graph[0].header("authorization"),
        Some(format!("Bearer {}", upstreams.token))
    );
    let received: BTreeSet<String> = graph_external_ids(&upstreams.graph).into_iter().collect();
    assert_eq!(received, sample_external_ids());

    let cobalt = graph[0].json()["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["externalId"] == "threatfox-1641001")
        .cloned()
        .unwrap();
    assert_eq!(
        cobalt,
        json!({
            "externalId": "threatfox-1641001",
            "action": "alert",
            "azureTenantId": TENANT,
            "targetProduct": "Azure Sentinel",
            "threatType": "C2",
            "tlpLevel": "white",
            "confidence": 100,
            "description": "ThreatFox: Cobalt Strike botnet C2 (ip:port)",
            "expirationDateTime": "2036-11-28T10:28:53Z",
            "lastReportedDateTime": "2026-12-01T10:28:53Z",
            "additionalInformation": "https://threatfox.abuse.ch/ioc/1641001/ reporter: drb_ra",
            "passiveOnly": false,
            "malwareFamilyNames": ["Cobalt Strike", "Agentemis", "BEACON", "CobaltStrike", "cobeacon"],
            "tags": ["CobaltStrike", "c2"],
            "killChain": ["C2"],
            "networkIPv4": "81.2.69.142",
            "networkDestinationIPv4": "81.2.69.142",
            "networkPort": 80,
            "networkDestinationPort": 80,
        })
    );

    let report = &reply["ReturnValue"];
    assert_eq!(report["outcome"], "complete");
    assert_eq!(report["fetched"], 34);
    assert_eq!(report["uploaded"], 25);
    assert_eq!(report["rejected"], 0);
    assert_eq!(
        report["skipped"],
        json!({
            "malformed_record": 2, "unknown_type": 1, "invalid_observable": 4,
            "unsupported_by_sink": 1, "duplicate": 1
        })
    );
    assert_eq!(report["requests"], 1);
    assert!(reply["Outputs"].is_object());
    let logs: Vec<&str> = reply["Logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(logs[0].starts_with("import complete"), "{logs:?}");
    assert!(!host.log().contains(AUTH_KEY));
    assert!(!host.log().contains(&upstreams.token));
}

#[tokio::test]
async fn import_now_takes_days_and_dry_run_from_the_query_string() {
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, fake_graph().await).await;
    let dir = temp_dir("import-now");
    let host = Host::start(upstreams.env(&dir), &dir).await;

    let (status, reply) = host
        .invoke(
            "ImportNow",
            Host::http_data(&[("days", "3"), ("dry_run", "true")]),
        )
        .await;

    assert_eq!(status, 200);
    let res = &reply["Outputs"]["res"];
    assert_eq!(res["statusCode"], 200, "{reply}");
    assert_eq!(res["headers"]["Content-Type"], "application/json");
    let report: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["window_days"], 3);
    assert_eq!(report["uploaded"], 25);
    assert_eq!(upstreams.threatfox.requests()[0].json()["days"], 3);
    assert!(
        upstreams.graph.requests().is_empty(),
        "a dry run sends nothing"
    );
}

#[tokio::test]
async fn import_now_rejects_bad_parameters_with_400() {
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, fake_graph().await).await;
    let dir = temp_dir("bad-params");
    let host = Host::start(upstreams.env(&dir), &dir).await;

    for query in [[("days", "9")], [("days", "two")], [("dry_run", "perhaps")]] {
        let (status, reply) = host.invoke("ImportNow", Host::http_data(&query)).await;

        assert_eq!(status, 200);
        assert_eq!(reply["Outputs"]["res"]["statusCode"], 400, "{query:?}");
        let body: Value =
            serde_json::from_str(reply["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("query parameter"),
            "{body}"
        );
    }
    assert!(upstreams.threatfox.requests().is_empty());
}

#[tokio::test]
async fn a_retired_graph_api_fails_the_import_and_points_to_the_sentinel_sink() {
    let graph =
        Fake::start(|_, _| Reply::json(404, json!({"error": {"code": "ResourceNotFound"}}))).await;
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, graph).await;
    let dir = temp_dir("retired");
    let host = Host::start(upstreams.env(&dir), &dir).await;

    let (timer_status, timer_reply) = host.invoke("ScheduledImport", Host::timer_data()).await;
    let (_, now_reply) = host.invoke("ImportNow", Host::http_data(&[])).await;

    assert_eq!(
        timer_status, 500,
        "a failed timer run must be recorded as failed"
    );
    assert_eq!(timer_reply["ReturnValue"]["outcome"], "failed");
    let error = timer_reply["ReturnValue"]["error"].as_str().unwrap();
    assert!(error.contains("IMPORT_SINK=sentinel"), "{error}");
    assert_eq!(timer_reply["ReturnValue"]["not_delivered"], 25);
    let res = &now_reply["Outputs"]["res"];
    assert_eq!(res["statusCode"], 502);
    let partial: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_eq!(partial["fetched"], 34);
    assert_eq!(
        upstreams.graph.requests().len(),
        2,
        "a retired API is not retried"
    );
}

#[tokio::test]
async fn threatfox_refusals_name_the_setting_and_never_show_the_key() {
    let cases = [
        (
            Reply::json(401, json!({"error": "Unauthorized"})),
            "THREATFOX_AUTH_KEY",
        ),
        (
            Reply::json(403, json!({"query_status": "unknown_auth_key"})),
            "THREATFOX_AUTH_KEY",
        ),
        (
            Reply::json(200, json!({"query_status": "unknown_auth_key"})),
            "THREATFOX_AUTH_KEY",
        ),
        (
            Reply::text(200, "text/html", "<html>maintenance</html>"),
            "not JSON",
        ),
        (
            Reply::json(429, json!({"query_status": "ratelimited"})),
            "rate-limited",
        ),
    ];
    for (answer, expected) in cases {
        let threatfox = Fake::start(move |_, _| answer.clone()).await;
        let upstreams = Upstreams::new(threatfox, fake_graph().await).await;
        let dir = temp_dir("refusals");
        let host = Host::start(upstreams.env(&dir), &dir).await;

        let (status, reply) = host.invoke("ScheduledImport", Host::timer_data()).await;

        assert_eq!(status, 500);
        let error = reply["ReturnValue"]["error"].as_str().unwrap();
        assert!(error.contains(expected), "{error}");
        assert!(!reply.to_string().contains(AUTH_KEY));
        assert!(!host.log().contains(AUTH_KEY));
        assert!(upstreams.graph.requests().is_empty());
    }
}

#[tokio::test]
async fn a_second_import_while_one_runs_gets_409() {
    let slow_feed = sample_feed();
    let threatfox = Fake::start(move |_, _| {
        Reply::json(200, slow_feed.clone()).after(Duration::from_millis(1500))
    })
    .await;
    let upstreams = Upstreams::new(threatfox, fake_graph().await).await;
    let dir = temp_dir("busy");
    let host = Host::start(upstreams.env(&dir), &dir).await;

    let first = host.invoke("ScheduledImport", Host::timer_data());
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        host.invoke("ImportNow", Host::http_data(&[])).await
    };
    let ((first_status, _), (_, second_reply)) = tokio::join!(first, second);

    assert_eq!(first_status, 200);
    assert_eq!(second_reply["Outputs"]["res"]["statusCode"], 409);
    let body: Value =
        serde_json::from_str(second_reply["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("another import is running"),
        "{body}"
    );
    assert_eq!(upstreams.threatfox.requests().len(), 1);
}

#[tokio::test]
async fn the_handler_answers_the_readiness_probe_and_stops_on_sigterm() {
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, fake_graph().await).await;
    let dir = temp_dir("sigterm");
    let host = Host::start(upstreams.env(&dir), &dir).await;
    let (unknown_status, unknown) = host.invoke_raw("NoSuchFunction").await;

    let status = host.terminate();

    assert_eq!(unknown_status, 404);
    assert!(
        unknown.get("Logs").is_some() && unknown.get("Outputs").is_some(),
        "{unknown}"
    );
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_throttled_batch_waits_for_retry_after_before_it_is_sent_again() {
    let graph = Fake::start(|request, count| {
        if count == 0 {
            Reply::json(429, json!({"error": {"code": "TooManyRequests"}}))
                .with_header("retry-after", "1")
        } else {
            graph_accepts(request)
        }
    })
    .await;
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, graph).await;
    let dir = temp_dir("throttled");
    let host = Host::start(upstreams.env(&dir), &dir).await;

    let (status, reply) = host.invoke("ScheduledImport", Host::timer_data()).await;

    assert_eq!(status, 200, "{reply}");
    let requests = upstreams.graph.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(1), "resent after {waited:?}");
    assert_eq!(
        requests[0].body, requests[1].body,
        "the same batch is sent again"
    );
    let report = &reply["ReturnValue"];
    assert_eq!(
        (report["uploaded"].as_u64(), report["throttled"].as_u64()),
        (Some(25), Some(1))
    );
    assert_eq!(report["throttle_wait_ms"], 1000);
    assert_eq!(report["retries"], 1);
}

#[tokio::test]
async fn the_sentinel_sink_uploads_stix_with_ids_that_stay_the_same_across_imports() {
    let sentinel = Fake::start(|_, _| Reply::text(200, "application/json", "")).await;
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, sentinel).await;
    let dir = temp_dir("sentinel");
    let mut env = upstreams.env(&dir);
    env.insert("IMPORT_SINK".into(), "sentinel".into());
    env.insert(
        "SENTINEL_WORKSPACE_ID".into(),
        "9b2a3c1e-3f5d-4a7b-8c9d-0e1f2a3b4c5d".into(),
    );
    env.insert("SENTINEL_API_URL".into(), upstreams.graph.url(""));
    env.insert("STATE_DIR".into(), dir.join("first").display().to_string());
    let host = Host::start(env.clone(), &dir).await;

    let (status, reply) = host.invoke("ScheduledImport", Host::timer_data()).await;
    drop(host);
    env.insert("STATE_DIR".into(), dir.join("second").display().to_string());
    let again = Host::start(env, &dir).await;
    let (again_status, _) = again.invoke("ScheduledImport", Host::timer_data()).await;

    assert_eq!((status, again_status), (200, 200), "{reply}");
    assert_eq!(reply["ReturnValue"]["uploaded"], 25);
    let requests = upstreams.graph.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].uri,
        "/workspaces/9b2a3c1e-3f5d-4a7b-8c9d-0e1f2a3b4c5d/threat-intelligence-stix-objects:upload?api-version=2024-02-01-preview"
    );
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {}", upstreams.token))
    );
    assert!(
        upstreams.identity.requests()[0]
            .uri
            .contains("resource=https%3A%2F%2Fmanagement.azure.com")
    );
    let body = requests[0].json();
    assert_eq!(body["sourcesystem"], "ThreatFox");
    let objects = body["stixobjects"].as_array().unwrap();
    assert_eq!(objects.len(), 25);
    let endpoint = objects
        .iter()
        .find(|o| o["pattern"] == "[ipv4-addr:value = '81.2.69.142']")
        .unwrap();
    assert!(
        endpoint["labels"]
            .as_array()
            .unwrap()
            .contains(&json!("port:80")),
        "{endpoint}"
    );
    let ids = |body: &Value| -> Vec<Value> {
        body["stixobjects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].clone())
            .collect()
    };
    assert_eq!(
        ids(&body),
        ids(&requests[1].json()),
        "a re-import updates the same objects"
    );
}

#[tokio::test]
async fn without_a_key_the_handler_starts_and_each_import_names_the_setting() {
    let upstreams = Upstreams::new(fake_threatfox(sample_feed()).await, fake_graph().await).await;
    let dir = temp_dir("no-key");
    let mut env = upstreams.env(&dir);
    env.remove("THREATFOX_AUTH_KEY");
    let host = Host::start(env, &dir).await;

    let (timer_status, timer_reply) = host.invoke("ScheduledImport", Host::timer_data()).await;
    let (_, now_reply) = host.invoke("ImportNow", Host::http_data(&[])).await;

    assert_eq!(timer_status, 500);
    assert!(
        timer_reply["ReturnValue"]["error"]
            .as_str()
            .unwrap()
            .contains("setting THREATFOX_AUTH_KEY")
    );
    assert_eq!(now_reply["Outputs"]["res"]["statusCode"], 500);
    assert!(
        now_reply["Outputs"]["res"]["body"]
            .as_str()
            .unwrap()
            .contains("THREATFOX_AUTH_KEY")
    );
    assert!(
        host.log()
            .contains("imports will fail until the setting is fixed"),
        "{}",
        host.log()
    );
    assert!(upstreams.threatfox.requests().is_empty());
}
