//! The REST side: Discord's HTTP API under `/api/v10`, plus `/attachments/...` for files.
//!
//! One middleware sits in front of every route. It reads the body once (JSON, or multipart with
//! `payload_json` and `files[n]`), checks the bot token, applies injected faults, hands the
//! parsed [`Payload`] to the handler, and records the call and its answer in the transcript.

mod application;
mod interactions;
pub(crate) mod messages;
mod payload;

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

pub(crate) use application::{gateway_url, open_dm};
pub(crate) use payload::Payload;

use super::faults::{take_fault, Fault};
use super::rules::DiscordError;
use super::state::Shared;
use super::transcript::{Entry, RestCall};

pub(crate) const API_PREFIX: &str = "/api/v10";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/gateway", get(application::gateway))
        .route("/gateway/bot", get(application::gateway_bot))
        .route(
            "/oauth2/applications/@me",
            get(application::application_info),
        )
        .route("/applications/@me", get(application::application_info))
        .route("/users/@me", get(application::current_user))
        .route("/users/@me/channels", post(application::create_dm))
        .route(
            "/applications/{app}/commands",
            put(application::set_global_commands)
                .get(application::global_commands)
                .post(application::create_global_command),
        )
        .route(
            "/applications/{app}/guilds/{guild}/commands",
            put(application::set_guild_commands).get(application::guild_commands),
        )
        .route(
            "/interactions/{id}/{token}/callback",
            post(interactions::callback),
        )
        .route("/webhooks/{app}/{token}", post(interactions::followup))
        .route(
            "/webhooks/{app}/{token}/messages/{message}",
            get(interactions::get_webhook_message)
                .patch(interactions::edit_webhook_message)
                .delete(interactions::delete_webhook_message),
        )
        .route("/channels/{channel}", get(messages::get_channel))
        .route("/channels/{channel}/messages", post(messages::create))
        .route(
            "/channels/{channel}/messages/{message}",
            get(messages::get)
                .patch(messages::edit)
                .delete(messages::delete),
        )
        .route(
            "/channels/{channel}/messages/{message}/reactions/{emoji}/@me",
            put(messages::react).delete(messages::unreact),
        )
        .fallback(not_found);
    Router::new()
        .nest(API_PREFIX, api)
        .route("/attachments/{id}/{filename}", get(messages::download))
        .route("/gateway", get(super::gateway::upgrade))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            record_and_fault,
        ))
        .with_state(shared)
}

async fn not_found() -> DiscordError {
    DiscordError::new(StatusCode::NOT_FOUND, 0, "404: Not Found")
}

/// Routes that Discord opens to anyone holding the interaction token.
fn needs_bot_token(path: &str) -> bool {
    !(path.starts_with("/interactions/") || path.starts_with("/webhooks/"))
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let token = shared.config.token.as_str();
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    given == format!("Bot {token}") || given == token
}

async fn record_and_fault(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(path) = request
        .uri()
        .path()
        .strip_prefix(API_PREFIX)
        .map(str::to_owned)
    else {
        return next.run(request).await;
    };
    let method = request.method().as_str().to_owned();
    let (mut parts, body) = request.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let payload = payload::parse(&parts.headers, bytes).await;
    let mut hang_after = false;
    let refusal = if needs_bot_token(&path) && !authorized(&shared, &parts.headers) {
        Some(DiscordError::unauthorized().into_response())
    } else {
        let result = super::ledger::carries_result(&payload.json, payload.files.len());
        let fault = take_fault(&mut shared.world().faults, &method, &path, result);
        match fault {
            Some(Fault::Hang) => {
                hang(&shared, &method, &path, "unanswered and not acted on").await;
                None
            }
            Some(Fault::HangAfterApplying) => {
                hang_after = true;
                None
            }
            Some(Fault::RateLimited { retry_after }) => {
                Some(rate_limited(retry_after.as_secs_f64()))
            }
            Some(Fault::ServerError(status)) => Some(server_error(status)),
            Some(Fault::Latency(delay)) => {
                tokio::time::sleep(delay).await;
                None
            }
            None => None,
        }
    };
    let response = match refusal {
        Some(response) => response,
        None => {
            parts.extensions.insert(payload.clone());
            next.run(Request::from_parts(parts, Body::empty())).await
        }
    };
    let response = finish(&shared, method.clone(), path.clone(), payload, response).await;
    if hang_after {
        hang(&shared, &method, &path, "acted on, answer withheld").await;
    }
    response
}

/// Holds the request open forever; notes when it starts and when the client gives up (the
/// server drops this future when the connection closes).
async fn hang(shared: &Arc<Shared>, method: &str, path: &str, how: &str) {
    struct GaveUp {
        shared: Arc<Shared>,
        call: String,
    }
    impl Drop for GaveUp {
        fn drop(&mut self) {
            self.shared
                .note(format!("{}: the client gave up waiting", self.call));
        }
    }
    let call = format!("{method} {path}");
    shared.note(format!("{call}: hanging ({how})"));
    let _gave_up = GaveUp {
        shared: shared.clone(),
        call,
    };
    std::future::pending::<()>().await;
}

/// Records the call and hands the answer on unchanged.
async fn finish(
    shared: &Shared,
    method: String,
    path: String,
    payload: Payload,
    response: Response,
) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let answer = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    shared.record(Entry::Rest(RestCall {
        method,
        path,
        body: payload.json.clone(),
        files: payload.summaries(),
        status: parts.status.as_u16(),
        response: answer,
    }));
    Response::from_parts(parts, Body::from(bytes))
}

fn rate_limited(retry_after: f64) -> Response {
    let body = json!({ "message": "You are being rate limited.", "retry_after": retry_after, "global": false });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    let headers = response.headers_mut();
    let value = |text: String| HeaderValue::from_str(&text).expect("ascii header");
    headers.insert("retry-after", value(retry_after.ceil().to_string()));
    headers.insert("x-ratelimit-limit", value("5".into()));
    headers.insert("x-ratelimit-remaining", value("0".into()));
    headers.insert(
        "x-ratelimit-reset-after",
        value(format!("{retry_after:.3}")),
    );
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() + retry_after)
        .unwrap_or_default();
    headers.insert("x-ratelimit-reset", value(format!("{reset:.3}")));
    headers.insert("x-ratelimit-bucket", value("simulated-bucket".into()));
    headers.insert("x-ratelimit-scope", value("user".into()));
    response
}

fn server_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = format!(
        "{}: {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Server Error")
    );
    DiscordError::new(status, 0, &message).into_response()
}
