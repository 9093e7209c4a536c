//! HTTP details the sinks share: reading `Retry-After`, and sorting transport failures and
//! status codes into [`SendError`]s.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::SendError;

/// Reads a `Retry-After` header: a number of seconds or an HTTP date.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads Sentinel's throttling message, "Rate limit is exceeded. Try again in 12 seconds."
pub fn retry_after_from_message(body: &str) -> Option<Duration> {
    let lower = body.to_ascii_lowercase();
    let rest = &lower[lower.find("try again in ")? + "try again in ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(Duration::from_secs)
}

/// An upstream's answer, read in full.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The [`SendError`] for a status every sink treats alike, else the sink's own.
    pub fn error(&self, otherwise: impl FnOnce(u16, &str) -> SendError) -> SendError {
        common_status_error(self.status, &self.headers, &self.body)
            .unwrap_or_else(|| otherwise(self.status.as_u16(), &self.body))
    }
}

/// Sends a request and reads the whole answer; a request that gets no answer is transient.
pub async fn execute(request: reqwest::RequestBuilder) -> Result<Answer, SendError> {
    let response = request.send().await.map_err(|err| transport_error(&err))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.map_err(|err| transport_error(&err))?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Turns a failed `send` into a [`SendError`]: every transport failure is transient.
pub fn transport_error(err: &reqwest::Error) -> SendError {
    let reason = if err.is_timeout() {
        "the request timed out".to_owned()
    } else {
        format!("the request failed: {}", crate::error_chain(err))
    };
    SendError::Transient { reason }
}

/// Sorts the status codes every sink treats alike; `None` leaves the answer to the sink.
pub fn common_status_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> Option<SendError> {
    let message = || short(body);
    match status.as_u16() {
        401 => Some(SendError::Unauthorized { message: message() }),
        429 => Some(SendError::Throttled {
            retry_after: parse_retry_after(headers, SystemTime::now())
                .or_else(|| retry_after_from_message(body)),
        }),
        408 | 500..=599 => Some(SendError::Transient {
            reason: format!(
                "the service answered HTTP {}: {}",
                status.as_u16(),
                message()
            ),
        }),
        _ => None,
    }
}

/// The first few hundred characters of a response body, on one line.
pub fn short(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 300 {
        format!("{}...", flat.chars().take(300).collect::<String>())
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        headers
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 02 Dec 2026 10:00:00 GMT").unwrap();

        assert_eq!(
            parse_retry_after(&headers("7"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&headers("Wed, 02 Dec 2026 10:00:30 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(&headers("Wed, 02 Dec 2026 09:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&headers("soon"), now), None);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn sentinel_throttling_messages_give_the_wait() {
        let body =
            r#"{"statusCode":429,"message":"Rate limit is exceeded. Try again in 12 seconds."}"#;

        assert_eq!(
            retry_after_from_message(body),
            Some(Duration::from_secs(12))
        );
        assert_eq!(retry_after_from_message("Too many requests"), None);
    }

    #[test]
    fn common_statuses_are_sorted_by_what_helps() {
        let none = HeaderMap::new();
        let throttled = common_status_error(StatusCode::TOO_MANY_REQUESTS, &headers("3"), "");
        let unavailable = common_status_error(StatusCode::SERVICE_UNAVAILABLE, &none, "busy");
        let refused = common_status_error(StatusCode::UNAUTHORIZED, &none, "expired");

        assert_eq!(
            throttled,
            Some(SendError::Throttled {
                retry_after: Some(Duration::from_secs(3))
            })
        );
        assert!(matches!(unavailable, Some(SendError::Transient { .. })));
        assert!(matches!(refused, Some(SendError::Unauthorized { .. })));
        assert_eq!(
            common_status_error(StatusCode::BAD_REQUEST, &none, ""),
            None
        );
    }
}
