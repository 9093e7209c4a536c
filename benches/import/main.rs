//! The import benchmark: runs the release-built `threatfox-sentinel import` as a child
//! process against fake upstreams on 127.0.0.1 and prints what it cost (wall time, CPU
//! time, peak RSS, requests) next to the lower bound the sink allows. Figures, not asserts:
//! see BENCHMARKS.md for how to read them.
//!
//! Run with `cargo bench --bench import`. `BENCH_LATENCY_MS` sets the fake sink's
//! per-request latency (default 50); `BENCH_ONLY` runs only the cases whose name contains
//! it; `BENCH_RUST_LOG` sets the program's `RUST_LOG` (default `warn`); `BENCH_KEEP` keeps
//! each run's log and state directory.

mod baseline;
mod child;
mod fakes;
mod feed;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use child::{ChildFigures, MEASURE_FLAG};
use fakes::{Fakes, lock};

/// The program under test, built by cargo with the bench profile.
const PROGRAM: &str = env!("CARGO_BIN_EXE_threatfox-sentinel");

/// One import run: a feed size and what the fake sink enforces.
struct Case {
    name: &'static str,
    iocs: usize,
    days: u8,
    /// The fake sink's per-request latency.
    latency: Duration,
    /// The fake sink's limit, requests per sliding 60 s window.
    sink_limit: Option<u32>,
    /// `UPLOAD_MAX_REQUESTS_PER_MINUTE` for the program; unset uses the sink's own limit.
    upload_limit: Option<u32>,
    /// `IMPORT_SINK`.
    sink: &'static str,
}

