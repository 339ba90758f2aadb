//! Messages: creating, editing and deleting them (for channels and webhooks alike), storing
//! their uploaded files, serving those files back, and reactions.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::Payload;
use crate::sim::fixtures::{self, MessageParts};
use crate::sim::rules::{check_message, DiscordError};
use crate::sim::state::{Shared, StoredFile};

type Answer = Result<Json<Value>, DiscordError>;

/// Stores the uploaded files and returns their attachment objects, with URLs we serve.
pub(crate) fn store_files(shared: &Shared, payload: &Payload) -> Vec<Value> {
    payload
        .files
        .iter()
        .map(|file| {
            let id = shared.snowflake();
            let url = shared.attachment_url(id, &file.filename);
            let stored = StoredFile {
                filename: file.filename.clone(),
                content_type: file.content_type.clone(),
                bytes: file.bytes.clone(),
            };
            shared.world().files.insert(id, stored);
            fixtures::attachment(
                id,
                &file.filename,
                file.bytes.len(),
                &url,
                &file.content_type,
            )
        })
        .collect()
}

/// Validates a message body against Discord's limits (`prefix`: where it sits in the request).
pub(crate) fn validate(
    shared: &Shared,
    body: &Value,
    payload: &Payload,
    prefix: &[&str],
) -> Result<(), DiscordError> {
    check_message(
        body,
        &payload.file_sizes(),
        shared.config.attachment_size_limit,
        prefix,
    )
}

/// Creates and stores a message in `channel_id`, written by `author`.
pub(crate) fn create_message(
    shared: &Shared,
    channel_id: u64,
    author: &Value,
    body: &Value,
    payload: &Payload,
    application_id: Option<u64>,
) -> Result<Value, DiscordError> {
    let guild_id = {
        let world = shared.world();
        let channel = world
            .channels
            .get(&channel_id)
            .ok_or_else(|| DiscordError::not_found(10003, "Channel"))?;
        channel.guild_id()
    };
    let id = shared.snowflake();
    let attachments = store_files(shared, payload);
    let timestamp = shared.clock.timestamp();
    let message = fixtures::message(MessageParts {
        id,
        channel_id,
        guild_id,
        author,
        timestamp: &timestamp,
        body,
        attachments,
        application_id,
    });
    shared.world().messages.insert(id, message.clone());
    Ok(message)
}

/// Applies an edit: replaces the fields the body names, keeps listed attachments, adds uploads.
pub(crate) fn edit_message(
    shared: &Shared,
    message_id: u64,
    body: &Value,
    payload: &Payload,
) -> Result<Value, DiscordError> {
    let mut message = shared
        .world()
        .messages
        .get(&message_id)
        .cloned()
        .ok_or_else(unknown_message)?;
    for field in ["content", "embeds", "components", "flags"] {
        if let Some(value) = body.get(field) {
            message[field] = value.clone();
        }
    }
    if let Some(keep) = body.get("attachments").and_then(Value::as_array) {
        let kept: Vec<&str> = keep.iter().filter_map(|a| a["id"].as_str()).collect();
        let existing = message["attachments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let still_there = |a: &Value| a["id"].as_str().is_some_and(|id| kept.contains(&id));
        message["attachments"] = Value::Array(existing.into_iter().filter(still_there).collect());
    }
    let added = store_files(shared, payload);
    if let Some(list) = message["attachments"].as_array_mut() {
        list.extend(added);
    }
    message["edited_timestamp"] = json!(shared.clock.timestamp());
    shared.world().messages.insert(message_id, message.clone());
    Ok(message)
}

pub(crate) fn delete_message(shared: &Shared, message_id: u64) -> Result<(), DiscordError> {
    shared
        .world()
        .messages
        .remove(&message_id)
        .map(|_| ())
        .ok_or_else(unknown_message)
}

pub(crate) fn unknown_message() -> DiscordError {
    DiscordError::not_found(10008, "Message")
}

fn message_in_channel(
    shared: &Shared,
    channel_id: u64,
    message_id: u64,
) -> Result<Value, DiscordError> {
    let world = shared.world();
    let message = world
        .messages
        .get(&message_id)
        .ok_or_else(unknown_message)?;
    if message["channel_id"] != json!(channel_id.to_string()) {
        return Err(unknown_message());
    }
    Ok(message.clone())
}

pub(super) async fn get_channel(
    State(shared): State<Arc<Shared>>,
    Path(channel): Path<u64>,
) -> Answer {
    let world = shared.world();
    let record = world
        .channels
        .get(&channel)
        .ok_or_else(|| DiscordError::not_found(10003, "Channel"))?;
    Ok(Json(world.channel_json(record)))
}

pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    Path(channel): Path<u64>,
    Extension(payload): Extension<Payload>,
) -> Answer {
    validate(&shared, &payload.json, &payload, &[])?;
    let bot = shared.world().bot().json();
    Ok(Json(create_message(
        &shared,
        channel,
        &bot,
        &payload.json,
        &payload,
        None,
    )?))
}

