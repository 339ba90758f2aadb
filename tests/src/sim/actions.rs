//! What scripted users do: run a slash command, click a button, send a DM, react.
//!
//! Each action builds the payload Discord would send, stores what Discord would store, and
//! dispatches it over the gateway. Actions Discord's client could not perform (unknown command,
//! a button the message does not have) are refused with a [`SimError`].

use std::time::Duration;

use serde_json::{json, Map, Value};
use serenity::all::{ChannelId, InteractionId, MessageId, UserId};

use super::fixtures::{self, InteractionParts, MessageParts};
use super::gateway::dispatch;
use super::rules::CALLBACK_DEADLINE;
use super::state::{ChannelRecord, InteractionRecord, InteractionStatus, Shared, StoredFile};
use super::{SimError, Simulator};

/// A file a user attaches to a slash command.
#[derive(Clone, Debug)]
pub struct Upload {
    pub filename: String,
    pub bytes: Vec<u8>,
    pub content_type: String,
}

impl Upload {
    pub fn png(filename: &str, bytes: Vec<u8>) -> Self {
        Self {
            filename: filename.to_owned(),
            bytes,
            content_type: "image/png".to_owned(),
        }
    }
}

/// A slash command option value.
#[derive(Clone, Debug)]
pub enum OptionValue {
    String(String),
    Integer(i64),
    Number(f64),
    Boolean(bool),
    User(UserId),
    Attachment(Upload),
    /// A subcommand (option type 1) with its own options.
    Subcommand(Vec<(String, OptionValue)>),
}

impl From<&str> for OptionValue {
    fn from(value: &str) -> Self {
        OptionValue::String(value.to_owned())
    }
}

impl From<i64> for OptionValue {
    fn from(value: i64) -> Self {
        OptionValue::Integer(value)
    }
}

impl From<bool> for OptionValue {
    fn from(value: bool) -> Self {
        OptionValue::Boolean(value)
    }
}

impl From<Upload> for OptionValue {
    fn from(value: Upload) -> Self {
        OptionValue::Attachment(value)
    }
}

/// An interaction the simulator sent the bot; pass it to the `wait_*` methods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interaction {
    pub id: InteractionId,
    pub token: String,
    pub channel_id: ChannelId,
}

impl Simulator {
    /// `user` runs `/name` with `options` in `channel` (a guild channel or a DM channel from
    /// [`Simulator::dm_channel`]). Attachments land in `data.resolved.attachments` with a URL
    /// the simulator serves.
    pub fn slash_command(
        &self,
        user: UserId,
        channel: ChannelId,
        name: &str,
        options: Vec<(&str, OptionValue)>,
    ) -> Result<Interaction, SimError> {
        let shared = &self.shared;
        let place = channel_record(shared, channel)?;
        let command = find_command(shared, &place, name)?;
        let mut resolved = Map::new();
        let options: Vec<Value> = options
            .into_iter()
            .map(|(name, value)| option_json(shared, name, value, &mut resolved))
            .collect();
        let data = json!({
            "id": command["id"], "name": name, "type": command["type"], "options": options,
            "resolved": Value::Object(resolved),
        });
        self.deliver(user, &place, None, COMMAND, |parts| {
            fixtures::command_interaction(parts, data)
        })
    }

    /// `user` clicks the button `custom_id` on a message the simulator holds.
    pub fn click_button(
        &self,
        user: UserId,
        message: MessageId,
        custom_id: &str,
    ) -> Result<Interaction, SimError> {
        let shared = &self.shared;
        let stored = shared
            .world()
            .messages
            .get(&message.get())
            .cloned()
            .ok_or(SimError::UnknownMessage(message.get()))?;
        if !has_enabled_button(&stored, custom_id) {
            return Err(SimError::NoSuchButton(custom_id.to_owned()));
        }
        check_visible(shared, &stored, user)?;
        let place = channel_record(shared, ChannelId::new(message_channel(&stored)))?;
        self.deliver(user, &place, Some(message.get()), COMPONENT, |parts| {
            fixtures::button_interaction(parts, custom_id, &stored)
        })
    }

