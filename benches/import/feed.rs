//! Synthetic ThreatFox `get_iocs` responses: the record shape documented in
//! REFERENCE.md, with a mix of IoC types close to what the feed publishes on a normal day.
//!
//! The generator is deterministic (a fixed-seed splitmix64), so every run and every
//! machine sends the same bytes for the same case.

use serde::Serialize;
use time::OffsetDateTime;
use time::macros::format_description;

/// Shares of each IoC type, per thousand records. ThreatFox does not publish its mix; this
/// is the rough shape of recent days (mostly C2 endpoints and payload URLs, some domains,
/// few hashes and e-mail senders), with a few SHA3-384 hashes, which the Graph sink skips.
pub const MIX_PER_THOUSAND: [(&str, u32); 9] = [
    ("ip:port", 400),
    ("url", 300),
    ("domain", 200),
    ("sha256_hash", 60),
    ("md5_hash", 20),
    ("sha1_hash", 10),
    ("sha3_384_hash", 2),
    ("envelope_from", 4),
    ("body_from", 4),
];

/// Malware families as ThreatFox names them: Malpedia name, printable name, aliases.
const FAMILIES: [(&str, &str, Option<&str>); 8] = [
    (
        "win.cobalt_strike",
        "Cobalt Strike",
        Some("Agentemis,BEACON,CobaltStrike,cobeacon"),
    ),
    (
        "win.ave_maria",
        "Ave Maria",
        Some("AVE_MARIA,AveMariaRAT,Warzone RAT,avemaria"),
    ),
    ("elf.mirai", "Mirai", Some("Katana")),
    (
        "win.agent_tesla",
        "Agent Tesla",
        Some("AgenTesla,AgentTesla,Negasteal"),
    ),
    ("win.asyncrat", "AsyncRAT", None),
    ("win.remcos", "Remcos", Some("RemcosRAT,Remvio,Socmer")),
    ("js.clearfake", "ClearFake", None),
    ("unknown", "Unknown malware", None),
];

const REPORTERS: [&str; 5] = ["drb_ra", "Virus_Deck", "abuse_ch", "skocherhan", "juroots"];

/// One record, field for field as ThreatFox sends it.
#[derive(Serialize)]
struct Record<'a> {
    id: String,
    ioc: String,
    threat_type: &'a str,
    threat_type_desc: &'a str,
    ioc_type: &'a str,
    ioc_type_desc: &'a str,
    malware: &'a str,
    malware_printable: &'a str,
    malware_alias: Option<&'a str>,
    malware_malpedia: String,
    confidence_level: u8,
    is_compromised: bool,
    first_seen: String,
    last_seen: Option<String>,
    reference: Option<String>,
    reporter: &'a str,
    tags: Option<Vec<&'a str>>,
}

/// A deterministic pseudo-random source.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn hex(&mut self, digits: usize) -> String {
        let mut out = String::with_capacity(digits);
        while out.len() < digits {
            out.push_str(&format!("{:016x}", self.next()));
        }
        out.truncate(digits);
        out
    }
}

