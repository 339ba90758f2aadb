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
use crate::sim::ledger::Change;
use crate::sim::mentions::{self, Pings};
use crate::sim::rules::{check_message, field_error, nest, DiscordError};
use crate::sim::state::{Shared, StoredFile};

/// Most characters in a message nonce.
const MAX_NONCE: usize = 25;
/// How long Discord remembers a nonce for `enforce_nonce` ("a few minutes").
const NONCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

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

/// Whom `body`'s content pings in `message`'s channel, and the message's mention fields set
/// to match (Discord fills `mentions`, `mention_roles`, `mention_everyone` the same way).
fn apply_mentions(shared: &Shared, message: &mut Value, body: &Value) -> Pings {
    let Some(content) = body["content"].as_str() else {
        return Pings::default();
    };
    let in_guild = message.get("guild_id").is_some_and(|g| !g.is_null());
    let allowed = body.get("allowed_mentions").filter(|v| !v.is_null());
    let world = shared.world();
    let pings = mentions::pings(content, allowed, in_guild, |id| {
        world.users.contains_key(&id)
    });
    let users: Vec<Value> = pings
        .users
        .iter()
        .filter_map(|u| world.users.get(&u.get()))
        .map(|u| u.json())
        .collect();
    let roles: Vec<Value> = pings.roles.iter().map(|r| json!(r.to_string())).collect();
    message["mentions"] = json!(users);
    message["mention_roles"] = json!(roles);
    message["mention_everyone"] = json!(pings.everyone);
    pings
}

/// Creates and stores a message in `channel_id`, written by `author` (the bot), through
/// `interaction`'s webhook if given.
pub(crate) fn create_message(
    shared: &Shared,
    channel_id: u64,
    author: &Value,
    body: &Value,
    payload: &Payload,
    application_id: Option<u64>,
    interaction: Option<u64>,
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
    let mut message = fixtures::message(MessageParts {
        id,
        channel_id,
        guild_id,
        author,
        timestamp: &timestamp,
        body,
        attachments,
        application_id,
    });
    let pings = apply_mentions(shared, &mut message, body);
    shared.world().messages.insert(id, message.clone());
    shared.log_message(&message, Change::Created, interaction, pings);
    Ok(message)
}

/// Applies an edit: replaces the fields the body names, keeps listed attachments, adds uploads.
pub(crate) fn edit_message(
    shared: &Shared,
    message_id: u64,
    body: &Value,
    payload: &Payload,
    interaction: Option<u64>,
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
    let pings = apply_mentions(shared, &mut message, body);
    shared.world().messages.insert(message_id, message.clone());
    shared.log_message(&message, Change::Edited, interaction, pings);
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

/// The bot's own channel endpoints reach only its guilds and its DMs.
fn bot_access(shared: &Shared, channel_id: u64) -> Result<(), DiscordError> {
    let world = shared.world();
    let channel = world
        .channels
        .get(&channel_id)
        .ok_or_else(|| DiscordError::not_found(10003, "Channel"))?;
    if world.bot_can_access(channel) {
        return Ok(());
    }
    Err(DiscordError::new(
        StatusCode::FORBIDDEN,
        50001,
        "Missing Access",
    ))
}

fn message_in_channel(
    shared: &Shared,
    channel_id: u64,
    message_id: u64,
) -> Result<Value, DiscordError> {
    bot_access(shared, channel_id)?;
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
    bot_access(&shared, channel)?;
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
    bot_access(&shared, channel)?;
    validate(&shared, &payload.json, &payload, &[])?;
    let nonce = nonce_of(&payload.json)?;
    let enforce = payload.json["enforce_nonce"].as_bool() == Some(true);
    let bot = shared.world().bot().json();
    let bot_id = shared.world().bot().id;
    let _gate = shared
        .nonce_gate
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(earlier) = nonce.as_ref().filter(|_| enforce).and_then(|nonce| {
        let now = shared.clock.elapsed();
        let world = shared.world();
        let (id, at) = world.nonces.get(&(bot_id, nonce.clone()))?;
        (now.saturating_sub(*at) <= NONCE_WINDOW)
            .then(|| world.messages.get(id).cloned())
            .flatten()
    }) {
        shared.note("a channel message with an enforced nonce seen before: no new message");
        return Ok(Json(earlier));
    }
    let message = create_message(&shared, channel, &bot, &payload.json, &payload, None, None)?;
    if let (Some(nonce), Some(id)) = (nonce, message["id"].as_str()) {
        let id = id.parse().unwrap_or(0);
        let at = shared.clock.elapsed();
        shared.world().nonces.insert((bot_id, nonce), (id, at));
    }
    Ok(Json(message))
}

/// The message's nonce, as a string: an integer or a string of at most 25 characters.
fn nonce_of(body: &Value) -> Result<Option<String>, DiscordError> {
    let refuse = |code: &str, message: &str| {
        let errors = nest(&["nonce".to_owned()], field_error(code, message));
        DiscordError::invalid_form(errors)
    };
    match body.get("nonce") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(Value::String(s)) if s.chars().count() <= MAX_NONCE => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(refuse(
            "BASE_TYPE_MAX_LENGTH",
            &format!("Must be {MAX_NONCE} or fewer in length."),
        )),
        Some(_) => Err(refuse(
            "NONCE_TYPE_INVALID",
            "Nonce must be an integer or a string.",
        )),
    }
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
        None,
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
