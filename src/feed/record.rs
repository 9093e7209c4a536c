//! Turns one raw ThreatFox record into a validated [`Ioc`], or says why it cannot be used.
//!
//! ThreatFox is a community feed: values arrive as typed by reporters. Each check here is
//! strict enough that a sink never receives an observable it would reject for its shape.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::ioc::{HashAlgorithm, Ioc, IocType, Observable, SkipReason, Text};

/// The fields of a ThreatFox record this program reads; unknown fields are ignored. Text is
/// borrowed from the record's JSON where it has no escapes, so reading a record allocates
/// only what is kept.
#[derive(Debug, Deserialize)]
struct RawRecord<'a> {
    id: Option<Value>,
    #[serde(borrow)]
    ioc: Option<Cow<'a, str>>,
    #[serde(borrow)]
    threat_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ioc_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    malware: Option<Cow<'a, str>>,
    #[serde(borrow)]
    malware_printable: Option<Cow<'a, str>>,
    #[serde(borrow)]
    malware_alias: Option<Cow<'a, str>>,
    #[serde(borrow)]
    malware_malpedia: Option<Cow<'a, str>>,
    confidence_level: Option<Value>,
    #[serde(borrow)]
    first_seen: Option<Cow<'a, str>>,
    #[serde(borrow)]
    last_seen: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reference: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reporter: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tags: Option<Vec<Option<Cow<'a, str>>>>,
}

/// Validates one element of the feed's `data` array.
pub fn parse_record(value: Value) -> Result<Ioc, SkipReason> {
    parse_record_json(&value.to_string(), &mut Interner::default())
}

/// Validates one element of the feed's `data` array, given as its JSON text, sharing
/// repeated text through `interner`: malware names, aliases, tags, reporters and threat
/// types recur across thousands of records and are then held once.
pub fn parse_record_json(json: &str, interner: &mut Interner) -> Result<Ioc, SkipReason> {
    let raw: RawRecord<'_> = serde_json::from_str(json).map_err(|_| SkipReason::MalformedRecord)?;

    let id = raw
        .id
        .as_ref()
        .and_then(parse_id)
        .ok_or(SkipReason::MalformedRecord)?;
    let ioc_type = raw.ioc_type.as_deref().ok_or(SkipReason::MalformedRecord)?;
    let ioc_type: IocType = ioc_type.parse().map_err(|_| SkipReason::UnknownType)?;
    let value = raw.ioc.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let value = value.ok_or(SkipReason::MalformedRecord)?;
    let observable = parse_observable(ioc_type, value).ok_or(SkipReason::InvalidObservable)?;

    let first_seen = raw.first_seen.as_deref().and_then(parse_timestamp);
    let first_seen = first_seen.ok_or(SkipReason::MalformedRecord)?;
    let last_seen = match raw.last_seen.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(parse_timestamp(text).ok_or(SkipReason::MalformedRecord)?),
    };
    let confidence = match &raw.confidence_level {
        None | Some(Value::Null) => 0,
        Some(v) => parse_confidence(v).ok_or(SkipReason::MalformedRecord)?,
    };

    Ok(Ioc {
        id,
        ioc_type,
        observable,
        threat_type: interner.text(non_blank(&raw.threat_type).unwrap_or("unknown")),
        malware: non_blank(&raw.malware).map(|t| interner.text(t)),
        malware_printable: non_blank(&raw.malware_printable)
            .filter(|name| !name.eq_ignore_ascii_case("unknown malware"))
            .map(|t| interner.text(t)),
        malware_aliases: interner.aliases(raw.malware_alias.as_deref().unwrap_or_default()),
        malware_malpedia: non_blank(&raw.malware_malpedia).map(|t| interner.text(t)),
        confidence,
        first_seen,
        last_seen,
        reference: non_blank(&raw.reference).map(|t| interner.text(t)),
        reporter: non_blank(&raw.reporter).map(|t| interner.text(t)),
        tags: clean_tags(raw.tags.as_deref().unwrap_or_default(), interner),
    })
}

