//! Reads a ThreatFox `get_iocs` response one record at a time.
//!
//! A seven-day feed is tens of megabytes of JSON. The parser walks the document with a
//! streaming visitor and keeps only the validated [`Ioc`]s, so memory follows the number of
//! usable records rather than the size of the response text.

use std::fmt;
use std::io::Read;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::FeedError;
use super::ioc::{Ioc, SkipCounts};
use super::record::{Interner, parse_record_json};

/// What a ThreatFox response held, after validation of every record.
#[derive(Debug, Default)]
pub struct ParsedFeed {
    /// The `query_status` ThreatFox reported.
    pub query_status: String,
    /// The records that passed validation, in feed order.
    pub iocs: Vec<Ioc>,
    /// How many records the `data` array held, valid or not.
    pub received: u64,
    /// Records that failed validation, by reason.
    pub skipped: SkipCounts,
}

/// Parses a full `get_iocs` response and checks its `query_status`.
///
/// `no_result` is an empty day and gives an empty feed; any status but `ok` is an error.
pub fn parse_response(reader: impl Read) -> Result<ParsedFeed, FeedError> {
    let mut feed = ParsedFeed::default();
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    deserializer
        .deserialize_map(ResponseVisitor { feed: &mut feed })
        .and_then(|()| deserializer.end())
        .map_err(|err| FeedError::Malformed(err.to_string()))?;

    match feed.query_status.as_str() {
        "ok" => Ok(feed),
        "no_result" => Ok(ParsedFeed {
            iocs: Vec::new(),
            ..feed
        }),
        "unknown_auth_key" => Err(FeedError::UnknownAuthKey),
        "ratelimited" => Err(FeedError::RateLimited { status: None }),
        "" => Err(FeedError::Malformed(
            "the response has no query_status".to_owned(),
        )),
        other => Err(FeedError::Rejected {
            query_status: other.to_owned(),
        }),
    }
}

struct ResponseVisitor<'a> {
    feed: &'a mut ParsedFeed,
}

impl<'de> Visitor<'de> for ResponseVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ThreatFox response object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "query_status" => {
                    self.feed.query_status = match map.next_value::<Value>()? {
                        Value::String(status) => status,
                        other => other.to_string(),
                    }
                }
                "data" => map.next_value_seed(DataSeed {
                    feed: self.feed,
                    interner: Interner::default(),
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The `data` member: an array of records, or a message string when nothing matched.
struct DataSeed<'a> {
    feed: &'a mut ParsedFeed,
    interner: Interner,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of IoC records or a message")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        // Each element is first taken as raw JSON text, so that one malformed record is
        // skipped and counted instead of failing the whole response.
        while let Some(element) = seq.next_element::<Box<RawValue>>()? {
            self.feed.received += 1;
            match parse_record_json(element.get(), &mut self.interner) {
                Ok(ioc) => self.feed.iocs.push(ioc),
                Err(reason) => self.feed.skipped.add(reason),
            }
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _message: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        IgnoredAny.visit_map(map).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::ioc::SkipReason;

    #[test]
    fn records_are_validated_one_by_one_and_bad_ones_counted() {
        let body = r#"{"query_status":"ok","data":[
            {"id":"1","ioc":"evil.example","ioc_type":"domain","threat_type":"botnet_cc",
             "confidence_level":50,"first_seen":"2024-01-01 00:00:00 UTC"},
            {"id":"2","ioc":"not a domain","ioc_type":"domain",
             "first_seen":"2024-01-01 00:00:00 UTC"},
            {"id":"x"},
            42
        ],"extra":{"ignored":true}}"#;

        let feed = parse_response(body.as_bytes()).unwrap();

        assert_eq!(feed.received, 4);
        assert_eq!(feed.iocs.len(), 1);
        assert_eq!(feed.skipped.get(SkipReason::InvalidObservable), 1);
        assert_eq!(feed.skipped.get(SkipReason::MalformedRecord), 2);
    }

    #[test]
    fn no_result_is_an_empty_day() {
        let body = r#"{"query_status":"no_result","data":"Your search did not yield any results"}"#;

        let feed = parse_response(body.as_bytes()).unwrap();

        assert_eq!(feed.received, 0);
        assert!(feed.iocs.is_empty());
    }

    #[test]
    fn error_statuses_become_errors() {
        let unknown = parse_response(r#"{"query_status":"unknown_auth_key"}"#.as_bytes());
        let illegal = parse_response(r#"{"data":null,"query_status":"illegal_days"}"#.as_bytes());

        assert!(matches!(unknown, Err(FeedError::UnknownAuthKey)));
        assert!(
            matches!(illegal, Err(FeedError::Rejected { query_status }) if query_status == "illegal_days")
        );
    }

    #[test]
    fn html_and_truncated_bodies_are_malformed() {
        let html = parse_response("<html><body>502 Bad Gateway</body></html>".as_bytes());
        let cut = parse_response(r#"{"query_status":"ok","data":[{"id":"1""#.as_bytes());
        let missing = parse_response(r#"{"data":[]}"#.as_bytes());

        for result in [html, cut, missing] {
            assert!(matches!(result, Err(FeedError::Malformed(_))), "{result:?}");
        }
    }
}
