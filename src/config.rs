//! Settings, read from the environment (the function app's app settings) and checked once
//! at start so that a misconfiguration names the setting to change.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;

use crate::feed::IocType;
use crate::secret::Secret;

/// Where indicators are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// Microsoft Graph `tiIndicators` (deprecated by Microsoft).
    Graph,
    /// The Microsoft Sentinel STIX objects Upload API.
    Sentinel,
}

impl SinkKind {
    /// The setting value that selects this sink.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Graph => "graph",
            SinkKind::Sentinel => "sentinel",
        }
    }
}

/// The products a Graph `tiIndicator` can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetProduct {
    /// `Azure Sentinel`, the only spelling Graph accepts for Sentinel.
    AzureSentinel,
    /// `Microsoft Defender ATP`.
    DefenderAtp,
}

impl TargetProduct {
    /// The value Graph expects.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetProduct::AzureSentinel => "Azure Sentinel",
            TargetProduct::DefenderAtp => "Microsoft Defender ATP",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line, for Application Insights.
    Json,
    /// Readable text, for a terminal.
    Text,
}

/// Every setting the program reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `THREATFOX_AUTH_KEY`: required to call the API; not needed with a saved feed.
    pub threatfox_auth_key: Option<Secret>,
    /// `THREATFOX_API_URL`.
    pub threatfox_api_url: Url,
    /// `IMPORT_SINK`.
    pub sink: SinkKind,
    /// `IMPORT_DAYS`: the feed window of a first import, 1 to 7.
    pub import_days: u8,
    /// `GRAPH_API_URL`: the Graph base, normally the beta endpoint.
    pub graph_api_url: Url,
    /// `GRAPH_TARGET_PRODUCT`.
    pub graph_target_product: TargetProduct,
    /// `AZURE_TENANT_ID`: when unset, the tenant is read from the access token.
    pub azure_tenant_id: Option<String>,
    /// `INDICATOR_EXPIRATION_DAYS`: lifetime counted from `last_seen` (or `first_seen`).
    pub expiration_days: u16,
    /// `INDICATOR_ACTION`: Graph `action`.
    pub indicator_action: String,
    /// `MIN_CONFIDENCE`: IoCs below it are skipped.
    pub min_confidence: u8,
    /// `IOC_TYPES`: the ThreatFox types to import.
    pub ioc_types: BTreeSet<IocType>,
    /// `SENTINEL_WORKSPACE_ID`: the Log Analytics workspace GUID.
    pub sentinel_workspace_id: Option<String>,
    /// `SENTINEL_API_URL`.
    pub sentinel_api_url: Url,
    /// `SENTINEL_SOURCE_SYSTEM`: the source name shown in Sentinel.
    pub sentinel_source_system: String,
    /// `UPLOAD_BATCH_SIZE`: indicators per request, 1 to 100.
    pub batch_size: usize,
    /// `UPLOAD_MAX_REQUESTS_PER_MINUTE`: overrides the sink's own limit.
    pub max_requests_per_minute: Option<u32>,
    /// `UPLOAD_MAX_ATTEMPTS`: tries of one batch before the import gives up on it.
    pub max_attempts: u32,
    /// `IMPORT_TIME_BUDGET_SECS`: no batch starts after this much time.
    pub time_budget: Duration,
    /// `HTTP_TIMEOUT_SECS`: per-request timeout for every upstream.
    pub http_timeout: Duration,
    /// `STATE_DIR`: where the local checkpoint and lock live.
    pub state_dir: PathBuf,
    /// The blob service that keeps the checkpoint and lock in Azure, from
    /// `AzureWebJobsStorage__blobServiceUri` or `AzureWebJobsStorage__accountName`; when
    /// neither is set they live in `STATE_DIR`.
    pub checkpoint_blob_service: Option<Url>,
    /// `AZURE_CLIENT_ID`: selects a user-assigned managed identity.
    pub azure_client_id: Option<String>,
    /// Whether a managed identity endpoint is present (`IDENTITY_ENDPOINT`).
    pub has_managed_identity: bool,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
}

/// A setting that is missing or has a value the program cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting {setting} {problem}")]
pub struct ConfigError {
    /// The setting's name, as it appears in app settings.
    pub setting: &'static str,
    /// What is wrong and what would be right.
    pub problem: String,
}

impl ConfigError {
    fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }
}

