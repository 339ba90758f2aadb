//! Discord's rules, and its error answers when a request breaks them.
//!
//! Every rejection carries Discord's error shape, `{"code", "message", "errors"}`, so the bot's
//! error handling sees what it would see in production.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

pub(crate) const MAX_CONTENT: usize = 2000;
/// How long an interaction may go unanswered.
pub(crate) const CALLBACK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);
/// How long an interaction token opens the webhook routes.
pub(crate) const TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// A refusal in Discord's words.
#[derive(Debug, Clone)]
pub(crate) struct DiscordError {
    pub status: StatusCode,
    pub body: Value,
}

impl DiscordError {
    pub(crate) fn new(status: StatusCode, code: u32, message: &str) -> Self {
        Self {
            status,
            body: json!({ "code": code, "message": message, "errors": {} }),
        }
    }

    pub(crate) fn invalid_form(errors: Value) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: json!({ "code": 50035, "message": "Invalid Form Body", "errors": errors }),
        }
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized")
    }

    pub(crate) fn not_found(code: u32, what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, &format!("Unknown {what}"))
    }

    pub(crate) fn unknown_interaction() -> Self {
        Self::not_found(10062, "interaction")
    }

    pub(crate) fn already_acknowledged() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            40060,
            "Interaction has already been acknowledged.",
        )
    }

    pub(crate) fn invalid_webhook_token() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 50027, "Invalid Webhook Token")
    }

    pub(crate) fn file_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            40005,
            "Request entity too large",
        )
    }
}

impl IntoResponse for DiscordError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

pub(crate) fn field_error(code: &str, message: &str) -> Value {
    json!({ "_errors": [{ "code": code, "message": message }] })
}

/// Wraps `inner` in the nested objects named by `path`, as Discord nests form errors.
pub(crate) fn nest(path: &[String], inner: Value) -> Value {
    path.iter().rev().fold(inner, |acc, key| {
        let mut map = Map::new();
        map.insert(key.clone(), acc);
        Value::Object(map)
    })
}

/// Checks a message payload (content, components, allowed_mentions) and uploaded file sizes.
///
/// `prefix` is where the message sits in the request (`["data"]` for interaction callbacks).
pub(crate) fn check_message(
    payload: &Value,
    file_sizes: &[usize],
    size_limit: usize,
    prefix: &[&str],
) -> Result<(), DiscordError> {
    if file_sizes.iter().any(|size| *size > size_limit) {
        return Err(DiscordError::file_too_large());
    }
    let at = |rest: &[&str]| -> Vec<String> {
        prefix.iter().chain(rest).map(|s| (*s).to_owned()).collect()
    };
    if let Some(content) = payload["content"].as_str() {
        if content.chars().count() > MAX_CONTENT {
            let message = format!("Must be {MAX_CONTENT} or fewer in length.");
            let inner = field_error("BASE_TYPE_MAX_LENGTH", &message);
            return Err(DiscordError::invalid_form(nest(&at(&["content"]), inner)));
        }
    }
    super::components::check_message_components(payload, &at(&[]))
        .map_err(DiscordError::invalid_form)?;
    super::mentions::check_allowed_mentions(payload).map_err(|(path, code, message)| {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        DiscordError::invalid_form(nest(&at(&path), field_error(code, &message)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of buttons whose custom_ids (unique, as Discord requires) are `id_len` long.
    fn row(r: usize, buttons: usize, id_len: usize) -> Value {
        let buttons: Vec<Value> = (0..buttons)
            .map(|b| {
                let id = format!("{r}{b}{}", "a".repeat(id_len.saturating_sub(2)));
                json!({ "type": 2, "style": 1, "label": "x", "custom_id": id })
            })
            .collect();
        json!({ "type": 1, "components": buttons })
    }

    #[test]
    fn accepts_a_full_but_legal_message() {
        let payload = json!({ "content": "é".repeat(2000), "components": (0..5).map(|r| row(r, 5, 100)).collect::<Vec<_>>() });
        assert!(check_message(&payload, &[10], 10, &[]).is_ok());
    }

    #[test]
    fn nests_errors_where_discord_puts_them() {
        let payload = json!({ "components": [row(0, 1, 2), row(1, 2, 101)] });
        let error = check_message(&payload, &[], 10, &["data"]).unwrap_err();
        assert_eq!(error.body["code"], 50035);
        let leaf = &error.body["errors"]["data"]["components"]["1"]["components"]["0"]["custom_id"];
        assert_eq!(leaf["_errors"][0]["code"], "BASE_TYPE_BAD_LENGTH");
    }
}
