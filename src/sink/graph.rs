//! The Microsoft Graph `tiIndicators` sink (beta API, deprecated by Microsoft).
//!
//! Maps each IoC to a `tiIndicator` and creates them with `submitTiIndicators`, up to 100 a
//! request. Graph answers 206 when some items fail, each failed item carrying an `Error`
//! string; those become per-item rejections.

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::http::{execute, short};
use super::{Delivery, ItemRejection, KillChainPhase, SendError, Sink};
use crate::auth::TokenSource;
use crate::config::TargetProduct;
use crate::feed::{HashAlgorithm, Ioc, Observable, SkipReason};

/// The token scope for Microsoft Graph.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// What the import sends when Graph says the API is gone.
const RETIRED: &str = "the Graph tiIndicators API answered that it is retired or not available in \
this tenant (Microsoft removed it in 2026): set IMPORT_SINK=sentinel and SENTINEL_WORKSPACE_ID to \
use the Microsoft Sentinel Upload API instead";

/// The fixed parts of every Graph indicator.
#[derive(Debug, Clone)]
pub struct GraphOptions {
    /// `azureTenantId`.
    pub tenant_id: String,
    /// `targetProduct`.
    pub target_product: TargetProduct,
    /// `action`.
    pub action: String,
    /// Days an indicator lives after ThreatFox last reported it.
    pub expiration_days: u16,
}

/// Maps one IoC to a Graph `tiIndicator`.
///
/// `threatType` follows ThreatFox's `threat_type`: `botnet_cc` is `C2`,
/// `payload_delivery` is `MaliciousUrl`, `payload` is `Malware`, `cc_skimming` (card
/// skimmer infrastructure) is `MaliciousUrl`; any other value is `WatchList`, which
/// Graph accepts for indicators that should be watched without a stronger claim.
pub fn map_graph_indicator(ioc: &Ioc, options: &GraphOptions) -> Result<Value, SkipReason> {
    let mut indicator = json!({
        "externalId": format!("threatfox-{}", ioc.id),
        "action": options.action,
        "azureTenantId": options.tenant_id,
        "targetProduct": options.target_product.as_str(),
        "threatType": graph_threat_type(&ioc.threat_type),
        "tlpLevel": "white",
        "confidence": ioc.confidence,
        "description": description(ioc),
        "expirationDateTime": rfc3339(ioc.expires_at(options.expiration_days)),
        "lastReportedDateTime": rfc3339(ioc.last_reported()),
        "additionalInformation": additional_information(ioc),
        "passiveOnly": false,
    });
    let fields = indicator
        .as_object_mut()
        .ok_or(SkipReason::MalformedRecord)?;

    let families = ioc.malware_families();
    if !families.is_empty() {
        fields.insert("malwareFamilyNames".into(), json!(families));
    }
    if !ioc.tags.is_empty() {
        fields.insert("tags".into(), json!(ioc.tags));
    }
    if let Some(phase) = kill_chain(&ioc.threat_type) {
        fields.insert("killChain".into(), json!([phase]));
    }

    match &ioc.observable {
        Observable::Domain(name) => {
            fields.insert("domainName".into(), json!(name));
        }
        Observable::Url(url) => {
            fields.insert("url".into(), json!(url));
        }
        Observable::Endpoint { ip, port } => {
            // Graph rejects a destination address alone ("Missing indicators value"), so
            // the address and port are set both as plain and as destination observables.
            let (plain, destination) = if ip.is_ipv4() {
                ("networkIPv4", "networkDestinationIPv4")
            } else {
                ("networkIPv6", "networkDestinationIPv6")
            };
            fields.insert(plain.into(), json!(ip.to_string()));
            fields.insert(destination.into(), json!(ip.to_string()));
            fields.insert("networkPort".into(), json!(port));
            fields.insert("networkDestinationPort".into(), json!(port));
        }
        Observable::FileHash { algorithm, value } => {
            let hash_type = match algorithm {
                HashAlgorithm::Md5 => "md5",
                HashAlgorithm::Sha1 => "sha1",
                HashAlgorithm::Sha256 => "sha256",
                HashAlgorithm::Sha3_384 => return Err(SkipReason::UnsupportedBySink),
            };
            fields.insert("fileHashType".into(), json!(hash_type));
            fields.insert("fileHashValue".into(), json!(value));
        }
        Observable::EmailSender(address) => {
            fields.insert("emailSenderAddress".into(), json!(address));
        }
    }
    Ok(indicator)
}

