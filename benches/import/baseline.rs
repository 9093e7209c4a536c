//! The old way, for comparison: one create request per IoC, sent one after another (what
//! the Logic App did), and the CPU cost of parsing and mapping alone.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;
use threatfox_sentinel::config::TargetProduct;
use threatfox_sentinel::feed::parse_response;
use threatfox_sentinel::sink::{GraphOptions, map_graph_indicator};

use crate::fakes::{self, Fakes, lock};

/// What the one-by-one loop did.
pub struct Sent {
    /// Indicators created.
    pub created: u64,
    /// Time spent sending, from the first request to the last answer.
    pub elapsed: Duration,
    /// The fake's latency per request.
    pub latency: Duration,
}

fn options() -> GraphOptions {
    GraphOptions {
        tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned(),
        target_product: TargetProduct::AzureSentinel,
        action: "alert".to_owned(),
        expiration_days: 90,
    }
}

/// Maps the feed like the program does, then creates each indicator with its own request.
pub async fn logic_app(fakes: &Fakes, body: &[u8], latency: Duration) -> anyhow::Result<Sent> {
    let feed = parse_response(body)?;
    let options = options();
    let indicators: Vec<Value> = feed
        .iocs
        .iter()
        .filter_map(|ioc| map_graph_indicator(ioc, &options).ok())
        .collect();
    lock(&fakes.sink).reset(latency, None);
    let client = reqwest::Client::new();
    let url = format!("{}/security/tiIndicators", fakes.graph_url);

    let started = Instant::now();
    for indicator in &indicators {
        let response = client
            .post(&url)
            .bearer_auth(fakes::TOKEN)
            .json(indicator)
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!(
                "the fake sink answered {} to a single create",
                response.status()
            );
        }
    }
    let elapsed = started.elapsed();
    Ok(Sent {
        created: lock(&fakes.sink).single_creates,
        elapsed,
        latency,
    })
}

/// Prints the loop's figures and the speed-up of the program's run of the same day.
pub fn print(sent: &Sent, program_wall: Option<Duration>) {
    println!();
    println!(
        "logic app baseline (one create per IoC, sequential, {} ms latency): {} indicators in \
         {:.2} s ({} requests, 1.0000 requests/indicator)",
        sent.latency.as_millis(),
        sent.created,
        sent.elapsed.as_secs_f64(),
        sent.created,
    );
    if let Some(wall) = program_wall {
        println!(
            "speed-up of `import` on the same day (case day, whole process): {:.1}x ({:.2} s vs \
             {:.2} s)",
            sent.elapsed.as_secs_f64() / wall.as_secs_f64(),
            wall.as_secs_f64(),
            sent.elapsed.as_secs_f64()
        );
    }
}

/// Parses `body` and maps every IoC to a Graph indicator; gives IoCs per second.
pub fn parse_and_map(body: &[u8]) -> anyhow::Result<f64> {
    let options = options();
    let started = Instant::now();
    let feed = parse_response(body)?;
    let mut mapped = 0u64;
    for ioc in &feed.iocs {
        if map_graph_indicator(ioc, &options).is_ok() {
            mapped += 1;
        }
    }
    let elapsed = started.elapsed();
    if mapped == 0 {
        bail!("nothing was mapped");
    }
    Ok(feed.received as f64 / elapsed.as_secs_f64())
}
