//! Builders for the JSON objects Discord sends: users, guilds, channels, messages,
//! interactions and gateway frames.
//!
//! They carry every field serenity 0.12.5 requires; the fixture test parses each gateway payload
//! the simulator emits to prove serenity sees the intended event, not an unknown one.

use serde_json::{json, Value};

/// Discord's permissions for an administrator, as a decimal string.
const ALL_PERMISSIONS: &str = "8";

pub fn user(id: u64, name: &str, bot: bool) -> Value {
    json!({
        "id": id.to_string(), "username": name, "global_name": name, "discriminator": "0",
        "avatar": null, "bot": bot, "public_flags": 0, "flags": 0,
    })
}

pub fn member(user: &Value, joined_at: &str) -> Value {
    json!({
        "user": user, "nick": null, "avatar": null, "roles": [], "joined_at": joined_at,
        "premium_since": null, "deaf": false, "mute": false, "flags": 0, "pending": false,
        "permissions": ALL_PERMISSIONS,
    })
}

fn everyone_role(guild_id: u64) -> Value {
    json!({
        "id": guild_id.to_string(), "name": "@everyone", "color": 0,
        "colors": { "primary_color": 0, "secondary_color": null, "tertiary_color": null },
        "hoist": false, "icon": null, "unicode_emoji": null, "position": 0,
        "permissions": "1071698660929", "managed": false, "mentionable": false, "flags": 0,
    })
}

pub fn guild_channel(id: u64, guild_id: u64, name: &str) -> Value {
    json!({
        "id": id.to_string(), "type": 0, "guild_id": guild_id.to_string(), "name": name,
        "position": 0, "permission_overwrites": [], "topic": null, "nsfw": false,
        "last_message_id": null, "rate_limit_per_user": 0, "parent_id": null, "flags": 0,
    })
}

pub fn dm_channel(id: u64, recipient: &Value) -> Value {
    json!({
        "id": id.to_string(), "type": 1, "last_message_id": null, "flags": 0,
        "recipients": [recipient],
    })
}

/// A group DM (type 3) among users; bots are never members of one.
pub fn group_dm_channel(id: u64, name: &str, owner_id: u64, recipients: Vec<Value>) -> Value {
    json!({
        "id": id.to_string(), "type": 3, "name": name, "icon": null, "last_message_id": null,
        "owner_id": owner_id.to_string(), "flags": 0, "recipients": recipients,
    })
}

pub struct GuildParts<'a> {
    pub id: u64,
    pub name: &'a str,
    pub owner_id: u64,
    pub joined_at: &'a str,
    pub channels: Vec<Value>,
    pub members: Vec<Value>,
}

/// The payload of GUILD_CREATE: a full, available guild.
pub fn guild_create(parts: GuildParts<'_>) -> Value {
    json!({
        "id": parts.id.to_string(), "name": parts.name, "icon": null, "icon_hash": null,
        "splash": null, "discovery_splash": null, "owner_id": parts.owner_id.to_string(),
        "widget_enabled": false,
        "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "roles": [everyone_role(parts.id)], "emojis": [],
        "features": [], "mfa_level": 0, "application_id": null, "system_channel_id": null,
        "system_channel_flags": 0, "rules_channel_id": null, "max_members": 500000,
        "vanity_url_code": null, "description": null, "banner": null, "premium_tier": 0,
        "premium_subscription_count": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": null, "nsfw_level": 0, "stickers": [],
        "premium_progress_bar_enabled": false, "safety_alerts_channel_id": null,
        "joined_at": parts.joined_at, "large": false, "unavailable": false,
        "member_count": parts.members.len(), "voice_states": [], "members": parts.members,
        "channels": parts.channels, "threads": [], "presences": [], "stage_instances": [],
        "guild_scheduled_events": [], "soundboard_sounds": [],
    })
}

/// The shard Discord sends a guild's events to, `(guild_id >> 22) % num_shards`; DMs go to
/// shard 0.
pub fn shard_of(guild: Option<u64>, num_shards: u32) -> u32 {
    match guild {
        Some(id) => ((id >> 22) % u64::from(num_shards.max(1))) as u32,
        None => 0,
    }
}