/// ThreatFox sends ids as strings of digits; a bare number is accepted too.
fn parse_id(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => text.trim().parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

fn parse_confidence(value: &Value) -> Option<u8> {
    let number = match value {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    u8::try_from(number).ok().filter(|n| *n <= 100)
}

/// Parses ThreatFox's `2022-08-05 10:28:53 UTC`, and RFC 3339 in case the format changes.
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    let threatfox = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    if let Some(naive) = text.strip_suffix(" UTC") {
        return PrimitiveDateTime::parse(naive, threatfox)
            .ok()
            .map(|t| t.assume_utc());
    }
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn non_blank<'a>(value: &'a Option<Cow<'_, str>>) -> Option<&'a str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Shares one allocation among the records that repeat the same text.
#[derive(Debug, Default)]
pub struct Interner {
    texts: HashSet<Text>,
    alias_lists: HashMap<String, Arc<[Text]>>,
}

impl Interner {
    /// The shared copy of `text`.
    pub fn text(&mut self, text: &str) -> Text {
        if let Some(shared) = self.texts.get(text) {
            return shared.clone();
        }
        let shared: Text = Arc::from(text);
        self.texts.insert(shared.clone());
        shared
    }

    /// The shared list of names in a comma-separated `malware_alias`, without blanks and
    /// repeats (compared without case).
    fn aliases(&mut self, aliases: &str) -> Arc<[Text]> {
        if let Some(list) = self.alias_lists.get(aliases) {
            return list.clone();
        }
        let mut names: Vec<Text> = Vec::new();
        for name in aliases.split(',').map(str::trim) {
            if !name.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(self.text(name));
            }
        }
        let list: Arc<[Text]> = names.into();
        self.alias_lists.insert(aliases.to_owned(), list.clone());
        list
    }
}

fn clean_tags(tags: &[Option<Cow<'_, str>>], interner: &mut Interner) -> Box<[Text]> {
    let mut clean: Vec<Text> = Vec::new();
    for tag in tags.iter().flatten() {
        let tag = tag.trim();
        if !tag.is_empty() && !clean.iter().any(|t| &**t == tag) {
            clean.push(interner.text(tag));
        }
    }
    clean.into_boxed_slice()
}

fn parse_observable(ioc_type: IocType, value: &str) -> Option<Observable> {
    match ioc_type {
        IocType::IpPort => parse_endpoint(value),
        IocType::Domain => parse_domain(value).map(Observable::Domain),
        IocType::Url => parse_url(value).map(Observable::Url),
        IocType::Md5 => parse_hash(HashAlgorithm::Md5, value),
        IocType::Sha1 => parse_hash(HashAlgorithm::Sha1, value),
        IocType::Sha256 => parse_hash(HashAlgorithm::Sha256, value),
        IocType::Sha3_384 => parse_hash(HashAlgorithm::Sha3_384, value),
        IocType::EnvelopeFrom | IocType::BodyFrom => {
            parse_email(value).map(Observable::EmailSender)
        }
    }
}

/// `IP:PORT`, where an IPv6 address comes without brackets: the port follows the last colon.
fn parse_endpoint(value: &str) -> Option<Observable> {
    let (host, port) = value.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some(Observable::Endpoint { ip, port })
}

fn parse_hash(algorithm: HashAlgorithm, value: &str) -> Option<Observable> {
    let is_hex = value.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex && value.len() == algorithm.hex_len()).then(|| Observable::FileHash {
        algorithm,
        value: value.to_ascii_lowercase(),
    })
}

/// A DNS name of at least two labels, each 1-63 letters, digits, hyphens or underscores,
/// not starting or ending with a hyphen, and a top-level label that is not all digits.
pub fn parse_domain(value: &str) -> Option<String> {
    let name = value.trim_end_matches('.').to_ascii_lowercase();
    if name.len() > 253 || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |label: &&str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let tld_ok = labels
        .last()
        .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()));
    (labels.len() >= 2 && labels.iter().all(label_ok) && tld_ok).then_some(name)
}