    /// `user` sends `text` to the bot in their DM channel (MESSAGE_CREATE).
    pub fn dm_text(&self, user: UserId, text: &str) -> Result<MessageId, SimError> {
        let channel = self.dm_channel(user)?;
        let author = user_json(&self.shared, user)?;
        let id = self.shared.snowflake();
        let timestamp = self.shared.clock.timestamp();
        let body = json!({ "content": text });
        let message = fixtures::message(MessageParts {
            id,
            channel_id: channel.get(),
            guild_id: None,
            author: &author,
            timestamp: &timestamp,
            body: &body,
            attachments: Vec::new(),
            application_id: None,
        });
        self.shared.world().messages.insert(id, message.clone());
        dispatch(&self.shared, "MESSAGE_CREATE", message)
            .then_some(MessageId::new(id))
            .ok_or(SimError::BotNotConnected)
    }

    /// `user` reacts to a message with a unicode `emoji` (MESSAGE_REACTION_ADD).
    pub fn add_reaction(
        &self,
        user: UserId,
        message: MessageId,
        emoji: &str,
    ) -> Result<(), SimError> {
        let author = user_json(&self.shared, user)?;
        let stored = self
            .shared
            .world()
            .messages
            .get(&message.get())
            .cloned()
            .ok_or(SimError::UnknownMessage(message.get()))?;
        let joined_at = self.shared.clock.timestamp();
        let reaction = fixtures::reaction_add(&author, &stored, emoji, &joined_at);
        dispatch(&self.shared, "MESSAGE_REACTION_ADD", reaction)
            .then_some(())
            .ok_or(SimError::BotNotConnected)
    }