/// READY for the session identified as `shard` (`[id, num_shards]`), naming its guilds.
pub fn ready(
    bot: &Value,
    application_id: u64,
    guild_ids: &[u64],
    session: &str,
    url: &str,
    shard: [u32; 2],
) -> Value {
    let guilds: Vec<Value> = guild_ids
        .iter()
        .map(|id| json!({ "id": id.to_string(), "unavailable": true }))
        .collect();
    json!({
        "v": 10, "user": bot, "guilds": guilds, "session_id": session,
        "resume_gateway_url": url, "shard": shard, "private_channels": [],
        "application": { "id": application_id.to_string(), "flags": 0 },
    })
}

pub fn attachment(id: u64, filename: &str, size: usize, url: &str, content_type: &str) -> Value {
    json!({
        "id": id.to_string(), "filename": filename, "size": size, "url": url, "proxy_url": url,
        "content_type": content_type,
    })
}

/// Everything a Message needs; the caller fills the variable parts.
pub struct MessageParts<'a> {
    pub id: u64,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    pub author: &'a Value,
    pub timestamp: &'a str,
    /// The message body as the bot (or user) sent it: content, components, embeds, flags.
    pub body: &'a Value,
    pub attachments: Vec<Value>,
    /// Set for interaction responses and follow-ups.
    pub application_id: Option<u64>,
}

pub fn message(parts: MessageParts<'_>) -> Value {
    let body = parts.body;
    let mut message = json!({
        "id": parts.id.to_string(), "channel_id": parts.channel_id.to_string(),
        "author": parts.author, "content": body["content"].as_str().unwrap_or(""),
        "timestamp": parts.timestamp, "edited_timestamp": null, "tts": false,
        "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": parts.attachments,
        "embeds": body.get("embeds").cloned().unwrap_or_else(|| json!([])),
        "components": body.get("components").cloned().unwrap_or_else(|| json!([])),
        "pinned": false, "type": if parts.application_id.is_some() { 20 } else { 0 },
        "flags": body["flags"].as_u64().unwrap_or(0),
    });
    if let Some(guild_id) = parts.guild_id {
        message["guild_id"] = json!(guild_id.to_string());
    }
    if let Some(application_id) = parts.application_id {
        message["application_id"] = json!(application_id.to_string());
        message["webhook_id"] = json!(application_id.to_string());
    }
    message
}

/// Where an interaction happened and who started it.
pub struct InteractionParts<'a> {
    pub id: u64,
    pub application_id: u64,
    pub token: &'a str,
    pub channel: &'a Value,
    pub guild_id: Option<u64>,
    /// For guild interactions: the member; for DMs the user goes in `user`.
    pub user: &'a Value,
    pub member_joined_at: &'a str,
    pub attachment_size_limit: usize,
    /// 0 guild, 1 bot DM, 2 private channel (group DM).
    pub context: u8,
    /// Only the user's own install authorizes the interaction (a server without the bot, a
    /// group DM): `authorizing_integration_owners` then has only the user key `"1"`.
    pub user_install_only: bool,
}

fn interaction(parts: &InteractionParts<'_>, kind: u8, data: Value) -> Value {
    let user_id = parts.user["id"].clone();
    let mut interaction = json!({
        "id": parts.id.to_string(), "application_id": parts.application_id.to_string(),
        "type": kind, "data": data, "token": parts.token, "version": 1, "locale": "en-US",
        "entitlements": [], "attachment_size_limit": parts.attachment_size_limit,
        "channel_id": parts.channel["id"], "channel": parts.channel,
        "app_permissions": ALL_PERMISSIONS,
    });
    interaction["context"] = json!(parts.context);
    let mut owners = json!({ "1": user_id });
    match parts.guild_id {
        Some(guild_id) => {
            interaction["guild_id"] = json!(guild_id.to_string());
            interaction["guild_locale"] = json!("en-US");
            interaction["guild"] =
                json!({ "id": guild_id.to_string(), "locale": "en-US", "features": [] });
            interaction["member"] = member(parts.user, parts.member_joined_at);
            if !parts.user_install_only {
                owners = json!({ "0": guild_id.to_string() });
            }
        }
        None => interaction["user"] = parts.user.clone(),
    }
    interaction["authorizing_integration_owners"] = owners;
    interaction
}

