//! Interaction responses: the callback (once, within 3 s) and the webhook routes that the
//! interaction token opens for 15 minutes (follow-ups, `@original` and follow-up edits, deletes).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::messages::{create_message, delete_message, edit_message, unknown_message, validate};
use super::Payload;
use crate::sim::components::check_modal;
use crate::sim::rules::{DiscordError, CALLBACK_DEADLINE, TOKEN_LIFETIME};
use crate::sim::state::{InteractionRecord, InteractionStatus, Shared};

type Answer = Result<Json<Value>, DiscordError>;

/// The interaction type of a modal submission, which a modal cannot answer.
const MODAL_SUBMIT: u8 = 5;

/// Discord's "loading" flag on the message a deferred response shows.
const FLAG_LOADING: u64 = 128;

fn callback_kind_name(kind: u8) -> &'static str {
    match kind {
        1 => "PONG",
        4 => "CHANNEL_MESSAGE_WITH_SOURCE",
        5 => "DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE",
        6 => "DEFERRED_UPDATE_MESSAGE",
        7 => "UPDATE_MESSAGE",
        8 => "APPLICATION_COMMAND_AUTOCOMPLETE_RESULT",
        9 => "MODAL",
        _ => "unknown",
    }
}

/// Takes the interaction for a callback: it must exist, be unanswered, and be under 3 s old.
fn claim(shared: &Shared, id: u64, token: &str) -> Result<InteractionRecord, DiscordError> {
    let now = shared.clock.elapsed();
    let mut world = shared.world();
    let record = world
        .interactions
        .get_mut(token)
        .filter(|r| r.id == id)
        .ok_or_else(DiscordError::unknown_interaction)?;
    match record.status {
        InteractionStatus::Answered(_) => Err(DiscordError::already_acknowledged()),
        InteractionStatus::Failed => Err(DiscordError::unknown_interaction()),
        InteractionStatus::Pending if now.saturating_sub(record.created_at) > CALLBACK_DEADLINE => {
            record.status = InteractionStatus::Failed;
            Err(DiscordError::unknown_interaction())
        }
        InteractionStatus::Pending => Ok(record.clone()),
    }
}

fn settle(shared: &Shared, token: &str, kind: u8, original: Option<u64>, reply: Value) {
    let now = shared.clock.elapsed();
    if let Some(record) = shared.world().interactions.get_mut(token) {
        record.status = InteractionStatus::Answered(kind);
        record.answered_at.get_or_insert(now);
        record.original = original;
        record.reply = reply;
    }
}

/// `POST /interactions/{id}/{token}/callback`.
pub(super) async fn callback(
    State(shared): State<Arc<Shared>>,
    Path((id, token)): Path<(u64, String)>,
    Extension(payload): Extension<Payload>,
) -> Result<StatusCode, DiscordError> {
    let record = claim(&shared, id, &token)?;
    let kind = payload.json["type"].as_u64().unwrap_or(0) as u8;
    let data = payload
        .json
        .get("data")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let bot = shared.world().bot().json();
    let application_id = Some(shared.world().application_id);
    let original = match (kind, record.source_message) {
        (4, _) => {
            validate(&shared, &data, &payload, &["data"])?;
            Some(create_message(
                &shared,
                record.channel_id,
                &bot,
                &data,
                &payload,
                application_id,
                Some(id),
            )?)
        }
        (5, _) => {
            let flags = data["flags"].as_u64().unwrap_or(0) | FLAG_LOADING;
            let body = json!({ "content": "", "flags": flags });
            Some(create_message(
                &shared,
                record.channel_id,
                &bot,
                &body,
                &Payload::default(),
                application_id,
                Some(id),
            )?)
        }
        (6, Some(source)) => shared.world().messages.get(&source).cloned(),
        (7, Some(source)) => {
            validate(&shared, &data, &payload, &["data"])?;
            Some(edit_message(&shared, source, &data, &payload, Some(id))?)
        }
        // A modal answers a command or a component, never a modal submission.
        (9, _) if record.kind != MODAL_SUBMIT => {
            check_modal(&data).map_err(DiscordError::invalid_form)?;
            None
        }
        _ => {
            let message =
                format!("Interaction callback type {kind} is not valid for this interaction");
            return Err(DiscordError::new(StatusCode::BAD_REQUEST, 50035, &message));
        }
    };
    let original_id = original
        .as_ref()
        .and_then(|m| m["id"].as_str()?.parse().ok());
    settle(&shared, &token, kind, original_id, data);
    shared.note(format!(
        "interaction {id} answered with {kind} ({})",
        callback_kind_name(kind)
    ));
    Ok(StatusCode::NO_CONTENT)
}