/// A `get_iocs` response of `count` records first seen over the last `days` days, newest
/// first (as ThreatFox orders them), ids counting down.
pub fn synthetic_response(count: usize, days: u8) -> anyhow::Result<Vec<u8>> {
    let mut rng = SplitMix(0x7f4a_7c15 ^ count as u64);
    let now = OffsetDateTime::now_utc();
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let window_secs = i64::from(days) * 86_400 - 60;

    let mut out = Vec::with_capacity(count * 640 + 64);
    out.extend_from_slice(br#"{"query_status":"ok","data":["#);
    for n in 0..count {
        if n > 0 {
            out.push(b',');
        }
        let age = window_secs * n as i64 / count.max(1) as i64;
        let first_seen = now - time::Duration::seconds(age);
        let last_seen = (rng.below(5) == 0).then(|| first_seen + time::Duration::minutes(30));
        let record = record(&mut rng, 1_600_000 - n as u64, n);
        let record = Record {
            first_seen: first_seen.format(format)?,
            last_seen: last_seen.map(|t| t.format(format)).transpose()?,
            ..record
        };
        serde_json::to_writer(&mut out, &record)?;
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// A record with its type chosen by `MIX_PER_THOUSAND`; timestamps are filled by the caller.
fn record(rng: &mut SplitMix, id: u64, n: usize) -> Record<'static> {
    let ioc_type = type_for(n);
    let (malware, malware_printable, malware_alias) = FAMILIES[rng.below(8) as usize];
    let (ioc, threat_type, ioc_type_desc) = match ioc_type {
        "ip:port" if rng.below(50) == 0 => (
            format!(
                "2a02:cf40:{:x}::{:x}:{}",
                rng.below(65_536),
                rng.below(65_536),
                port(rng)
            ),
            "botnet_cc",
            "ip:port combination that is used for botnet Command&control (C&C)",
        ),
        "ip:port" => (
            format!(
                "{}.{}.{}.{}:{}",
                1 + rng.below(222),
                rng.below(256),
                rng.below(256),
                1 + rng.below(254),
                port(rng)
            ),
            "botnet_cc",
            "ip:port combination that is used for botnet Command&control (C&C)",
        ),
        "url" => (
            format!(
                "http://{}.example-{}.com/{}/payload.bin?id={}",
                rng.hex(8),
                rng.below(1000),
                rng.hex(6),
                rng.below(100_000)
            ),
            "payload_delivery",
            "URL that is used for payload delivery",
        ),
        "domain" => (
            format!("{}-{}.example.net", rng.hex(10), rng.below(100)),
            "botnet_cc",
            "Domain that is used for botnet Command&control (C&C)",
        ),
        "sha256_hash" => (rng.hex(64), "payload", "SHA256 hash of a malware sample"),
        "md5_hash" => (rng.hex(32), "payload", "MD5 hash of a malware sample"),
        "sha1_hash" => (rng.hex(40), "payload", "SHA1 hash of a malware sample"),
        "sha3_384_hash" => (rng.hex(96), "payload", "SHA3-384 hash of a malware sample"),
        _ => (
            format!("billing{}@{}-mail.example.org", rng.below(1000), rng.hex(6)),
            "payload_delivery",
            "Sender address of a malicious e-mail",
        ),
    };
    let reference = match rng.below(3) {
        0 => None,
        1 => Some(String::new()),
        _ => Some(format!(
            "https://twitter.com/reporter/status/{}",
            1_479_018_729_715_417_094u64 + rng.below(1 << 40)
        )),
    };
    let tags = match rng.below(4) {
        0 => None,
        1 => Some(vec![malware_printable]),
        2 => Some(vec![malware_printable, "c2", "exe"]),
        _ => Some(vec!["dropped-by-SmokeLoader", "signed"]),
    };
    Record {
        id: id.to_string(),
        ioc,
        threat_type,
        threat_type_desc: match threat_type {
            "botnet_cc" => "Indicator that identifies a botnet command&control server (C&C)",
            "payload" => "Indicator that identifies a malware sample (payload)",
            _ => "Indicator that identifies a malware distribution server (payload delivery)",
        },
        ioc_type,
        ioc_type_desc,
        malware,
        malware_printable,
        malware_alias,
        malware_malpedia: format!("https://malpedia.caad.fkie.fraunhofer.de/details/{malware}"),
        confidence_level: [50, 75, 100][rng.below(3) as usize],
        is_compromised: rng.below(20) == 0,
        first_seen: String::new(),
        last_seen: None,
        reference,
        reporter: REPORTERS[rng.below(5) as usize],
        tags,
    }
}

/// The type of the `n`th record: the mix repeats every thousand records, interleaved (337
/// is prime to 1000) so that each batch holds a little of everything.
fn type_for(n: usize) -> &'static str {
    let mut slot = (n * 337 % 1000) as u32;
    for (ioc_type, share) in MIX_PER_THOUSAND {
        if slot < share {
            return ioc_type;
        }
        slot -= share;
    }
    "ip:port"
}

fn port(rng: &mut SplitMix) -> u64 {
    [80, 443, 8080, 2222, 4444, 7000][rng.below(6) as usize]
}

/// How many records of a synthetic feed of `count` the Graph sink cannot carry
/// (SHA3-384 hashes).
pub fn unsupported_by_graph(count: usize) -> usize {
    (0..count)
        .filter(|n| type_for(*n) == "sha3_384_hash")
        .count()
}
