//! The validated form of one ThreatFox record, and the reasons a record can be skipped.
//!
//! Everything downstream (the sinks, the uploader) works on [`Ioc`], so every check on the
//! raw feed lives here: a record either becomes an `Ioc` or a [`SkipReason`] that the import
//! report counts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Text shared among the records that repeat it (malware names, tags, reporters).
pub type Text = Arc<str>;

/// The kind of value a ThreatFox IoC holds, as named by its `ioc_type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IocType {
    /// `ip:port`: an IPv4 or IPv6 address with a port.
    IpPort,
    /// `domain`: a host name.
    Domain,
    /// `url`: a full URL.
    Url,
    /// `md5_hash`: an MD5 file hash.
    Md5,
    /// `sha1_hash`: a SHA-1 file hash.
    Sha1,
    /// `sha256_hash`: a SHA-256 file hash.
    Sha256,
    /// `sha3_384_hash`: a SHA3-384 file hash.
    Sha3_384,
    /// `envelope_from`: the SMTP envelope sender of a malicious e-mail.
    EnvelopeFrom,
    /// `body_from`: the `From:` header sender of a malicious e-mail.
    BodyFrom,
}

impl IocType {
    /// Every type this program understands, in a stable order.
    pub const ALL: [IocType; 9] = [
        IocType::IpPort,
        IocType::Domain,
        IocType::Url,
        IocType::Md5,
        IocType::Sha1,
        IocType::Sha256,
        IocType::Sha3_384,
        IocType::EnvelopeFrom,
        IocType::BodyFrom,
    ];

    /// The name ThreatFox uses for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            IocType::IpPort => "ip:port",
            IocType::Domain => "domain",
            IocType::Url => "url",
            IocType::Md5 => "md5_hash",
            IocType::Sha1 => "sha1_hash",
            IocType::Sha256 => "sha256_hash",
            IocType::Sha3_384 => "sha3_384_hash",
            IocType::EnvelopeFrom => "envelope_from",
            IocType::BodyFrom => "body_from",
        }
    }
}

impl fmt::Display for IocType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IocType {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        IocType::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| format!("unknown ioc_type {name:?}"))
    }
}

/// A file hash algorithm that ThreatFox publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// MD5, 32 hex digits.
    Md5,
    /// SHA-1, 40 hex digits.
    Sha1,
    /// SHA-256, 64 hex digits.
    Sha256,
    /// SHA3-384, 96 hex digits.
    Sha3_384,
}

impl HashAlgorithm {
    /// How many hex digits a well-formed hash of this algorithm has.
    pub fn hex_len(self) -> usize {
        match self {
            HashAlgorithm::Md5 => 32,
            HashAlgorithm::Sha1 => 40,
            HashAlgorithm::Sha256 => 64,
            HashAlgorithm::Sha3_384 => 96,
        }
    }
}

/// The observable an IoC is about, already checked for well-formedness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observable {
    /// A host name, lowercase, without a trailing dot.
    Domain(String),
    /// A URL with a scheme and a host, as published.
    Url(String),
    /// A network endpoint: ThreatFox's `ip:port`.
    Endpoint {
        /// The IPv4 or IPv6 address.
        ip: IpAddr,
        /// The TCP or UDP port, never 0.
        port: u16,
    },
    /// A file hash, lowercase hex.
    FileHash {
        /// Which algorithm produced the hash.
        algorithm: HashAlgorithm,
        /// The hash in lowercase hex.
        value: String,
    },
    /// An e-mail sender address.
    EmailSender(String),
}

