//! STIX 2.1 for the Sentinel sink: one `indicator` per ThreatFox IoC.
//!
//! The mapping is pure, so `--dry-run` shows exactly what would be uploaded, and each
//! choice that Sentinel or the STIX validators constrain (single-comparison patterns,
//! escaped literals, millisecond timestamps, RFC 3986 reference URLs) is made here.

use reqwest::Url;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;
use uuid::{Uuid, uuid};

use super::KillChainPhase;
use super::sentinel::SentinelOptions;
use crate::feed::{HashAlgorithm, Ioc, Observable, SkipReason};

/// The UUIDv5 namespace of this project's STIX ids.
///
/// Generated once at random for threatfox-sentinel and never to be changed: every
/// indicator id is derived from it and the ThreatFox id, and Sentinel updates an object
/// that is sent again with the same id. Changing it would duplicate every indicator.
pub const STIX_ID_NAMESPACE: Uuid = uuid!("e2897d0e-7736-467d-8a1e-37b6610a7dcc");

/// The STIX 2.1 TLP:CLEAR (formerly TLP:WHITE) marking definition; ThreatFox data is public.
pub const TLP_CLEAR: &str = "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9";

/// The kill chain that [`KillChainPhase`] names phases of.
const KILL_CHAIN_NAME: &str = "lockheed-martin-cyber-kill-chain";

/// The STIX id of the indicator for ThreatFox id `threatfox_id`: a UUIDv5 of
/// `threatfox:<id>` under [`STIX_ID_NAMESPACE`], so every import yields the same id.
pub fn stix_id(threatfox_id: u64) -> String {
    let name = format!("threatfox:{threatfox_id}");
    format!(
        "indicator--{}",
        Uuid::new_v5(&STIX_ID_NAMESPACE, name.as_bytes())
    )
}

/// Maps one IoC to a STIX 2.1 `indicator` for the Upload API.
///
/// The pattern holds one comparison only, because Sentinel does not extract the observable
/// from patterns joined with `AND`; an endpoint's port therefore goes into the labels and
/// the description. SHA3-384 has no name in STIX's hash vocabulary that Sentinel matches,
/// so those IoCs are skipped.
pub fn map_stix_indicator(ioc: &Ioc, options: &SentinelOptions) -> Result<Value, SkipReason> {
    let pattern = stix_pattern(&ioc.observable)?;

    // A hostile feed may claim a last_seen before first_seen; STIX needs modified >= created.
    let created = ioc.first_seen;
    let modified = ioc.last_seen.map_or(created, |last| last.max(created));
    let valid_until = modified
        .checked_add(time::Duration::days(i64::from(
            options.expiration_days.max(1),
        )))
        .ok_or(SkipReason::MalformedRecord)?;

    let mut indicator = json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": stix_id(ioc.id),
        "created": stix_timestamp(created)?,
        "modified": stix_timestamp(modified)?,
        "name": observable_name(&ioc.observable),
        "description": stix_description(ioc),
        "indicator_types": ["malicious-activity"],
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": stix_timestamp(created)?,
        "valid_until": stix_timestamp(valid_until)?,
        "labels": labels(ioc),
        "confidence": ioc.confidence,
        "external_references": external_references(ioc),
        "object_marking_refs": [TLP_CLEAR],
    });

    if let Some(phase) = KillChainPhase::of_threat_type(&ioc.threat_type)
        && let Some(fields) = indicator.as_object_mut()
    {
        fields.insert(
            "kill_chain_phases".into(),
            json!([{ "kill_chain_name": KILL_CHAIN_NAME, "phase_name": phase.stix_name() }]),
        );
    }
    Ok(indicator)
}

/// The single-comparison STIX pattern that matches the observable.
fn stix_pattern(observable: &Observable) -> Result<String, SkipReason> {
    let (path, value) = match observable {
        Observable::Domain(name) => ("domain-name:value", name.clone()),
        Observable::Url(url) => ("url:value", url.clone()),
        Observable::Endpoint { ip, .. } if ip.is_ipv4() => ("ipv4-addr:value", ip.to_string()),
        Observable::Endpoint { ip, .. } => ("ipv6-addr:value", ip.to_string()),
        Observable::FileHash { algorithm, value } => {
            let path = match algorithm {
                HashAlgorithm::Md5 => "file:hashes.MD5",
                HashAlgorithm::Sha1 => "file:hashes.'SHA-1'",
                HashAlgorithm::Sha256 => "file:hashes.'SHA-256'",
                HashAlgorithm::Sha3_384 => return Err(SkipReason::UnsupportedBySink),
            };
            (path, value.clone())
        }
        Observable::EmailSender(address) => ("email-addr:value", address.clone()),
    };
    Ok(format!("[{path} = {}]", quote(&value)))
}

