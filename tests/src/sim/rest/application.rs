//! Startup routes: gateway URL, application and bot identity, command registration, and DM
//! channel creation.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::Payload;
use crate::sim::fixtures;
use crate::sim::rules::DiscordError;
use crate::sim::state::{ChannelKind, ChannelRecord, Shared};

type Answer = Result<Json<Value>, DiscordError>;

pub(crate) fn gateway_url(shared: &Shared) -> String {
    format!("{}/gateway", shared.base.replacen("http://", "ws://", 1))
}

pub(super) async fn gateway(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "url": gateway_url(&shared) }))
}

/// Discord recommends about one shard per 1,000 guilds.
const GUILDS_PER_RECOMMENDED_SHARD: usize = 1000;

pub(super) async fn gateway_bot(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let guilds = shared.world().bot_guild_ids().len();
    let shards = guilds.div_ceil(GUILDS_PER_RECOMMENDED_SHARD).max(1);
    Json(json!({
        "url": gateway_url(&shared), "shards": shards,
        "session_start_limit": { "total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1 },
    }))
}

pub(super) async fn application_info(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let world = shared.world();
    let bot = world.bot().json();
    let owner = world
        .users
        .values()
        .find(|u| !u.bot)
        .map(|u| u.json())
        .unwrap_or_else(|| bot.clone());
    Json(fixtures::application(world.application_id, &bot, &owner))
}

pub(super) async fn current_user(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.world().bot().json())
}

fn check_application(shared: &Shared, app: u64) -> Result<(), DiscordError> {
    if app == shared.world().application_id {
        return Ok(());
    }
    Err(DiscordError::new(
        StatusCode::FORBIDDEN,
        20012,
        "You are not authorized to perform this action on this application",
    ))
}

fn register(
    shared: &Shared,
    body: &Value,
    guild_id: Option<u64>,
) -> Result<Vec<Value>, DiscordError> {
    let Some(commands) = body.as_array() else {
        return Err(DiscordError::new(
            StatusCode::BAD_REQUEST,
            50109,
            "The request body contains invalid JSON.",
        ));
    };
    let application_id = shared.world().application_id;
    Ok(commands
        .iter()
        .map(|command| {
            fixtures::registered_command(command, shared.snowflake(), application_id, guild_id)
        })
        .collect())
}

pub(super) async fn set_global_commands(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<u64>,
    Extension(payload): Extension<Payload>,
) -> Answer {
    check_application(&shared, app)?;
    let registered = register(&shared, &payload.json, None)?;
    let mut world = shared.world();
    world.global_commands = registered.clone();
    world.commands_registered = true;
    Ok(Json(Value::Array(registered)))
}

pub(super) async fn create_global_command(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<u64>,
    Extension(payload): Extension<Payload>,
) -> Answer {
    check_application(&shared, app)?;
    let mut registered = register(&shared, &Value::Array(vec![payload.json]), None)?;
    let command = registered.remove(0);
    let mut world = shared.world();
    world
        .global_commands
        .retain(|c| c["name"] != command["name"]);
    world.global_commands.push(command.clone());
    Ok(Json(command))
}

pub(super) async fn global_commands(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<u64>,
) -> Answer {
    check_application(&shared, app)?;
    Ok(Json(Value::Array(shared.world().global_commands.clone())))
}

pub(super) async fn set_guild_commands(
    State(shared): State<Arc<Shared>>,
    Path((app, guild)): Path<(u64, u64)>,
    Extension(payload): Extension<Payload>,
) -> Answer {
    check_application(&shared, app)?;
    if !shared.world().guilds.contains_key(&guild) {
        return Err(DiscordError::not_found(10004, "Guild"));
    }
    let registered = register(&shared, &payload.json, Some(guild))?;
    let mut world = shared.world();
    world.guild_commands.insert(guild, registered.clone());
    world.commands_registered = true;
    Ok(Json(Value::Array(registered)))
}

pub(super) async fn guild_commands(
    State(shared): State<Arc<Shared>>,
    Path((app, guild)): Path<(u64, u64)>,
) -> Answer {
    check_application(&shared, app)?;
    Ok(Json(Value::Array(
        shared
            .world()
            .guild_commands
            .get(&guild)
            .cloned()
            .unwrap_or_default(),
    )))
}

/// `POST /users/@me/channels {recipient_id}`: opens (or returns) the DM channel with a user.
pub(super) async fn create_dm(
    State(shared): State<Arc<Shared>>,
    Extension(payload): Extension<Payload>,
) -> Answer {
    let recipient = payload.json["recipient_id"]
        .as_str()
        .and_then(|id| id.parse::<u64>().ok())
        .or_else(|| payload.json["recipient_id"].as_u64())
        .ok_or_else(|| DiscordError::not_found(10013, "User"))?;
    let channel_id = open_dm(&shared, recipient)?;
    let world = shared.world();
    Ok(Json(world.channel_json(&world.channels[&channel_id])))
}

/// The DM channel between the bot and `user_id`, created on first use. Discord lets a bot
/// reach only users who share a server with it or installed the app.
pub(crate) fn open_dm(shared: &Shared, user_id: u64) -> Result<u64, DiscordError> {
    let reachable = match shared.world().users.get(&user_id) {
        None => return Err(DiscordError::not_found(10013, "User")),
        Some(user) => user.shares_guild || user.installed_app,
    };
    if !reachable {
        return Err(DiscordError::new(
            StatusCode::FORBIDDEN,
            50007,
            "Cannot send messages to this user",
        ));
    }
    if let Some(id) = shared.world().dm_channel_of(user_id) {
        return Ok(id);
    }
    let id = shared.snowflake();
    let record = ChannelRecord {
        id,
        name: String::new(),
        kind: ChannelKind::Dm(user_id),
        recipients: Vec::new(),
    };
    shared.world().channels.insert(id, record);
    Ok(id)
}