fn graph_threat_type(threat_type: &str) -> &'static str {
    match threat_type {
        "botnet_cc" => "C2",
        "payload_delivery" | "cc_skimming" => "MaliciousUrl",
        "payload" => "Malware",
        _ => "WatchList",
    }
}

/// The kill-chain phase, only where ThreatFox's threat type states it plainly.
pub(crate) fn kill_chain(threat_type: &str) -> Option<&'static str> {
    KillChainPhase::of_threat_type(threat_type).map(KillChainPhase::graph_name)
}

/// A readable name for ThreatFox's threat type.
pub(crate) fn threat_label(threat_type: &str) -> &str {
    match threat_type {
        "botnet_cc" => "botnet C2",
        "payload_delivery" => "payload delivery",
        "payload" => "malware payload",
        "cc_skimming" => "card skimming",
        other => other,
    }
}

/// "ThreatFox: Cobalt Strike botnet C2 (ip:port)", cut to Graph's 100 characters.
pub(crate) fn description(ioc: &Ioc) -> String {
    let malware = ioc
        .malware_printable
        .as_deref()
        .unwrap_or("unknown malware");
    let text = format!(
        "ThreatFox: {malware} {} ({})",
        threat_label(&ioc.threat_type),
        ioc.ioc_type
    );
    if text.chars().count() <= 100 {
        text
    } else {
        let mut cut: String = text.chars().take(97).collect();
        cut.push_str("...");
        cut
    }
}

fn additional_information(ioc: &Ioc) -> String {
    let mut info = ioc.threatfox_url();
    if let Some(reference) = &ioc.reference {
        info.push_str(" reference: ");
        info.push_str(reference);
    }
    if let Some(reporter) = &ioc.reporter {
        info.push_str(" reporter: ");
        info.push_str(reporter);
    }
    info
}

pub(crate) fn rfc3339(at: time::OffsetDateTime) -> String {
    // Formatting a UTC date from the feed cannot fail for years 0-9999.
    at.format(&Rfc3339).unwrap_or_default()
}

/// The body of `submitTiIndicators`.
#[derive(Serialize)]
struct SubmitBody<'a> {
    value: &'a [Value],
}

/// Writes indicators to Graph `tiIndicators`.
#[derive(Debug, Clone)]
pub struct GraphSink {
    http: reqwest::Client,
    base: Url,
    tokens: TokenSource,
    options: GraphOptions,
}

impl GraphSink {
    /// Creates the sink for the Graph base URL `base` (normally the beta endpoint).
    pub fn new(
        http: reqwest::Client,
        base: Url,
        tokens: TokenSource,
        options: GraphOptions,
    ) -> Self {
        Self {
            http,
            base,
            tokens,
            options,
        }
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.base.as_str().trim_end_matches('/'))
    }

    async fn bearer(&self) -> Result<String, SendError> {
        let token = self
            .tokens
            .token(GRAPH_SCOPE)
            .await
            .map_err(|err| SendError::Fatal {
                message: err.to_string(),
            })?;
        Ok(format!("Bearer {}", token.expose()))
    }
}

/// Whether an error answer means the API has been removed.
fn is_retired(status: u16, body: &str) -> bool {
    status == 404 || status == 410 || body.to_ascii_lowercase().contains("deprecat")
}

fn fatal_for_status(status: u16, body: &str) -> SendError {
    let message = match status {
        403 => format!(
            "graph refused the request (HTTP 403): grant the function's identity the \
             ThreatIndicators.ReadWrite.OwnedBy application permission ({})",
            short(body)
        ),
        _ if is_retired(status, body) => format!("{RETIRED} (HTTP {status}: {})", short(body)),
        _ => format!("graph answered HTTP {status}: {}", short(body)),
    };
    SendError::Fatal { message }
}