/// An APPLICATION_COMMAND interaction (type 2). `data` is `{id, name, type, options, resolved}`.
pub fn command_interaction(parts: &InteractionParts<'_>, data: Value) -> Value {
    interaction(parts, 2, data)
}

/// A MESSAGE_COMPONENT interaction (type 3) for a button on `message`.
pub fn button_interaction(parts: &InteractionParts<'_>, custom_id: &str, message: &Value) -> Value {
    let mut value = interaction(
        parts,
        3,
        json!({ "custom_id": custom_id, "component_type": 2 }),
    );
    value["message"] = message.clone();
    value
}

/// A MESSAGE_COMPONENT interaction (type 3) for a string select on `message`: the values the
/// user picked.
pub fn select_interaction(
    parts: &InteractionParts<'_>,
    custom_id: &str,
    values: &[String],
    message: &Value,
) -> Value {
    let data = json!({ "custom_id": custom_id, "component_type": 3, "values": values });
    let mut value = interaction(parts, 3, data);
    value["message"] = message.clone();
    value
}

/// A MODAL_SUBMIT interaction (type 5). `components` are the modal's action rows, each with
/// one `{type: 4, custom_id, value}`; `message` is the message whose component opened it.
pub fn modal_submit_interaction(
    parts: &InteractionParts<'_>,
    custom_id: &str,
    components: Vec<Value>,
    message: Option<&Value>,
) -> Value {
    let data = json!({ "custom_id": custom_id, "components": components });
    let mut value = interaction(parts, 5, data);
    if let Some(message) = message {
        value["message"] = message.clone();
    }
    value
}

pub fn reaction_add(user: &Value, message: &Value, emoji: &str, joined_at: &str) -> Value {
    let mut reaction = json!({
        "user_id": user["id"], "channel_id": message["channel_id"], "message_id": message["id"],
        "message_author_id": message["author"]["id"], "burst": false, "burst_colors": [],
        "type": 0, "emoji": { "id": null, "name": emoji },
    });
    if let Some(guild_id) = message.get("guild_id") {
        reaction["guild_id"] = guild_id.clone();
        reaction["member"] = member(user, joined_at);
    }
    reaction
}

/// The answer to `GET /oauth2/applications/@me`.
pub fn application(id: u64, bot: &Value, owner: &Value) -> Value {
    json!({
        "id": id.to_string(), "name": bot["username"], "icon": null, "description": "",
        "bot_public": true, "bot_require_code_grant": false, "bot": bot, "owner": owner,
        "verify_key": "0".repeat(64), "team": null, "flags": 0,
    })
}

/// A registered command, as Discord echoes it back: the bot's body plus ids and defaults.
pub fn registered_command(
    body: &Value,
    id: u64,
    application_id: u64,
    guild_id: Option<u64>,
) -> Value {
    let mut command = body.clone();
    command["id"] = json!(id.to_string());
    command["application_id"] = json!(application_id.to_string());
    command["version"] = json!(id.to_string());
    command["guild_id"] = guild_id.map_or(Value::Null, |g| json!(g.to_string()));
    for (key, default) in [
        ("type", json!(1)),
        ("description", json!("")),
        ("options", json!([])),
    ] {
        if command.get(key).is_none_or(Value::is_null) {
            command[key] = default;
        }
    }
    if command.get("integration_types").is_none_or(Value::is_null) {
        command["integration_types"] = json!([0]);
    }
    command
}

pub fn hello(heartbeat_interval_ms: u64) -> Value {
    json!({ "op": 10, "d": { "heartbeat_interval": heartbeat_interval_ms }, "s": null, "t": null })
}

pub fn heartbeat_ack() -> Value {
    json!({ "op": 11, "d": null, "s": null, "t": null })
}

pub fn invalid_session(resumable: bool) -> Value {
    json!({ "op": 9, "d": resumable, "s": null, "t": null })
}

pub fn dispatch(seq: u64, name: &str, data: Value) -> Value {
    json!({ "op": 0, "s": seq, "t": name, "d": data })
}