/// The interaction behind a webhook token, if the token is still valid.
fn by_token(shared: &Shared, app: u64, token: &str) -> Result<InteractionRecord, DiscordError> {
    let now = shared.clock.elapsed();
    let world = shared.world();
    if app != world.application_id {
        return Err(DiscordError::not_found(10015, "Webhook"));
    }
    let record = world
        .interactions
        .get(token)
        .ok_or_else(DiscordError::invalid_webhook_token)?;
    if now.saturating_sub(record.created_at) > TOKEN_LIFETIME {
        return Err(DiscordError::invalid_webhook_token());
    }
    if !matches!(record.status, InteractionStatus::Answered(_)) {
        return Err(DiscordError::not_found(10015, "Webhook"));
    }
    Ok(record.clone())
}

/// The body of the edit that ends a "thinking" message: its flags (the edit's own, else the
/// message's, e.g. ephemeral) without the loading bit.
fn finish_loading(shared: &Shared, message_id: u64, body: &Value) -> Value {
    let existing = shared
        .world()
        .messages
        .get(&message_id)
        .and_then(|m| m["flags"].as_u64());
    let flags = body["flags"].as_u64().or(existing).unwrap_or(0) & !FLAG_LOADING;
    let mut body = body.clone();
    body["flags"] = json!(flags);
    body
}

fn is_loading(shared: &Shared, message_id: u64) -> bool {
    let world = shared.world();
    world
        .messages
        .get(&message_id)
        .and_then(|m| m["flags"].as_u64())
        .is_some_and(|f| f & FLAG_LOADING != 0)
}

/// `POST /webhooks/{app}/{token}`: a follow-up. After a deferred reply, the first follow-up
/// replaces the "thinking" message, as Discord does.
pub(super) async fn followup(
    State(shared): State<Arc<Shared>>,
    Path((app, token)): Path<(u64, String)>,
    Extension(payload): Extension<Payload>,
) -> Answer {
    let record = by_token(&shared, app, &token)?;
    validate(&shared, &payload.json, &payload, &[])?;
    if let Some(original) = record.original.filter(|id| is_loading(&shared, *id)) {
        let body = finish_loading(&shared, original, &payload.json);
        return Ok(Json(edit_message(
            &shared,
            original,
            &body,
            &payload,
            Some(record.id),
        )?));
    }
    let bot = shared.world().bot().json();
    Ok(Json(create_message(
        &shared,
        record.channel_id,
        &bot,
        &payload.json,
        &payload,
        Some(app),
        Some(record.id),
    )?))
}

fn resolve(record: &InteractionRecord, message: &str) -> Result<u64, DiscordError> {
    match message {
        "@original" => record.original.ok_or_else(unknown_message),
        id => id.parse().map_err(|_| unknown_message()),
    }
}

pub(super) async fn get_webhook_message(
    State(shared): State<Arc<Shared>>,
    Path((app, token, message)): Path<(u64, String, String)>,
) -> Answer {
    let record = by_token(&shared, app, &token)?;
    let id = resolve(&record, &message)?;
    Ok(Json(
        shared
            .world()
            .messages
            .get(&id)
            .cloned()
            .ok_or_else(unknown_message)?,
    ))
}

pub(super) async fn edit_webhook_message(
    State(shared): State<Arc<Shared>>,
    Path((app, token, message)): Path<(u64, String, String)>,
    Extension(payload): Extension<Payload>,
) -> Answer {
    let record = by_token(&shared, app, &token)?;
    let id = resolve(&record, &message)?;
    validate(&shared, &payload.json, &payload, &[])?;
    let body = match is_loading(&shared, id) {
        true => finish_loading(&shared, id, &payload.json),
        false => payload.json.clone(),
    };
    Ok(Json(edit_message(
        &shared,
        id,
        &body,
        &payload,
        Some(record.id),
    )?))
}

pub(super) async fn delete_webhook_message(
    State(shared): State<Arc<Shared>>,
    Path((app, token, message)): Path<(u64, String, String)>,
) -> Result<StatusCode, DiscordError> {
    let record = by_token(&shared, app, &token)?;
    delete_message(&shared, resolve(&record, &message)?)?;
    Ok(StatusCode::NO_CONTENT)
}
