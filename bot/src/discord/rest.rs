//! The few Discord REST calls that deliver a job's final message, made with our own HTTP
//! client rather than serenity's. Delivery must know *why* a call failed: a 429's
//! `retry_after` (serenity's error keeps neither the body's `retry_after` nor the headers, and
//! its rate limiter is off towards proxies), a dead interaction token, a place the bot cannot
//! post to. Every error here is free of URLs, so no interaction token reaches a log.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Discord's "Missing Access": the bot is not a member where it tried to post.
pub const MISSING_ACCESS: i64 = 50001;
/// Discord's "Cannot send messages to this user" (DMs closed, or no shared server).
pub const CANNOT_DM: i64 = 50007;

/// A failed call, as delivery needs to see it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}")]
pub struct RestError {
    /// `None` when no answer came (timeout, connection refused).
    pub status: Option<u16>,
    /// Discord's JSON error code, if any.
    pub code: Option<i64>,
    /// From a 429: how long to wait (body `retry_after`, else the `Retry-After` header).
    pub retry_after: Option<Duration>,
    what: String,
}

impl RestError {
    /// Worth trying again later: no answer, a 5xx, or a 429.
    pub fn is_transient(&self) -> bool {
        match self.status {
            None => true,
            Some(s) => s == 429 || s >= 500,
        }
    }

    /// The interaction token no longer works (expired or unknown).
    pub fn token_dead(&self) -> bool {
        matches!(self.status, Some(401 | 404)) || self.code == Some(50027)
    }

    /// The bot may not post there (not a member, no access).
    pub fn no_access(&self) -> bool {
        self.status == Some(403) || self.code == Some(MISSING_ACCESS)
    }
}

/// A file to attach.
pub struct Upload {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Discord's REST API (or the proxy or simulator standing in for it).
#[derive(Clone)]
pub struct Rest {
    client: reqwest::Client,
    /// e.g. `https://discord.com/api/v10`.
    api: String,
    authorization: String,
}

impl Rest {
    pub fn new(client: reqwest::Client, base: Option<&str>, token: &str) -> Rest {
        Rest {
            client,
            api: format!("{}/api/v10", base.unwrap_or("https://discord.com")),
            authorization: format!("Bot {token}"),
        }
    }

    /// PATCH the interaction's own message (idempotent).
    pub async fn edit_original(
        &self,
        app: u64,
        token: &str,
        body: &Value,
        file: Option<&Upload>,
    ) -> Result<Value, RestError> {
        let path = format!("/webhooks/{app}/{token}/messages/@original");
        self.send(Method::PATCH, &path, false, body, file).await
    }

    /// GET the interaction's own message: does the first reply exist?
    pub async fn get_original(&self, app: u64, token: &str) -> Result<Value, RestError> {
        let path = format!("/webhooks/{app}/{token}/messages/@original");
        self.send(Method::GET, &path, false, &Value::Null, None)
            .await
    }

    /// PATCH one of the bot's channel messages (idempotent).
    pub async fn edit_message(
        &self,
        channel: u64,
        message: u64,
        body: &Value,
        file: Option<&Upload>,
    ) -> Result<Value, RestError> {
        let path = format!("/channels/{channel}/messages/{message}");
        self.send(Method::PATCH, &path, true, body, file).await
    }

    /// POST a channel message. `body` should carry a `nonce` with `enforce_nonce: true`, so a
    /// retry of a post that did land returns the first message instead of a second one.
    pub async fn create_message(
        &self,
        channel: u64,
        body: &Value,
        file: Option<&Upload>,
    ) -> Result<Value, RestError> {
        let path = format!("/channels/{channel}/messages");
        self.send(Method::POST, &path, true, body, file).await
    }

    /// Opens (or finds) the DM channel with `user`; returns its id.
    pub async fn open_dm(&self, user: u64) -> Result<u64, RestError> {
        let body = json!({ "recipient_id": user.to_string() });
        let channel = self
            .send(Method::POST, "/users/@me/channels", true, &body, None)
            .await?;
        channel["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| RestError {
                status: None,
                code: None,
                retry_after: None,
                what: "Discord opened a DM channel without an id".into(),
            })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        bot_auth: bool,
        body: &Value,
        file: Option<&Upload>,
    ) -> Result<Value, RestError> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.api));
        if bot_auth {
            request = request.header("Authorization", &self.authorization);
        }
        request = match (method == Method::GET, file) {
            (true, _) => request,
            (false, None) => request
                .header("Content-Type", "application/json")
                .body(body.to_string()),
            (false, Some(file)) => {
                let part = reqwest::multipart::Part::bytes(file.bytes.clone())
                    .file_name(file.name.clone())
                    .mime_str("image/png")
                    .map_err(|e| no_answer(&e))?;
                let form = reqwest::multipart::Form::new()
                    .text("payload_json", body.to_string())
                    .part("files[0]", part);
                request.multipart(form)
            }
        };
        let response = request.send().await.map_err(|e| {
            crate::metrics::discord_call_failed(None, e.is_timeout());
            no_answer(&e)
        })?;
        let status = response.status();
        let header_retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<f64>().ok());
        let text = response.text().await.map_err(|e| no_answer(&e))?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(answer);
        }
        crate::metrics::discord_call_failed(Some(status.as_u16()), false);
        Err(failure(method, status, &answer, header_retry))
    }
}

fn no_answer(e: &reqwest::Error) -> RestError {
    let what = if e.is_timeout() {
        "Discord did not answer in time".to_string()
    } else if e.is_connect() {
        "cannot connect to Discord".to_string()
    } else {
        // `without_url`: the URL may hold an interaction token.
        format!(
            "request to Discord failed: {}",
            e.to_string().split(" for url").next().unwrap_or("")
        )
    };
    RestError {
        status: None,
        code: None,
        retry_after: None,
        what,
    }
}

fn failure(method: Method, status: StatusCode, answer: &Value, header: Option<f64>) -> RestError {
    let retry_after = (status == StatusCode::TOO_MANY_REQUESTS)
        .then(|| answer["retry_after"].as_f64().or(header))
        .flatten()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)));
    let code = answer["code"].as_i64();
    let message: String = answer["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    RestError {
        status: Some(status.as_u16()),
        code,
        retry_after,
        what: format!(
            "Discord answered {method} with {status} ({}: {message})",
            code.unwrap_or(0)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_says_how_long_to_wait() {
        let body =
            json!({"message": "You are being rate limited.", "retry_after": 2.5, "global": false});
        let e = failure(
            Method::PATCH,
            StatusCode::TOO_MANY_REQUESTS,
            &body,
            Some(3.0),
        );
        assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));
        assert!(e.is_transient());
        let e = failure(
            Method::PATCH,
            StatusCode::TOO_MANY_REQUESTS,
            &Value::Null,
            Some(3.0),
        );
        assert_eq!(
            e.retry_after,
            Some(Duration::from_secs(3)),
            "the header when the body has none"
        );
    }

    #[test]
    fn refusals_are_told_apart() {
        let body = json!({"message": "Missing Access", "code": 50001});
        let e = failure(Method::POST, StatusCode::FORBIDDEN, &body, None);
        assert!(e.no_access() && !e.is_transient() && !e.token_dead());
        let body = json!({"message": "Invalid Webhook Token", "code": 50027});
        let e = failure(Method::PATCH, StatusCode::UNAUTHORIZED, &body, None);
        assert!(e.token_dead() && !e.is_transient());
        assert!(failure(Method::POST, StatusCode::BAD_GATEWAY, &Value::Null, None).is_transient());
    }
}