/// One ThreatFox IoC that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ioc {
    /// ThreatFox's id; ids grow over time, which makes them usable as a checkpoint.
    pub id: u64,
    /// The type ThreatFox gave the IoC.
    pub ioc_type: IocType,
    /// The checked observable.
    pub observable: Observable,
    /// ThreatFox's `threat_type`, such as `botnet_cc`; kept as text because the list grows.
    pub threat_type: Text,
    /// The Malpedia name, such as `win.cobalt_strike`.
    pub malware: Option<Text>,
    /// The readable malware name; `None` when ThreatFox says "Unknown malware".
    pub malware_printable: Option<Text>,
    /// Other names of the malware family, split and without blanks.
    pub malware_aliases: Arc<[Text]>,
    /// The Malpedia page of the family.
    pub malware_malpedia: Option<Text>,
    /// ThreatFox's confidence, 0 to 100.
    pub confidence: u8,
    /// When ThreatFox first saw the IoC.
    pub first_seen: OffsetDateTime,
    /// When ThreatFox last saw it, if ever.
    pub last_seen: Option<OffsetDateTime>,
    /// A report or post that backs the IoC.
    pub reference: Option<Text>,
    /// The ThreatFox user who reported it.
    pub reporter: Option<Text>,
    /// ThreatFox tags, without blanks or repeats.
    pub tags: Box<[Text]>,
}

impl Ioc {
    /// The link to this IoC's page on ThreatFox.
    pub fn threatfox_url(&self) -> String {
        format!("https://threatfox.abuse.ch/ioc/{}/", self.id)
    }

    /// The newest time ThreatFox reported this IoC: `last_seen`, else `first_seen`.
    pub fn last_reported(&self) -> OffsetDateTime {
        self.last_seen.unwrap_or(self.first_seen)
    }

    /// When an indicator for this IoC should expire: `days` after it was last reported.
    pub fn expires_at(&self, days: u16) -> OffsetDateTime {
        self.last_reported()
            .saturating_add(time::Duration::days(i64::from(days)))
    }

    /// The malware family names: the printable name, then the aliases, without repeats
    /// (compared without case).
    pub fn malware_families(&self) -> Vec<Text> {
        let mut names: Vec<Text> = Vec::new();
        let candidates = self
            .malware_printable
            .iter()
            .chain(self.malware_aliases.iter());
        for name in candidates {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.clone());
            }
        }
        names
    }
}

/// Why a feed record was not sent to the sink.
///
/// Every skipped record is counted under one of these in the import report, so nothing
/// leaves the pipeline unaccounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A required field is missing or has the wrong shape (id, ioc, ioc_type, first_seen).
    MalformedRecord,
    /// The `ioc_type` is not one this program knows.
    UnknownType,
    /// The type is known but not listed in `IOC_TYPES`.
    NotSelected,
    /// The value is not a valid IP, port, hash, domain, URL or e-mail address.
    InvalidObservable,
    /// The sink has no way to represent this type (for example SHA3-384 in Graph).
    UnsupportedBySink,
    /// `confidence_level` is under `MIN_CONFIDENCE`.
    BelowMinConfidence,
    /// The indicator would already have expired.
    Expired,
    /// The same ThreatFox id appeared more than once in the feed.
    Duplicate,
    /// An earlier import already delivered this id.
    AlreadyImported,
}

impl SkipReason {
    /// The stable name used in reports and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MalformedRecord => "malformed_record",
            SkipReason::UnknownType => "unknown_type",
            SkipReason::NotSelected => "not_selected",
            SkipReason::InvalidObservable => "invalid_observable",
            SkipReason::UnsupportedBySink => "unsupported_by_sink",
            SkipReason::BelowMinConfidence => "below_min_confidence",
            SkipReason::Expired => "expired",
            SkipReason::Duplicate => "duplicate",
            SkipReason::AlreadyImported => "already_imported",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of skipped records by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SkipCounts(BTreeMap<SkipReason, u64>);

impl SkipCounts {
    /// Counts one more record skipped for `reason`.
    pub fn add(&mut self, reason: SkipReason) {
        *self.0.entry(reason).or_default() += 1;
    }

    /// Adds every count of `other` to these.
    pub fn merge(&mut self, other: &SkipCounts) {
        for (reason, count) in &other.0 {
            *self.0.entry(*reason).or_default() += count;
        }
    }

    /// How many records were skipped for `reason`.
    pub fn get(&self, reason: SkipReason) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }

    /// How many records were skipped in all.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The reasons with their counts, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (SkipReason, u64)> + '_ {
        self.0.iter().map(|(r, c)| (*r, *c))
    }
}