    /// Records a new interaction of `kind` (2 command, 3 component, 5 modal submission),
    /// dispatches INTERACTION_CREATE, and starts its 3 s watch.
    pub(super) fn deliver(
        &self,
        user: UserId,
        place: &ChannelRecord,
        source_message: Option<u64>,
        kind: u8,
        build: impl FnOnce(&InteractionParts<'_>) -> Value,
    ) -> Result<Interaction, SimError> {
        let shared = &self.shared;
        let user_value = user_json(shared, user)?;
        let (channel_value, application_id, user_install_only) = {
            let world = shared.world();
            let user_install_only = !world.bot_can_access(place);
            let installed = world
                .users
                .get(&user.get())
                .is_some_and(|u| u.installed_app);
            if user_install_only && !installed {
                return Err(SimError::NotInstalled(user.get()));
            }
            (
                world.channel_json(place),
                world.application_id,
                user_install_only,
            )
        };
        let id = shared.snowflake();
        let token = format!("simulated-interaction-token-{id}");
        let joined_at = shared.clock.timestamp();
        let parts = InteractionParts {
            id,
            application_id,
            token: &token,
            channel: &channel_value,
            guild_id: place.guild_id(),
            user: &user_value,
            member_joined_at: &joined_at,
            attachment_size_limit: shared.config.attachment_size_limit,
            context: place.context(),
            user_install_only,
        };
        let payload = build(&parts);
        let record = InteractionRecord {
            id,
            channel_id: place.id,
            user_id: user.get(),
            created_at: shared.clock.elapsed(),
            answered_at: None,
            reply: Value::Null,
            status: InteractionStatus::Pending,
            original: None,
            source_message,
            kind,
            modal_submitted: false,
        };
        shared.world().interactions.insert(token.clone(), record);
        if !dispatch(shared, "INTERACTION_CREATE", payload) {
            return Err(SimError::BotNotConnected);
        }
        self.keep_watcher(tokio::spawn(watch_deadline(
            self.shared.clone(),
            token.clone(),
        )));
        Ok(Interaction {
            id: InteractionId::new(id),
            token,
            channel_id: ChannelId::new(place.id),
        })
    }
}

/// Marks the interaction failed once 3 s of simulator time pass without a callback.
async fn watch_deadline(shared: std::sync::Arc<Shared>, token: String) {
    loop {
        let now = shared.clock.elapsed();
        let failed_id = {
            let mut world = shared.world();
            let Some(record) = world.interactions.get_mut(&token) else {
                return;
            };
            match record.status {
                InteractionStatus::Pending
                    if now.saturating_sub(record.created_at) > CALLBACK_DEADLINE =>
                {
                    record.status = InteractionStatus::Failed;
                    Some(record.id)
                }
                InteractionStatus::Pending => None,
                _ => return,
            }
        };
        if let Some(id) = failed_id {
            shared.note(super::waits::failed_note(id));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Interaction types as Discord numbers them.
pub(super) const COMMAND: u8 = 2;
pub(super) const COMPONENT: u8 = 3;
pub(super) const MODAL_SUBMIT: u8 = 5;

/// Discord's "ephemeral" message flag.
const EPHEMERAL: u64 = 64;

pub(super) fn message_channel(message: &Value) -> u64 {
    message["channel_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

/// An ephemeral message is shown only to the user whose interaction it answered: nobody else
/// can see (let alone use) its components.
pub(super) fn check_visible(
    shared: &Shared,
    message: &Value,
    user: UserId,
) -> Result<(), SimError> {
    if message["flags"].as_u64().unwrap_or(0) & EPHEMERAL == 0 {
        return Ok(());
    }
    let id: u64 = message["id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let world = shared.world();
    let owner = world
        .interactions
        .values()
        .find(|r| r.original == Some(id))
        .map(|r| r.user_id);
    match owner {
        Some(owner) if owner == user.get() => Ok(()),
        _ => Err(SimError::NotVisible(id)),
    }
}

pub(super) fn channel_record(
    shared: &Shared,
    channel: ChannelId,
) -> Result<ChannelRecord, SimError> {
    shared
        .world()
        .channels
        .get(&channel.get())
        .cloned()
        .ok_or(SimError::UnknownChannel(channel.get()))
}

pub(super) fn user_json(shared: &Shared, user: UserId) -> Result<Value, SimError> {
    shared
        .world()
        .users
        .get(&user.get())
        .map(|u| u.json())
        .ok_or(SimError::UnknownUser(user.get()))
}

/// The registered command `name` usable in `place`: guild commands first, then global ones,
/// refusing contexts the command does not allow (0 = guild, 1 = bot DM, 2 = group DM), and
/// places the bot is not in unless the command is user-installable (integration type 1).
fn find_command(shared: &Shared, place: &ChannelRecord, name: &str) -> Result<Value, SimError> {
    let world = shared.world();
    let guild_commands = place
        .guild_id()
        .and_then(|g| world.guild_commands.get(&g))
        .into_iter()
        .flatten();
    let command = guild_commands
        .chain(world.global_commands.iter())
        .find(|c| c["name"] == name)
        .cloned()
        .ok_or_else(|| SimError::UnknownCommand(name.to_owned()))?;
    let context = place.context();
    let in_context = command["contexts"]
        .as_array()
        .is_none_or(|list| list.contains(&json!(context)));
    let user_installable = command["integration_types"]
        .as_array()
        .is_some_and(|list| list.contains(&json!(1)));
    let allowed = in_context && (world.bot_can_access(place) || user_installable);
    allowed
        .then_some(command)
        .ok_or_else(|| SimError::NotAllowedHere(name.to_owned()))
}

fn option_json(
    shared: &Shared,
    name: &str,
    value: OptionValue,
    resolved: &mut Map<String, Value>,
) -> Value {
    let (kind, value) = match value {
        OptionValue::String(s) => (3, json!(s)),
        OptionValue::Integer(i) => (4, json!(i)),
        OptionValue::Boolean(b) => (5, json!(b)),
        OptionValue::Number(n) => (10, json!(n)),
        OptionValue::User(user) => {
            let user_value = shared
                .world()
                .users
                .get(&user.get())
                .map(|u| u.json())
                .unwrap_or_default();
            insert_resolved(resolved, "users", user.get(), user_value);
            (6, json!(user.get().to_string()))
        }
        OptionValue::Subcommand(options) => {
            let options: Vec<Value> = options
                .into_iter()
                .map(|(name, value)| option_json(shared, &name, value, resolved))
                .collect();
            return json!({ "name": name, "type": 1, "options": options });
        }
        OptionValue::Attachment(upload) => {
            let id = shared.snowflake();
            let url = shared.attachment_url(id, &upload.filename);
            let attachment = fixtures::attachment(
                id,
                &upload.filename,
                upload.bytes.len(),
                &url,
                &upload.content_type,
            );
            let file = StoredFile {
                filename: upload.filename,
                content_type: upload.content_type,
                bytes: upload.bytes.into(),
            };
            shared.world().files.insert(id, file);
            insert_resolved(resolved, "attachments", id, attachment);
            (11, json!(id.to_string()))
        }
    };
    json!({ "name": name, "type": kind, "value": value })
}

fn insert_resolved(resolved: &mut Map<String, Value>, kind: &str, id: u64, value: Value) {
    let entry = resolved.entry(kind).or_insert_with(|| json!({}));
    entry[id.to_string()] = value;
}

fn has_enabled_button(message: &Value, custom_id: &str) -> bool {
    let rows = message["components"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    rows.iter()
        .flat_map(|row| {
            row["components"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
        })
        .any(|c| c["type"] == 2 && c["custom_id"] == custom_id && c["disabled"] != true)
}