/// A URL that parses and names a host; the text is kept as published so that it matches
/// what appears in alerts.
fn parse_url(value: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(value).ok()?;
    let has_host = parsed.host_str().is_some_and(|h| !h.is_empty());
    let is_plain = !value.chars().any(|c| c.is_whitespace() || c.is_control());
    (has_host && is_plain).then(|| value.to_owned())
}

/// `local@domain` with a plausible domain; ThreatFox e-mail IoCs are sender addresses.
fn parse_email(value: &str) -> Option<String> {
    let (local, domain) = value.rsplit_once('@')?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    let domain = parse_domain(domain)?;
    local_ok.then(|| format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn record(ioc_type: &str, ioc: &str) -> Value {
        json!({
            "id": "841500", "ioc": ioc, "threat_type": "botnet_cc", "ioc_type": ioc_type,
            "malware": "win.cobalt_strike", "malware_printable": "Cobalt Strike",
            "malware_alias": "Agentemis,BEACON,CobaltStrike,cobeacon",
            "confidence_level": 100, "first_seen": "2022-08-05 10:28:53 UTC",
            "last_seen": null, "reference": null, "reporter": "drb_ra", "tags": ["CobaltStrike"]
        })
    }

    fn texts(list: &[Text]) -> Vec<&str> {
        list.iter().map(|t| &**t).collect()
    }

    #[test]
    fn repeated_text_is_held_once() {
        let mut interner = Interner::default();

        let first =
            parse_record_json(&record("domain", "a.example").to_string(), &mut interner).unwrap();
        let second =
            parse_record_json(&record("domain", "b.example").to_string(), &mut interner).unwrap();

        assert!(Arc::ptr_eq(&first.threat_type, &second.threat_type));
        assert!(Arc::ptr_eq(&first.malware_aliases, &second.malware_aliases));
        assert!(Arc::ptr_eq(&first.tags[0], &second.tags[0]));
    }

    fn observable(ioc_type: &str, ioc: &str) -> Result<Observable, SkipReason> {
        parse_record(record(ioc_type, ioc)).map(|i| i.observable)
    }

    #[test]
    fn a_reference_record_is_read_field_by_field() {
        let ioc = parse_record(record("ip:port", "81.2.69.142:80")).unwrap();

        assert_eq!(ioc.id, 841500);
        assert_eq!(ioc.ioc_type, IocType::IpPort);
        assert_eq!(
            ioc.observable,
            Observable::Endpoint {
                ip: [81, 2, 69, 142].into(),
                port: 80
            }
        );
        assert_eq!(&*ioc.threat_type, "botnet_cc");
        assert_eq!(ioc.malware.as_deref(), Some("win.cobalt_strike"));
        assert_eq!(
            texts(&ioc.malware_aliases),
            ["Agentemis", "BEACON", "CobaltStrike", "cobeacon"]
        );
        assert_eq!(ioc.confidence, 100);
        assert_eq!(ioc.first_seen, datetime!(2022-08-05 10:28:53 UTC));
        assert_eq!(ioc.last_seen, None);
        assert_eq!(ioc.reference, None);
        assert_eq!(texts(&ioc.tags), ["CobaltStrike"]);
    }

    #[test]
    fn ipv6_endpoints_split_on_the_last_colon() {
        let parsed = observable("ip:port", "2a02:cf40:1::5:40669").unwrap();

        let ip: IpAddr = "2a02:cf40:1::5".parse().unwrap();
        assert_eq!(parsed, Observable::Endpoint { ip, port: 40669 });
    }

    #[test]
    fn malformed_endpoints_are_invalid_observables() {
        for bad in [
            "81.2.69.142",
            "81.2.69.142:0",
            "81.2.69.142:70000",
            "999.1.1.1:80",
            ":80",
        ] {
            assert_eq!(
                observable("ip:port", bad),
                Err(SkipReason::InvalidObservable),
                "{bad}"
            );
        }
    }

    #[test]
    fn hashes_must_have_the_right_length_and_are_lowercased() {
        let md5 = "D41D8CD98F00B204E9800998ECF8427E";

        assert_eq!(
            observable("md5_hash", md5),
            Ok(Observable::FileHash {
                algorithm: HashAlgorithm::Md5,
                value: md5.to_ascii_lowercase()
            })
        );
        assert_eq!(
            observable("sha1_hash", md5),
            Err(SkipReason::InvalidObservable)
        );
        assert_eq!(
            observable("sha256_hash", "xyz"),
            Err(SkipReason::InvalidObservable)
        );
        assert!(observable("sha3_384_hash", &"ab".repeat(48)).is_ok());
    }

    #[test]
    fn domains_are_checked_and_normalised() {
        assert_eq!(
            observable("domain", "Evil.Example.COM."),
            Ok(Observable::Domain("evil.example.com".into()))
        );
        for bad in [
            "localhost",
            "bad domain.com",
            "-x.com",
            "1.2.3.4",
            "a..b",
            "x.123",
        ] {
            assert_eq!(
                observable("domain", bad),
                Err(SkipReason::InvalidObservable),
                "{bad}"
            );
        }
    }

    #[test]
    fn urls_need_a_host_and_no_spaces() {
        let url = "http://evil.example/it's\\here?a=1";
        assert_eq!(observable("url", url), Ok(Observable::Url(url.into())));
        for bad in ["not a url", "evil.example/path", "http://", "mailto:x@y.z"] {
            assert_eq!(
                observable("url", bad),
                Err(SkipReason::InvalidObservable),
                "{bad}"
            );
        }
    }

    #[test]
    fn email_senders_need_a_local_part_and_a_domain() {
        assert_eq!(
            observable("envelope_from", "billing@Evil.Example"),
            Ok(Observable::EmailSender("billing@evil.example".into()))
        );
        for bad in [
            "no-at-sign",
            "@evil.example",
            "x@localhost",
            "a b@evil.example",
        ] {
            assert_eq!(
                observable("body_from", bad),
                Err(SkipReason::InvalidObservable),
                "{bad}"
            );
        }
    }

    #[test]
    fn records_missing_required_fields_are_malformed() {
        let mut no_id = record("domain", "evil.example");
        no_id["id"] = json!(null);
        let mut bad_time = record("domain", "evil.example");
        bad_time["first_seen"] = json!("yesterday");
        let mut bad_confidence = record("domain", "evil.example");
        bad_confidence["confidence_level"] = json!(250);
        let mut wrong_shape = record("domain", "evil.example");
        wrong_shape["tags"] = json!("not-a-list");

        for bad in [
            no_id,
            bad_time,
            bad_confidence,
            wrong_shape,
            json!("just a string"),
        ] {
            assert_eq!(parse_record(bad), Err(SkipReason::MalformedRecord));
        }
    }

    #[test]
    fn dates_at_the_end_of_the_calendar_do_not_overflow_the_expiry() {
        let mut raw = record("domain", "evil.example");
        raw["first_seen"] = json!("9999-12-30 00:00:00 UTC");

        let ioc = parse_record(raw).unwrap();

        assert_eq!(ioc.expires_at(90).year(), 9999);
    }

    #[test]
    fn unknown_types_are_reported_as_such() {
        assert_eq!(
            observable("ja3_fingerprint", "abc"),
            Err(SkipReason::UnknownType)
        );
    }

    #[test]
    fn unknown_malware_and_blank_aliases_are_dropped() {
        let mut raw = record("domain", "evil.example");
        raw["malware_printable"] = json!("Unknown malware");
        raw["malware_alias"] = json!(" ,beacon,BEACON, ");
        raw["tags"] = json!(["a", null, "a", " "]);

        let ioc = parse_record(raw).unwrap();

        assert_eq!(ioc.malware_printable, None);
        assert_eq!(texts(&ioc.malware_aliases), ["beacon"]);
        assert_eq!(texts(&ioc.tags), ["a"]);
        assert_eq!(texts(&ioc.malware_families()), ["beacon"]);
    }
}