/// The ThreatFox endpoint used when `THREATFOX_API_URL` is unset.
pub const DEFAULT_THREATFOX_API_URL: &str = "https://threatfox-api.abuse.ch/api/v1/";
/// The Graph base used when `GRAPH_API_URL` is unset.
pub const DEFAULT_GRAPH_API_URL: &str = "https://graph.microsoft.com/beta";
/// The Sentinel Upload API base used when `SENTINEL_API_URL` is unset.
pub const DEFAULT_SENTINEL_API_URL: &str = "https://api.ti.sentinel.azure.com";

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`, which returns a setting's value by name.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let under_host = get("FUNCTIONS_CUSTOMHANDLER_PORT").is_some();

        let sink = match get("IMPORT_SINK").as_deref().unwrap_or("graph") {
            "graph" => SinkKind::Graph,
            "sentinel" => SinkKind::Sentinel,
            other => {
                return Err(ConfigError::new(
                    "IMPORT_SINK",
                    format!("is {other:?}; use graph or sentinel"),
                ));
            }
        };
        let ioc_types = parse_ioc_types(get("IOC_TYPES"), sink)?;
        let sentinel_workspace_id = get("SENTINEL_WORKSPACE_ID");
        if let Some(id) = &sentinel_workspace_id
            && uuid::Uuid::parse_str(id).is_err()
        {
            return Err(ConfigError::new(
                "SENTINEL_WORKSPACE_ID",
                "must be the workspace GUID (the Log Analytics workspace ID), not its name or resource id",
            ));
        }
        if sink == SinkKind::Sentinel && sentinel_workspace_id.is_none() {
            return Err(ConfigError::new(
                "SENTINEL_WORKSPACE_ID",
                "is required when IMPORT_SINK is sentinel: set it to the Log Analytics workspace ID (a GUID)",
            ));
        }
        let sentinel_source_system =
            get("SENTINEL_SOURCE_SYSTEM").unwrap_or_else(|| "ThreatFox".to_owned());
        if sentinel_source_system.eq_ignore_ascii_case("Microsoft Sentinel") {
            return Err(ConfigError::new(
                "SENTINEL_SOURCE_SYSTEM",
                "must not be \"Microsoft Sentinel\", which the Upload API reserves; keep the default ThreatFox",
            ));
        }
        let azure_tenant_id = get("AZURE_TENANT_ID");
        if let Some(tenant) = &azure_tenant_id
            && uuid::Uuid::parse_str(tenant).is_err()
        {
            return Err(ConfigError::new(
                "AZURE_TENANT_ID",
                "must be the tenant's GUID",
            ));
        }
        let indicator_action = get("INDICATOR_ACTION").unwrap_or_else(|| "alert".to_owned());
        if !["unknown", "allow", "block", "alert"].contains(&indicator_action.as_str()) {
            return Err(ConfigError::new(
                "INDICATOR_ACTION",
                format!("is {indicator_action:?}; use one of unknown, allow, block, alert"),
            ));
        }
        let graph_target_product = match get("GRAPH_TARGET_PRODUCT").as_deref() {
            None | Some("Azure Sentinel") => TargetProduct::AzureSentinel,
            Some("Microsoft Defender ATP") => TargetProduct::DefenderAtp,
            Some(other) => {
                return Err(ConfigError::new(
                    "GRAPH_TARGET_PRODUCT",
                    format!(
                        "is {other:?}; Graph accepts only \"Azure Sentinel\" or \"Microsoft Defender ATP\""
                    ),
                ));
            }
        };
        let log_format = match get("LOG_FORMAT").as_deref() {
            None if under_host => LogFormat::Json,
            None => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("is {other:?}; use json or text"),
                ));
            }
        };

        Ok(Settings {
            threatfox_auth_key: get("THREATFOX_AUTH_KEY").map(Secret::new),
            threatfox_api_url: url(&get, "THREATFOX_API_URL", DEFAULT_THREATFOX_API_URL)?,
            sink,
            import_days: number(&get, "IMPORT_DAYS", 1, 1..=7)?,
            graph_api_url: url(&get, "GRAPH_API_URL", DEFAULT_GRAPH_API_URL)?,
            graph_target_product,
            azure_tenant_id,
            expiration_days: number(&get, "INDICATOR_EXPIRATION_DAYS", 90, 1..=3650)?,
            indicator_action,
            min_confidence: number(&get, "MIN_CONFIDENCE", 0, 0..=100)?,
            ioc_types,
            sentinel_workspace_id,
            sentinel_api_url: url(&get, "SENTINEL_API_URL", DEFAULT_SENTINEL_API_URL)?,
            sentinel_source_system,
            batch_size: number(&get, "UPLOAD_BATCH_SIZE", 100, 1..=100)?,
            max_requests_per_minute: match get("UPLOAD_MAX_REQUESTS_PER_MINUTE") {
                None => None,
                Some(_) => Some(number(
                    &get,
                    "UPLOAD_MAX_REQUESTS_PER_MINUTE",
                    0,
                    1..=60_000,
                )?),
            },
            max_attempts: number(&get, "UPLOAD_MAX_ATTEMPTS", 6, 1..=20)?,
            time_budget: Duration::from_secs(number(
                &get,
                "IMPORT_TIME_BUDGET_SECS",
                480,
                10..=86_400,
            )?),
            http_timeout: Duration::from_secs(number(&get, "HTTP_TIMEOUT_SECS", 60, 1..=600)?),
            state_dir: get("STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".threatfox-sentinel")),
            checkpoint_blob_service: blob_service(&get)?,
            azure_client_id: get("AZURE_CLIENT_ID"),
            has_managed_identity: get("IDENTITY_ENDPOINT").is_some(),
            log_format,
        })
    }

    /// The ThreatFox key, or an error that says how to provide it.
    pub fn require_auth_key(&self) -> Result<&Secret, ConfigError> {
        self.threatfox_auth_key.as_ref().ok_or_else(|| {
            ConfigError::new(
                "THREATFOX_AUTH_KEY",
                "is required to call the ThreatFox API: get a free key at https://auth.abuse.ch/ \
                 (or import a saved response with --input)",
            )
        })
    }
}

fn url(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<Url, ConfigError> {
    let text = get(name).unwrap_or_else(|| default.to_owned());
    let url = Url::parse(&text)
        .map_err(|err| ConfigError::new(name, format!("is not a valid URL ({err})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(name, "must be an http or https URL"));
    }
    Ok(url)
}

/// The blob endpoint of the Functions storage account, when the app names one through the
/// identity-based `AzureWebJobsStorage__*` settings.
fn blob_service(get: &impl Fn(&str) -> Option<String>) -> Result<Option<Url>, ConfigError> {
    const URI: &str = "AzureWebJobsStorage__blobServiceUri";
    const ACCOUNT: &str = "AzureWebJobsStorage__accountName";
    if get(URI).is_some() {
        let endpoint = url(get, URI, "")?;
        if endpoint.scheme() != "https" {
            return Err(ConfigError::new(
                URI,
                "must be an https URL: storage accepts identity-based access only over https",
            ));
        }
        return Ok(Some(endpoint));
    }
    let Some(account) = get(ACCOUNT) else {
        return Ok(None);
    };
    let is_valid = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !is_valid {
        return Err(ConfigError::new(
            ACCOUNT,
            format!(
                "is {account:?}; use the storage account name: 3 to 24 lowercase letters or digits"
            ),
        ));
    }
    let text = format!("https://{account}.blob.core.windows.net/");
    Url::parse(&text)
        .map(Some)
        .map_err(|err| ConfigError::new(ACCOUNT, format!("gives the invalid URL {text} ({err})")))
}

fn number<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(text) = get(name) else {
        return Ok(default);
    };
    let out_of_range = || {
        ConfigError::new(
            name,
            format!(
                "is {text:?}; use a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )
    };
    let value: T = text.parse().map_err(|_| out_of_range())?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(out_of_range())
    }
}

fn parse_ioc_types(text: Option<String>, sink: SinkKind) -> Result<BTreeSet<IocType>, ConfigError> {
    let Some(text) = text else {
        return Ok(IocType::ALL.into_iter().collect());
    };
    let mut types = BTreeSet::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let ioc_type: IocType = name.parse().map_err(|_| {
            let known: Vec<&str> = IocType::ALL.iter().map(|t| t.as_str()).collect();
            ConfigError::new(
                "IOC_TYPES",
                format!("names {name:?}; known types are {}", known.join(", ")),
            )
        })?;
        if ioc_type == IocType::Sha3_384 {
            return Err(ConfigError::new(
                "IOC_TYPES",
                format!(
                    "lists sha3_384_hash, which the {} sink cannot represent; remove it",
                    sink.as_str()
                ),
            ));
        }
        types.insert(ioc_type);
    }
    if types.is_empty() {
        return Err(ConfigError::new(
            "IOC_TYPES",
            "lists no type; leave it unset to import every type",
        ));
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let s = settings(&[]).unwrap();

        assert_eq!(s.threatfox_api_url.as_str(), DEFAULT_THREATFOX_API_URL);
        assert_eq!(s.sink, SinkKind::Graph);
        assert_eq!(s.import_days, 1);
        assert_eq!(s.graph_api_url.as_str(), DEFAULT_GRAPH_API_URL);
        assert_eq!(s.graph_target_product, TargetProduct::AzureSentinel);
        assert_eq!(s.expiration_days, 90);
        assert_eq!(s.indicator_action, "alert");
        assert_eq!(s.min_confidence, 0);
        assert_eq!(s.ioc_types.len(), IocType::ALL.len());
        assert_eq!(s.batch_size, 100);
        assert_eq!(s.max_attempts, 6);
        assert_eq!(s.time_budget, Duration::from_secs(480));
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(s.threatfox_auth_key.is_none());
    }

    #[test]
    fn json_logs_are_the_default_under_the_functions_host() {
        let s = settings(&[("FUNCTIONS_CUSTOMHANDLER_PORT", "7071")]).unwrap();

        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn each_bad_value_names_its_setting() {
        let cases = [
            ("IMPORT_DAYS", "8"),
            ("IMPORT_DAYS", "one"),
            ("IMPORT_SINK", "splunk"),
            ("MIN_CONFIDENCE", "101"),
            ("INDICATOR_ACTION", "quarantine"),
            ("GRAPH_TARGET_PRODUCT", "Microsoft Sentinel"),
            ("IOC_TYPES", "domain,ja3"),
            ("IOC_TYPES", "sha3_384_hash"),
            ("THREATFOX_API_URL", "not a url"),
            ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
            ("UPLOAD_BATCH_SIZE", "500"),
            ("LOG_FORMAT", "xml"),
        ];
        for (name, value) in cases {
            let err = settings(&[(name, value)]).unwrap_err();

            assert_eq!(err.setting, name, "{value}");
            assert!(
                err.to_string().starts_with(&format!("setting {name} ")),
                "{err}"
            );
        }
    }

    #[test]
    fn the_sentinel_sink_needs_a_workspace_guid_and_a_free_source_name() {
        let missing = settings(&[("IMPORT_SINK", "sentinel")]).unwrap_err();
        let not_guid = settings(&[
            ("IMPORT_SINK", "sentinel"),
            ("SENTINEL_WORKSPACE_ID", "law-prod"),
        ])
        .unwrap_err();
        let reserved = settings(&[("SENTINEL_SOURCE_SYSTEM", "Microsoft Sentinel")]).unwrap_err();
        let ok = settings(&[
            ("IMPORT_SINK", "sentinel"),
            (
                "SENTINEL_WORKSPACE_ID",
                "9b2a3c1e-3f5d-4a7b-8c9d-0e1f2a3b4c5d",
            ),
        ]);

        assert_eq!(missing.setting, "SENTINEL_WORKSPACE_ID");
        assert_eq!(not_guid.setting, "SENTINEL_WORKSPACE_ID");
        assert_eq!(reserved.setting, "SENTINEL_SOURCE_SYSTEM");
        assert_eq!(ok.unwrap().sink, SinkKind::Sentinel);
    }

    #[test]
    fn a_missing_key_error_says_where_to_get_one() {
        let err = settings(&[]).unwrap().require_auth_key().unwrap_err();

        assert_eq!(err.setting, "THREATFOX_AUTH_KEY");
        assert!(err.problem.contains("auth.abuse.ch"));
    }

    #[test]
    fn the_blob_checkpoint_follows_the_functions_storage_settings() {
        let none = settings(&[]).unwrap();
        let by_account =
            settings(&[("AzureWebJobsStorage__accountName", "stthreatfox01")]).unwrap();
        let by_uri = settings(&[
            ("AzureWebJobsStorage__accountName", "ignored"),
            (
                "AzureWebJobsStorage__blobServiceUri",
                "https://custom.blob.core.windows.net",
            ),
        ])
        .unwrap();
        let bad_account =
            settings(&[("AzureWebJobsStorage__accountName", "St_Threatfox")]).unwrap_err();
        let plain_http = settings(&[(
            "AzureWebJobsStorage__blobServiceUri",
            "http://127.0.0.1:10000/devstoreaccount1",
        )])
        .unwrap_err();

        assert_eq!(none.checkpoint_blob_service, None);
        assert_eq!(
            by_account.checkpoint_blob_service.unwrap().as_str(),
            "https://stthreatfox01.blob.core.windows.net/"
        );
        assert_eq!(
            by_uri.checkpoint_blob_service.unwrap().as_str(),
            "https://custom.blob.core.windows.net/"
        );
        assert_eq!(bad_account.setting, "AzureWebJobsStorage__accountName");
        assert_eq!(plain_http.setting, "AzureWebJobsStorage__blobServiceUri");
    }

    #[test]
    fn selected_types_are_parsed_from_a_comma_list() {
        let s = settings(&[("IOC_TYPES", " domain, url ,ip:port")]).unwrap();

        assert_eq!(
            s.ioc_types,
            [IocType::Domain, IocType::Url, IocType::IpPort]
                .into_iter()
                .collect()
        );
    }
}