/// A STIX pattern string literal: in quotes, with `\` and `'` escaped by a backslash.
fn quote(value: &str) -> String {
    let mut literal = String::with_capacity(value.len() + 2);
    literal.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            literal.push('\\');
        }
        literal.push(c);
    }
    literal.push('\'');
    literal
}

/// A STIX timestamp: UTC, `Z`, milliseconds (STIX 2.1 requires them on `created` and
/// `modified`, and they are valid everywhere else).
fn stix_timestamp(at: OffsetDateTime) -> Result<String, SkipReason> {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(format)
        .map_err(|_| SkipReason::MalformedRecord)
}

/// The observable as ThreatFox shows it; IPv6 endpoints get brackets so the port stands out.
fn observable_name(observable: &Observable) -> String {
    match observable {
        Observable::Domain(text) | Observable::Url(text) | Observable::EmailSender(text) => {
            text.clone()
        }
        Observable::Endpoint { ip, port } if ip.is_ipv4() => format!("{ip}:{port}"),
        Observable::Endpoint { ip, port } => format!("[{ip}]:{port}"),
        Observable::FileHash { value, .. } => value.clone(),
    }
}

/// "Cobalt Strike botnet C2 (ip:port), port 80, reported to ThreatFox by drb_ra: <link>".
fn stix_description(ioc: &Ioc) -> String {
    let malware = ioc
        .malware_printable
        .as_deref()
        .unwrap_or("Unknown malware");
    let mut text = format!(
        "{malware} {} ({})",
        super::graph::threat_label(&ioc.threat_type),
        ioc.ioc_type
    );
    if let Observable::Endpoint { port, .. } = ioc.observable {
        text.push_str(&format!(", port {port}"));
    }
    text.push_str(", reported to ThreatFox");
    if let Some(reporter) = &ioc.reporter {
        text.push_str(&format!(" by {reporter}"));
    }
    text.push_str(&format!(": {}", ioc.threatfox_url()));
    text
}

/// ThreatFox tags, the Malpedia name, the threat type and `port:N`, without repeats.
fn labels(ioc: &Ioc) -> Vec<String> {
    let port = match ioc.observable {
        Observable::Endpoint { port, .. } => Some(format!("port:{port}")),
        _ => None,
    };
    let candidates = ioc
        .tags
        .iter()
        .map(|tag| tag.to_string())
        .chain(ioc.malware.as_deref().map(str::to_owned))
        .chain([ioc.threat_type.to_string()])
        .chain(port);
    let mut labels: Vec<String> = Vec::new();
    for label in candidates {
        if !labels.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
            labels.push(label);
        }
    }
    labels
}

/// The ThreatFox page, the reporter's reference and the Malpedia page.
///
/// STIX requires reference URLs to be RFC 3986 URIs, which reporters' links often are not;
/// a reference that cannot be made into one is kept as text in `description`.
fn external_references(ioc: &Ioc) -> Vec<Value> {
    let mut references = vec![json!({
        "source_name": "ThreatFox",
        "url": ioc.threatfox_url(),
        "external_id": ioc.id.to_string(),
    })];
    if let Some(reference) = &ioc.reference {
        references.push(match reference_uri(reference) {
            Some(url) => json!({ "source_name": "reference", "url": url }),
            None => json!({ "source_name": "reference", "description": reference }),
        });
    }
    if let Some(url) = ioc.malware_malpedia.as_deref().and_then(reference_uri) {
        let mut malpedia = json!({ "source_name": "Malpedia", "url": url });
        if let (Some(name), Some(fields)) = (&ioc.malware, malpedia.as_object_mut()) {
            fields.insert("external_id".into(), json!(name));
        }
        references.push(malpedia);
    }
    references
}