#[async_trait]
impl Sink for GraphSink {
    fn name(&self) -> &'static str {
        "graph"
    }

    fn requests_per_minute(&self) -> u32 {
        1_000
    }

    fn map(&self, ioc: &Ioc) -> Result<Value, SkipReason> {
        map_graph_indicator(ioc, &self.options)
    }

    fn request_body(&self, items: &[Value]) -> Result<Vec<u8>, SendError> {
        super::encode(&SubmitBody { value: items })
    }

    async fn send(&self, items: &[Value]) -> Result<Delivery, SendError> {
        let request = self
            .http
            .post(self.endpoint("security/tiIndicators/submitTiIndicators"))
            .header("Authorization", self.bearer().await?)
            .header(CONTENT_TYPE, "application/json")
            .body(self.request_body(items)?);
        let answer = execute(request).await?;

        match answer.status.as_u16() {
            200 | 201 => Ok(Delivery::default()),
            206 => Ok(Delivery {
                rejected: partial_failures(items, &answer.body),
            }),
            400 if !is_retired(400, &answer.body) => Err(SendError::BatchRejected {
                status: 400,
                message: short(&answer.body),
            }),
            _ => Err(answer.error(fatal_for_status)),
        }
    }

    async fn probe(&self) -> Result<String, SendError> {
        let request = self
            .http
            .get(self.endpoint("security/tiIndicators?$top=1"))
            .header("Authorization", self.bearer().await?);
        let answer = execute(request).await?;
        match answer.status.as_u16() {
            200 => Ok("graph tiIndicators answered and the identity may read them".to_owned()),
            _ => Err(answer.error(fatal_for_status)),
        }
    }
}

/// Reads a 206 answer: entries with an `Error` key failed. The `Error` value is itself a JSON
/// string; its inner message is used when it parses.
fn partial_failures(items: &[Value], body: &str) -> Vec<ItemRejection> {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let Some(entries) = parsed.get("value").and_then(Value::as_array) else {
        // A 206 without a readable list: every item's fate is unknown, so all are reported.
        return (0..items.len())
            .map(|index| ItemRejection {
                index,
                message: format!("unreadable 206 answer: {}", short(body)),
            })
            .collect();
    };

    let mut rejected = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        let Some(error) = entry.get("Error").or_else(|| entry.get("error")) else {
            continue;
        };
        let index = entry
            .get("externalId")
            .and_then(|id| {
                items
                    .iter()
                    .position(|item| item.get("externalId") == Some(id))
            })
            .unwrap_or(position);
        rejected.push(ItemRejection {
            index,
            message: error_message(error),
        });
    }
    rejected
}

