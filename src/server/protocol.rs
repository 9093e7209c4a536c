//! The Azure Functions custom handler protocol: the invocation payload the host POSTs and
//! the reply it expects.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// What the host POSTs to `/{FunctionName}`: `{"Data": {...}, "Metadata": {...}}`.
#[derive(Debug, Default, Deserialize)]
pub struct Invocation {
    /// The trigger and input bindings, by binding name.
    #[serde(rename = "Data", default)]
    pub data: Value,
    /// Trigger metadata.
    #[serde(rename = "Metadata", default)]
    pub metadata: Value,
}

/// The reply: output bindings, log lines for Application Insights, and a return value.
#[derive(Debug, Default, Serialize)]
pub struct InvocationReply {
    /// Output bindings by name, such as `res` for an HTTP response.
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    /// Lines the host writes to the function's log.
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    /// The function's return value.
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvocationReply {
    /// Sets the `res` HTTP output binding to a JSON response.
    pub fn with_http_response(mut self, status: u16, body: &Value) -> Self {
        let response = json!({
            "statusCode": status,
            "body": body.to_string(),
            "headers": { "Content-Type": "application/json" },
        });
        self.outputs.insert("res".to_owned(), response);
        self
    }
}

/// Reads one query parameter from an HTTP trigger's `Data.req`.
///
/// `Query` is an object of strings in current hosts; older hosts sent the raw query string.
pub fn query_param(req: &Value, name: &str) -> Option<String> {
    match req.get("Query")? {
        Value::Object(params) => params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| match v {
                Value::String(s) => Some(s.clone()),
                Value::Array(values) => values.first().and_then(Value::as_str).map(str::to_owned),
                Value::Null => None,
                other => Some(other.to_string()),
            }),
        Value::String(raw) => {
            let raw = raw.trim_start_matches('?');
            reqwest::Url::parse(&format!("http://query/?{raw}"))
                .ok()?
                .query_pairs()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.into_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_read_from_either_query_shape() {
        let object = json!({"Query": {"days": "3", "dry_run": "true"}});
        let string = json!({"Query": "?days=5&dry_run=false"});

        assert_eq!(query_param(&object, "days").as_deref(), Some("3"));
        assert_eq!(query_param(&object, "DRY_RUN").as_deref(), Some("true"));
        assert_eq!(query_param(&string, "days").as_deref(), Some("5"));
        assert_eq!(query_param(&json!({}), "days"), None);
    }

    #[test]
    fn replies_carry_the_three_members_the_host_expects() {
        let reply = InvocationReply::default().with_http_response(409, &json!({"error": "busy"}));

        let text = serde_json::to_value(&reply).unwrap();

        assert_eq!(text["Outputs"]["res"]["statusCode"], 409);
        assert_eq!(text["Outputs"]["res"]["body"], r#"{"error":"busy"}"#);
        assert_eq!(text["Logs"], json!([]));
        assert!(text.get("ReturnValue").is_some());
    }
}
