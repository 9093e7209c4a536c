//! The fake ThreatFox: the sample feed, or a generated feed of domain IoCs whose ids the
//! test can change between imports.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Fake, Reply};

/// ThreatFox answering every request with `body`.
pub async fn fake_threatfox(body: Value) -> Fake {
    Fake::start(move |_, _| Reply::json(200, body.clone())).await
}

/// A ThreatFox feed the test can change between imports.
#[derive(Clone)]
pub struct Feed(Arc<Mutex<Value>>);

impl Feed {
    /// A feed of one domain IoC per id, each first seen an hour ago.
    pub fn of_ids(ids: impl IntoIterator<Item = u64>) -> Self {
        Self(Arc::new(Mutex::new(domain_feed(ids))))
    }

    /// Replaces what ThreatFox serves from the next request on.
    pub fn serve_ids(&self, ids: impl IntoIterator<Item = u64>) {
        *self.0.lock().unwrap() = domain_feed(ids);
    }

    /// ThreatFox answering every request with the feed as it is at that moment.
    pub async fn start(&self) -> Fake {
        let feed = self.0.clone();
        Fake::start(move |_, _| Reply::json(200, feed.lock().unwrap().clone())).await
    }
}

/// A `get_iocs` response with one domain IoC per id, as ThreatFox formats them.
pub fn domain_feed(ids: impl IntoIterator<Item = u64>) -> Value {
    let seen = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let first_seen = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        seen.year(),
        u8::from(seen.month()),
        seen.day(),
        seen.hour(),
        seen.minute(),
        seen.second()
    );
    let data: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            json!({
                "id": id.to_string(),
                "ioc": format!("c2-{id}.example.com"),
                "threat_type": "botnet_cc",
                "ioc_type": "domain",
                "malware": "win.cobalt_strike",
                "malware_printable": "Cobalt Strike",
                "malware_alias": null,
                "confidence_level": 90,
                "first_seen": first_seen,
                "last_seen": null,
                "reference": null,
                "reporter": "test",
                "tags": ["test"],
            })
        })
        .collect();
    json!({ "query_status": "ok", "data": data })
}