/// What a case measured.
struct Outcome {
    figures: ChildFigures,
    requests: u64,
    items: u64,
    throttled: u64,
    /// Token and feed requests, which are not sink requests.
    others: u64,
    lower_bound: Duration,
    /// Spawn to the first sink request: process start, token, feed download and parse.
    before_first: Duration,
    /// The program's time between a sink answer and its next request, summed.
    client_gaps: Duration,
    /// The sink's time from arrival to answer, summed (latency plus timer slack).
    served: Duration,
    /// The last sink answer to the program's exit.
    after_last: Duration,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(MEASURE_FLAG) {
        return child::wrapper_main(&args[1..]);
    }
    let latency = Duration::from_millis(
        std::env::var("BENCH_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    );
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let fakes = runtime.block_on(fakes::start())?;
    let root = std::env::temp_dir().join(format!("tfs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;

    println!("program: {PROGRAM}");
    println!("fake sink latency: {} ms per request", latency.as_millis());
    if only.is_empty() || only.contains("ready") {
        print_readiness(&fakes, &root)?;
    }
    if only.is_empty() || only.contains("cpu") {
        print_throughput()?;
    }

    let mut results: Vec<(Case, Outcome)> = Vec::new();
    let mut overheads: Vec<String> = Vec::new();
    println!();
    println!("{}", header());
    for case in cases(latency) {
        if !case.name.contains(only.as_str()) {
            continue;
        }
        let outcome =
            run_case(&fakes, &root, &case).with_context(|| format!("case {}", case.name))?;
        println!("{}", row(&case, &outcome));
        overheads.push(overhead(&case, &outcome));
        results.push((case, outcome));
    }
    println!();
    println!("where the time above the sink's own went (seen from the fake sink):");
    for line in &overheads {
        println!("{line}");
    }
    print_memory_growth(&results);

    if only.is_empty() || only.contains("baseline") {
        let body = feed::synthetic_response(1_526, 1)?;
        let day = results.iter().find(|(c, _)| c.name == "day");
        let sent = runtime.block_on(baseline::logic_app(&fakes, &body, latency))?;
        baseline::print(&sent, day.map(|(_, o)| o.figures.wall));
    }
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("logs and state kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

/// The cases, smallest first. Limits at the real values run on feeds short enough to
/// finish in seconds to a couple of minutes; the stress feed runs at a scaled limit.
fn cases(latency: Duration) -> Vec<Case> {
    let no_limit = |name, iocs, days| Case {
        name,
        iocs,
        days,
        latency,
        sink_limit: None,
        upload_limit: Some(60_000),
        sink: "graph",
    };
    let limited = |name, iocs, days, limit, upload_limit, latency| Case {
        name,
        iocs,
        days,
        latency,
        sink_limit: Some(limit),
        upload_limit,
        sink: "graph",
    };
    vec![
        no_limit("day", 1_526, 1),
        no_limit("week", 20_000, 7),
        no_limit("stress", 200_000, 7),
        limited("day@graph-1000", 1_526, 1, 1_000, None, latency),
        limited("week@graph-1000", 20_000, 7, 1_000, None, latency),
        // The Sentinel sink itself, at its own limit of 100 requests a minute.
        Case {
            sink: "sentinel",
            ..limited("day@sentinel-100", 1_526, 1, 100, None, latency)
        },
        Case {
            sink: "sentinel",
            ..limited("week@sentinel-100", 20_000, 7, 100, None, latency)
        },
        limited(
            "stress@scaled-6000",
            200_000,
            7,
            6_000,
            Some(6_000),
            Duration::from_millis(5),
        ),
    ]
}

fn run_case(fakes: &Fakes, root: &Path, case: &Case) -> anyhow::Result<Outcome> {
    let body = feed::synthetic_response(case.iocs, case.days)?;
    let expected = (case.iocs - feed::unsupported_by_graph(case.iocs)) as u64;
    lock(&fakes.feed).body = body.into();
    lock(&fakes.sink).reset(case.latency, case.sink_limit);
    lock(&fakes.feed).requests = 0;
    *lock(&fakes.tokens) = 0;

    let dir = child::fresh_dir(root, case.name)?;
    let mut env = program_env(fakes, &dir);
    if case.sink == "sentinel" {
        env.retain(|(name, _)| name != "IMPORT_SINK");
        env.extend([
            ("IMPORT_SINK".to_owned(), "sentinel".to_owned()),
            ("SENTINEL_API_URL".to_owned(), fakes.sentinel_url.clone()),
            (
                "SENTINEL_WORKSPACE_ID".to_owned(),
                "9b2a3c1e-3f5d-4a7b-8c9d-0e1f2a3b4c5d".to_owned(),
            ),
        ]);
    }
    if let Some(limit) = case.upload_limit {
        env.push(("UPLOAD_MAX_REQUESTS_PER_MINUTE".into(), limit.to_string()));
    }
    let days = case.days.to_string();
    let log = root.join(format!("{}.log", case.name));
    // The runtime keeps serving the fakes on its own threads while this thread waits.
    let figures =
        child::run_measured(Path::new(PROGRAM), &["import", "--days", &days], &env, &log)?;
    // The wrapper's own start is not the program's: date the program's spawn back from
    // its exit, which the wrapper reports within a millisecond or so.
    let exited = Instant::now();
    let spawned = exited.checked_sub(figures.wall).unwrap_or(exited);

    let sink = lock(&fakes.sink);
    if figures.exit_code != 0 || sink.items != expected {
        bail!(
            "the import exited {} and delivered {} of {expected} indicators; see {}",
            figures.exit_code,
            sink.items,
            log.display()
        );
    }
    let first = sink.first_arrival.unwrap_or(spawned);
    let last = sink.last_answer.unwrap_or(exited);
    Ok(Outcome {
        before_first: first.saturating_duration_since(spawned),
        client_gaps: sink.client_gaps,
        served: sink.served,
        after_last: exited.saturating_duration_since(last),
        figures,
        requests: sink.requests,
        items: sink.items,
        throttled: sink.throttled,
        others: *lock(&fakes.tokens) + lock(&fakes.feed).requests,
        lower_bound: lower_bound(sink.requests, case.latency, case.sink_limit),
    })
}

/// The least time the sink allows for `requests` sequential requests: each takes the
/// latency, and under a limit of L a minute, request starts are at least 60/L s apart
/// (the sustained rate: the window is shared by every client of the app, so a client cannot
/// count on an empty one).
fn lower_bound(requests: u64, latency: Duration, limit: Option<u32>) -> Duration {
    let by_latency = latency * requests as u32;
    let by_limit = limit.map_or(Duration::ZERO, |l| {
        Duration::from_secs_f64(60.0 / f64::from(l) * requests.saturating_sub(1) as f64) + latency
    });
    by_latency.max(by_limit)
}

/// The child's whole environment: nothing is inherited, so no setting on this machine
/// (and no path to the instance metadata service) leaks into a run.
fn program_env(fakes: &Fakes, dir: &Path) -> Vec<(String, String)> {
    let pairs = [
        ("THREATFOX_API_URL", fakes.threatfox_url.as_str()),
        ("THREATFOX_AUTH_KEY", fakes::AUTH_KEY),
        ("GRAPH_API_URL", fakes.graph_url.as_str()),
        ("IMPORT_SINK", "graph"),
        ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("IDENTITY_ENDPOINT", fakes.identity_endpoint.as_str()),
        ("IDENTITY_HEADER", fakes::IDENTITY_HEADER),
        ("LOG_FORMAT", "text"),
    ];
    let mut env: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let level = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    env.push(("RUST_LOG".into(), level));
    let dir = dir.display().to_string();
    env.push(("STATE_DIR".into(), dir.clone()));
    env.push(("TMPDIR".into(), dir));
    env
}

fn header() -> String {
    "| case | IoCs | sink limit/min | UPLOAD_MAX_REQUESTS_PER_MINUTE | latency ms | wall s | \
     CPU s | peak RSS MB | sink requests | delivered | requests/indicator | 429s | \
     token+feed requests | lower bound s | measured/bound |\n\
     |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        .to_owned()
}

fn row(case: &Case, o: &Outcome) -> String {
    let limit = |l: Option<u32>, none: &str| l.map_or(none.to_owned(), |l| l.to_string());
    format!(
        "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {:.4} | {} | {} | {:.2} | {:.3} |",
        case.name,
        case.iocs,
        limit(case.sink_limit, "none"),
        limit(
            case.upload_limit,
            if case.sink == "sentinel" {
                "unset (sentinel: 100)"
            } else {
                "unset (graph: 1000)"
            },
        ),
        case.latency.as_millis(),
        o.figures.wall.as_secs_f64(),
        o.figures.cpu.as_secs_f64(),
        o.figures.peak_rss as f64 / 1_048_576.0,
        o.requests,
        o.items,
        o.requests as f64 / o.items.max(1) as f64,
        o.throttled,
        o.others,
        o.lower_bound.as_secs_f64(),
        o.figures.wall.as_secs_f64() / o.lower_bound.as_secs_f64().max(f64::MIN_POSITIVE),
    )
}

/// The program's own time, split into start (to the first sink request), between
/// requests (answer to next request) and end (last answer to exit).
fn overhead(case: &Case, o: &Outcome) -> String {
    format!(
        "  {}: start {:.0} ms, between requests {:.0} ms ({:.2} ms per request), end {:.0} ms; \
         sink answering {:.0} ms ({:.2} ms per request)",
        case.name,
        o.before_first.as_secs_f64() * 1e3,
        o.client_gaps.as_secs_f64() * 1e3,
        o.client_gaps.as_secs_f64() * 1e3 / o.requests.saturating_sub(1).max(1) as f64,
        o.after_last.as_secs_f64() * 1e3,
        o.served.as_secs_f64() * 1e3,
        o.served.as_secs_f64() * 1e3 / o.requests.max(1) as f64,
    )
}

/// How peak memory grows with the feed, from the unthrottled runs.
fn print_memory_growth(results: &[(Case, Outcome)]) {
    let rss = |name: &str| {
        results
            .iter()
            .find(|(c, _)| c.name == name)
            .map(|(c, o)| (c.iocs as f64, o.figures.peak_rss as f64))
    };
    let (Some(day), Some(week), Some(stress)) = (rss("day"), rss("week"), rss("stress")) else {
        return;
    };
    let per_ioc = |a: (f64, f64), b: (f64, f64)| (b.1 - a.1) / (b.0 - a.0);
    println!();
    println!(
        "peak RSS growth: {:.0} bytes per extra IoC from 1,526 to 20,000, {:.0} from 20,000 to \
         200,000; exponent from 20,000 to 200,000: {:.2} (1.00 = linear)",
        per_ioc(day, week),
        per_ioc(week, stress),
        (stress.1 / week.1).ln() / (stress.0 / week.0).ln()
    );
}

/// Process start to the first answer on `/` for `serve`, several runs.
fn print_readiness(fakes: &Fakes, root: &Path) -> anyhow::Result<()> {
    let dir: PathBuf = child::fresh_dir(root, "serve")?;
    let env = program_env(fakes, &dir);
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..15 {
        times.push(child::time_to_ready(Path::new(PROGRAM), &env)?);
    }
    times.sort();
    println!(
        "serve: start to ready on / over {} runs: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Parse plus Graph mapping on this thread, without I/O.
fn print_throughput() -> anyhow::Result<()> {
    for (iocs, runs) in [(20_000, 5), (200_000, 2)] {
        let body = feed::synthetic_response(iocs, 7)?;
        let mut rates = Vec::new();
        for _ in 0..runs {
            rates.push(baseline::parse_and_map(&body)?);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "parse + map, one thread, {iocs} IoCs ({:.1} MB): median {:.0} IoCs/s, best {:.0} \
             over {runs} runs",
            body.len() as f64 / 1_048_576.0,
            rates[rates.len() / 2],
            rates[rates.len() - 1],
        );
    }
    Ok(())
}