pub(super) async fn get(
    State(shared): State<Arc<Shared>>,
    Path((channel, message)): Path<(u64, u64)>,
) -> Answer {
    Ok(Json(message_in_channel(&shared, channel, message)?))
}

pub(super) async fn edit(
    State(shared): State<Arc<Shared>>,
    Path((channel, message)): Path<(u64, u64)>,
    Extension(payload): Extension<Payload>,
) -> Answer {
    let existing = message_in_channel(&shared, channel, message)?;
    let bot_id = shared.world().bot().id.to_string();
    if existing["author"]["id"] != json!(bot_id) {
        return Err(DiscordError::new(
            StatusCode::FORBIDDEN,
            50005,
            "Cannot edit a message authored by another user",
        ));
    }
    validate(&shared, &payload.json, &payload, &[])?;
    Ok(Json(edit_message(
        &shared,
        message,
        &payload.json,
        &payload,
    )?))
}

pub(super) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((channel, message)): Path<(u64, u64)>,
) -> Result<StatusCode, DiscordError> {
    message_in_channel(&shared, channel, message)?;
    delete_message(&shared, message)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn react(
    State(shared): State<Arc<Shared>>,
    Path((channel, message, emoji)): Path<(u64, u64, String)>,
) -> Result<StatusCode, DiscordError> {
    message_in_channel(&shared, channel, message)?;
    let mut world = shared.world();
    let stored = world
        .messages
        .get_mut(&message)
        .ok_or_else(unknown_message)?;
    let reaction = json!({
        "count": 1, "count_details": { "burst": 0, "normal": 1 }, "me": true, "me_burst": false,
        "emoji": { "id": null, "name": emoji }, "burst_colors": [],
    });
    match stored["reactions"].as_array_mut() {
        Some(list) => list.push(reaction),
        None => stored["reactions"] = json!([reaction]),
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn unreact(
    State(shared): State<Arc<Shared>>,
    Path((channel, message, emoji)): Path<(u64, u64, String)>,
) -> Result<StatusCode, DiscordError> {
    message_in_channel(&shared, channel, message)?;
    let mut world = shared.world();
    if let Some(list) = world
        .messages
        .get_mut(&message)
        .and_then(|m| m["reactions"].as_array_mut())
    {
        list.retain(|r| r["emoji"]["name"] != json!(emoji));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /attachments/{id}/{filename}`: the bytes of an uploaded (or user-sent) file.
pub(super) async fn download(
    State(shared): State<Arc<Shared>>,
    Path((id, filename)): Path<(u64, String)>,
) -> Response {
    let world = shared.world();
    match world.files.get(&id).filter(|f| f.filename == filename) {
        Some(file) => (
            [(header::CONTENT_TYPE, file.content_type.clone())],
            file.bytes.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