fn error_message(error: &Value) -> String {
    let inner = match error {
        Value::String(text) => {
            serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.clone()))
        }
        other => other.clone(),
    };
    let code = inner.pointer("/error/code").and_then(Value::as_str);
    let message = inner.pointer("/error/message").and_then(Value::as_str);
    match (code, message) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (None, Some(message)) => message.to_owned(),
        _ => match inner {
            Value::String(text) => text,
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::parse_record;
    use time::macros::datetime;

    fn options() -> GraphOptions {
        GraphOptions {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            target_product: TargetProduct::AzureSentinel,
            action: "alert".into(),
            expiration_days: 90,
        }
    }

    fn ioc(ioc_type: &str, value: &str, threat_type: &str) -> Ioc {
        parse_record(json!({
            "id": "841500", "ioc": value, "threat_type": threat_type, "ioc_type": ioc_type,
            "malware": "win.cobalt_strike", "malware_printable": "Cobalt Strike",
            "malware_alias": "Agentemis,BEACON,CobaltStrike,cobeacon",
            "confidence_level": 100, "first_seen": "2022-08-05 10:28:53 UTC",
            "last_seen": "2022-08-07 00:00:00 UTC", "reference": "https://example.org/post",
            "reporter": "drb_ra", "tags": ["CobaltStrike"]
        }))
        .unwrap()
    }

    fn map(ioc_type: &str, value: &str) -> Value {
        map_graph_indicator(&ioc(ioc_type, value, "botnet_cc"), &options()).unwrap()
    }

    #[test]
    fn an_endpoint_becomes_a_full_tiindicator() {
        let indicator = map("ip:port", "81.2.69.142:80");

        assert_eq!(
            indicator,
            json!({
                "externalId": "threatfox-841500",
                "action": "alert",
                "azureTenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "targetProduct": "Azure Sentinel",
                "threatType": "C2",
                "tlpLevel": "white",
                "confidence": 100,
                "description": "ThreatFox: Cobalt Strike botnet C2 (ip:port)",
                "expirationDateTime": "2022-11-05T00:00:00Z",
                "lastReportedDateTime": "2022-08-07T00:00:00Z",
                "additionalInformation": "https://threatfox.abuse.ch/ioc/841500/ reference: https://example.org/post reporter: drb_ra",
                "passiveOnly": false,
                "malwareFamilyNames": ["Cobalt Strike", "Agentemis", "BEACON", "CobaltStrike", "cobeacon"],
                "tags": ["CobaltStrike"],
                "killChain": ["C2"],
                "networkIPv4": "81.2.69.142",
                "networkDestinationIPv4": "81.2.69.142",
                "networkPort": 80,
                "networkDestinationPort": 80,
            })
        );
    }

    #[test]
    fn ipv6_endpoints_use_the_ipv6_fields() {
        let indicator = map("ip:port", "2a02:cf40:1::5:40669");

        assert_eq!(indicator["networkIPv6"], "2a02:cf40:1::5");
        assert_eq!(indicator["networkDestinationIPv6"], "2a02:cf40:1::5");
        assert_eq!(indicator["networkPort"], 40669);
        assert!(indicator.get("networkIPv4").is_none());
    }

    #[test]
    fn each_observable_type_lands_in_its_field() {
        let sha256 = "cf87c474b0154c536cdf0e771c8ca97d9c4ba1d5530f669b677cd3b9346fe37d";

        assert_eq!(map("domain", "evil.example")["domainName"], "evil.example");
        assert_eq!(
            map("url", "http://evil.example/a")["url"],
            "http://evil.example/a"
        );
        assert_eq!(map("md5_hash", &"a".repeat(32))["fileHashType"], "md5");
        assert_eq!(map("sha1_hash", &"b".repeat(40))["fileHashType"], "sha1");
        let hash = map("sha256_hash", sha256);
        assert_eq!(
            (
                hash["fileHashType"].as_str(),
                hash["fileHashValue"].as_str()
            ),
            (Some("sha256"), Some(sha256))
        );
        assert_eq!(
            map("envelope_from", "a@evil.example")["emailSenderAddress"],
            "a@evil.example"
        );
        assert_eq!(
            map("body_from", "b@evil.example")["emailSenderAddress"],
            "b@evil.example"
        );
    }

    #[test]
    fn sha3_384_has_no_graph_hash_type() {
        let result = map_graph_indicator(
            &ioc("sha3_384_hash", &"c".repeat(96), "payload"),
            &options(),
        );

        assert_eq!(result, Err(SkipReason::UnsupportedBySink));
    }

    #[test]
    fn threat_types_map_by_the_documented_rule() {
        let cases = [
            ("botnet_cc", "C2", Some("C2")),
            ("payload_delivery", "MaliciousUrl", Some("Delivery")),
            ("payload", "Malware", None),
            ("cc_skimming", "MaliciousUrl", None),
            ("brand_new_type", "WatchList", None),
        ];
        for (threat_type, expected, phase) in cases {
            let indicator =
                map_graph_indicator(&ioc("domain", "evil.example", threat_type), &options())
                    .unwrap();

            assert_eq!(indicator["threatType"], expected, "{threat_type}");
            assert_eq!(
                indicator.get("killChain").cloned(),
                phase.map(|p| json!([p])),
                "{threat_type}"
            );
        }
    }

    #[test]
    fn descriptions_never_exceed_100_characters() {
        let mut long = ioc("domain", "evil.example", "botnet_cc");
        long.malware_printable = Some("Ä".repeat(150).into());

        let text = description(&long);

        assert_eq!(text.chars().count(), 100);
        assert!(text.ends_with("..."));
    }

    #[test]
    fn expiry_counts_from_first_seen_when_never_seen_again() {
        let mut fresh = ioc("domain", "evil.example", "botnet_cc");
        fresh.last_seen = None;

        let indicator = map_graph_indicator(&fresh, &options()).unwrap();

        assert_eq!(
            indicator["expirationDateTime"],
            rfc3339(datetime!(2022-08-05 10:28:53 UTC) + time::Duration::days(90))
        );
    }

    #[test]
    fn a_206_answer_rejects_only_the_items_with_an_error() {
        let items = vec![
            json!({"externalId": "threatfox-1"}),
            json!({"externalId": "threatfox-2"}),
        ];
        let body = r#"{"value":[{"externalId":"threatfox-1","id":"x"},
            {"externalId":"threatfox-2","Error":"{\"error\":{\"code\":\"InvalidInput\",\"message\":\"Missing indicators value\"}}"}]}"#;

        let rejected = partial_failures(&items, body);

        assert_eq!(
            rejected,
            [ItemRejection {
                index: 1,
                message: "InvalidInput: Missing indicators value".into()
            }]
        );
    }

    #[test]
    fn retired_answers_point_to_the_sentinel_sink() {
        for (status, body) in [(404, "{}"), (410, "gone"), (400, "This API is deprecated")] {
            let SendError::Fatal { message } = fatal_for_status(status, body) else {
                panic!("not fatal")
            };

            assert!(message.contains("IMPORT_SINK=sentinel"), "{message}");
        }
    }
}