/// An http(s) link as an RFC 3986 URI: parsed and normalised, then every character that
/// RFC 3986 does not allow after the authority (`[`, `]`, `|`, `\`, a second `#`, ...)
/// percent-encoded.
fn reference_uri(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    let serialized = url.as_str();
    let tail_len = url.path().len()
        + url.query().map_or(0, |q| q.len() + 1)
        + url.fragment().map_or(0, |f| f.len() + 1);
    let (head, tail) = serialized.split_at(serialized.len().checked_sub(tail_len)?);

    let mut uri = head.to_owned();
    let mut in_fragment = false;
    for byte in tail.bytes() {
        let allowed = byte.is_ascii_alphanumeric()
            || b"-._~!$&'()*+,;=:@/?%".contains(&byte)
            || (byte == b'#' && !in_fragment);
        in_fragment |= byte == b'#';
        if allowed {
            uri.push(char::from(byte));
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    Some(uri)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::feed::{Text, parse_record};

    pub(crate) fn options() -> SentinelOptions {
        SentinelOptions {
            source_system: "ThreatFox".into(),
            expiration_days: 90,
        }
    }

    pub(crate) fn ioc_with(id: &str, ioc_type: &str, value: &str, threat_type: &str) -> Ioc {
        parse_record(json!({
            "id": id, "ioc": value, "threat_type": threat_type, "ioc_type": ioc_type,
            "malware": "win.cobalt_strike", "malware_printable": "Cobalt Strike",
            "malware_alias": "Agentemis,BEACON", "confidence_level": 75,
            "malware_malpedia": "https://malpedia.caad.fkie.fraunhofer.de/details/win.cobalt_strike",
            "first_seen": "2022-08-05 10:28:53 UTC", "last_seen": "2022-08-07 00:00:00 UTC",
            "reference": "https://example.org/post", "reporter": "drb_ra",
            "tags": ["CobaltStrike", "c2"]
        }))
        .unwrap()
    }

    pub(crate) fn ioc(ioc_type: &str, value: &str) -> Ioc {
        ioc_with("841500", ioc_type, value, "botnet_cc")
    }

    fn pattern_of(ioc_type: &str, value: &str) -> String {
        let indicator = map_stix_indicator(&ioc(ioc_type, value), &options()).unwrap();
        indicator["pattern"].as_str().unwrap().to_owned()
    }

    #[test]
    fn an_endpoint_becomes_a_full_stix_indicator() {
        let endpoint = ioc("ip:port", "81.2.69.142:80");

        let indicator = map_stix_indicator(&endpoint, &options()).unwrap();

        assert_eq!(
            indicator,
            json!({
                "type": "indicator",
                "spec_version": "2.1",
                "id": stix_id(841500),
                "created": "2022-08-05T10:28:53.000Z",
                "modified": "2022-08-07T00:00:00.000Z",
                "name": "81.2.69.142:80",
                "description": "Cobalt Strike botnet C2 (ip:port), port 80, reported to ThreatFox by drb_ra: https://threatfox.abuse.ch/ioc/841500/",
                "indicator_types": ["malicious-activity"],
                "pattern": "[ipv4-addr:value = '81.2.69.142']",
                "pattern_type": "stix",
                "valid_from": "2022-08-05T10:28:53.000Z",
                "valid_until": "2022-11-05T00:00:00.000Z",
                "labels": ["CobaltStrike", "c2", "win.cobalt_strike", "botnet_cc", "port:80"],
                "confidence": 75,
                "external_references": [
                    {
                        "source_name": "ThreatFox",
                        "url": "https://threatfox.abuse.ch/ioc/841500/",
                        "external_id": "841500"
                    },
                    { "source_name": "reference", "url": "https://example.org/post" },
                    {
                        "source_name": "Malpedia",
                        "url": "https://malpedia.caad.fkie.fraunhofer.de/details/win.cobalt_strike",
                        "external_id": "win.cobalt_strike"
                    }
                ],
                "object_marking_refs": [TLP_CLEAR],
                "kill_chain_phases": [{
                    "kill_chain_name": "lockheed-martin-cyber-kill-chain",
                    "phase_name": "command-and-control"
                }],
            })
        );
    }

    #[test]
    fn each_observable_type_gets_a_single_comparison_pattern() {
        let md5 = "a".repeat(32);
        let sha1 = "b".repeat(40);
        let sha256 = "c".repeat(64);
        let cases = [
            (
                "domain",
                "evil.example",
                "[domain-name:value = 'evil.example']".to_owned(),
            ),
            (
                "url",
                "http://evil.example/a",
                "[url:value = 'http://evil.example/a']".into(),
            ),
            (
                "ip:port",
                "81.2.69.142:443",
                "[ipv4-addr:value = '81.2.69.142']".into(),
            ),
            (
                "ip:port",
                "2a02:cf40:1::5:40669",
                "[ipv6-addr:value = '2a02:cf40:1::5']".into(),
            ),
            ("md5_hash", &md5, format!("[file:hashes.MD5 = '{md5}']")),
            (
                "sha1_hash",
                &sha1,
                format!("[file:hashes.'SHA-1' = '{sha1}']"),
            ),
            (
                "sha256_hash",
                &sha256,
                format!("[file:hashes.'SHA-256' = '{sha256}']"),
            ),
            (
                "envelope_from",
                "a@evil.example",
                "[email-addr:value = 'a@evil.example']".into(),
            ),
            (
                "body_from",
                "b@evil.example",
                "[email-addr:value = 'b@evil.example']".into(),
            ),
        ];

        for (ioc_type, value, expected) in cases {
            let pattern = pattern_of(ioc_type, value);

            assert_eq!(pattern, expected, "{ioc_type} {value}");
            assert!(!pattern.contains(" AND "), "{pattern}");
        }
    }

    #[test]
    fn quotes_and_backslashes_in_urls_are_escaped() {
        let pattern = pattern_of("url", r"http://evil.example/it's\x]'");

        assert_eq!(pattern, r"[url:value = 'http://evil.example/it\'s\\x]\'']");
    }

    #[test]
    fn ipv6_endpoints_keep_their_port_in_labels_and_name() {
        let indicator =
            map_stix_indicator(&ioc("ip:port", "2a02:cf40:1::5:40669"), &options()).unwrap();

        assert_eq!(indicator["name"], "[2a02:cf40:1::5]:40669");
        assert!(
            indicator["labels"]
                .as_array()
                .unwrap()
                .contains(&json!("port:40669"))
        );
        assert!(
            indicator["description"]
                .as_str()
                .unwrap()
                .contains("port 40669")
        );
    }

    #[test]
    fn the_same_threatfox_id_always_gives_the_same_stix_id() {
        let first = map_stix_indicator(&ioc("domain", "a.example"), &options()).unwrap();
        let again = map_stix_indicator(&ioc("domain", "b.example"), &options()).unwrap();
        let other = map_stix_indicator(
            &ioc_with("841501", "domain", "a.example", "botnet_cc"),
            &options(),
        )
        .unwrap();

        assert_eq!(first["id"], again["id"]);
        assert_ne!(first["id"], other["id"]);
        assert_eq!(
            stix_id(841500),
            format!(
                "indicator--{}",
                Uuid::new_v5(&STIX_ID_NAMESPACE, b"threatfox:841500")
            )
        );
        assert_eq!(
            Uuid::parse_str(&stix_id(1)[11..])
                .unwrap()
                .get_version_num(),
            5
        );
    }

    #[test]
    fn sha3_384_is_unsupported_by_the_sentinel_sink() {
        let result = map_stix_indicator(&ioc("sha3_384_hash", &"d".repeat(96)), &options());

        assert_eq!(result, Err(SkipReason::UnsupportedBySink));
    }

    #[test]
    fn kill_chain_phases_appear_only_where_the_threat_type_is_clear() {
        let cases = [
            ("botnet_cc", Some("command-and-control")),
            ("payload_delivery", Some("delivery")),
            ("payload", None),
            ("cc_skimming", None),
        ];
        for (threat_type, phase) in cases {
            let indicator = map_stix_indicator(
                &ioc_with("1", "domain", "evil.example", threat_type),
                &options(),
            )
            .unwrap();

            assert_eq!(
                indicator.pointer("/kill_chain_phases/0/phase_name"),
                phase.map(|p| json!(p)).as_ref(),
                "{threat_type}"
            );
        }
    }

    #[test]
    fn validity_never_runs_backwards_when_last_seen_precedes_first_seen() {
        let mut odd = ioc("domain", "evil.example");
        odd.last_seen = Some(time::macros::datetime!(2020-01-01 00:00:00 UTC));

        let indicator = map_stix_indicator(&odd, &options()).unwrap();

        assert_eq!(indicator["modified"], indicator["created"]);
        assert_eq!(indicator["valid_until"], "2022-11-03T10:28:53.000Z");
    }

    #[test]
    fn labels_are_deduplicated_without_case() {
        let mut tagged = ioc("domain", "evil.example");
        tagged.tags = ["Botnet_CC", "WIN.COBALT_STRIKE", "x"]
            .map(Text::from)
            .into();

        let indicator = map_stix_indicator(&tagged, &options()).unwrap();

        assert_eq!(
            indicator["labels"],
            json!(["Botnet_CC", "WIN.COBALT_STRIKE", "x"])
        );
    }

    #[test]
    fn reference_links_become_rfc_3986_uris_or_stay_text() {
        assert_eq!(
            reference_uri("https://evil.example/a b/[x]|y?q=ü#f#g").as_deref(),
            Some("https://evil.example/a%20b/%5Bx%5D%7Cy?q=%C3%BC#f%23g")
        );
        assert_eq!(
            reference_uri("http://[2a02::1]:8080/it's").as_deref(),
            Some("http://[2a02::1]:8080/it's")
        );
        assert_eq!(reference_uri("see twitter"), None);
        assert_eq!(reference_uri("ftp://evil.example/"), None);
    }
}
