//! What scripted users do with forms: pick values in a string select menu, and fill in and
//! submit a modal the bot opened.
//!
//! Discord's client only lets a user send what the component allows, so anything else (a value
//! the menu does not offer, too many values, an empty required field, text over `max_length`)
//! is refused here with a [`SimError`] instead of reaching the bot.

use std::collections::HashSet;

use serde_json::{json, Value};
use serenity::all::{ChannelId, Message, MessageId, UserId};

use super::actions::{channel_record, check_visible, message_channel, COMPONENT, MODAL_SUBMIT};
use super::components::{input_bounds, select_bounds, STRING_SELECT, TEXT_INPUT};
use super::fixtures;
use super::state::InteractionStatus;
use super::{Interaction, SimError, Simulator};

/// The interaction callback type that opens a modal.
const MODAL: u8 = 9;

impl Simulator {
    /// `user` picks `values` (option values, in the order picked) in the string select
    /// `custom_id` on a message the simulator holds.
    pub fn select_values(
        &self,
        user: UserId,
        message: MessageId,
        custom_id: &str,
        values: &[&str],
    ) -> Result<Interaction, SimError> {
        let shared = &self.shared;
        let stored = shared
            .world()
            .messages
            .get(&message.get())
            .cloned()
            .ok_or(SimError::UnknownMessage(message.get()))?;
        let select =
            find_select(&stored, custom_id).ok_or(SimError::NoSuchSelect(custom_id.to_owned()))?;
        check_choice(&select, values).map_err(SimError::BadSelection)?;
        check_visible(shared, &stored, user)?;
        let place = channel_record(shared, ChannelId::new(message_channel(&stored)))?;
        let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        self.deliver(user, &place, Some(message.get()), COMPONENT, |parts| {
            fixtures::select_interaction(parts, custom_id, &values, &stored)
        })
    }

    /// The message the bot's callback to `interaction` created or updated (its `@original`),
    /// as the simulator holds it now.
    pub fn response_message(&self, interaction: &Interaction) -> Option<Message> {
        let id = self
            .shared
            .world()
            .interactions
            .get(&interaction.token)?
            .original?;
        self.message(MessageId::new(id))
    }

    /// The modal the bot opened in answer to `opened`, while it is open (`None` once submitted
    /// or when the bot answered otherwise).
    pub fn open_modal(&self, opened: &Interaction) -> Option<Value> {
        let world = self.shared.world();
        let record = world.interactions.get(&opened.token)?;
        (record.status == InteractionStatus::Answered(MODAL) && !record.modal_submitted)
            .then(|| record.reply.clone())
    }

    /// `user` submits the modal the bot opened in answer to `opened`, having typed `values`
    /// (text input custom_id, text) into it; the other inputs keep their pre-filled value.
    pub fn submit_modal(
        &self,
        user: UserId,
        opened: &Interaction,
        values: &[(&str, &str)],
    ) -> Result<Interaction, SimError> {
        let shared = &self.shared;
        let (modal, channel_id, source_message) = {
            let world = shared.world();
            let record = world
                .interactions
                .get(&opened.token)
                .filter(|r| r.user_id == user.get())
                .ok_or(SimError::NoOpenModal)?;
            if record.status != InteractionStatus::Answered(MODAL) || record.modal_submitted {
                return Err(SimError::NoOpenModal);
            }
            (
                record.reply.clone(),
                record.channel_id,
                record.source_message,
            )
        };
        let rows = filled_rows(&modal, values).map_err(SimError::BadModalInput)?;
        let message = source_message.and_then(|id| shared.world().messages.get(&id).cloned());
        let place = channel_record(shared, ChannelId::new(channel_id))?;
        let custom_id = modal["custom_id"].as_str().unwrap_or_default().to_owned();
        let submitted = self.deliver(user, &place, source_message, MODAL_SUBMIT, |parts| {
            fixtures::modal_submit_interaction(parts, &custom_id, rows, message.as_ref())
        })?;
        if let Some(record) = shared.world().interactions.get_mut(&opened.token) {
            record.modal_submitted = true;
        }
        Ok(submitted)
    }
}

fn children(row: &Value) -> &[Value] {
    row["components"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn find_select(message: &Value, custom_id: &str) -> Option<Value> {
    children(message)
        .iter()
        .flat_map(children)
        .find(|c| {
            c["type"] == STRING_SELECT && c["custom_id"] == custom_id && c["disabled"] != true
        })
        .cloned()
}

/// Whether `values` is a choice the select offers: known, distinct, within min/max values.
fn check_choice(select: &Value, values: &[&str]) -> Result<(), String> {
    let options = select["options"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let offered: HashSet<&str> = options.iter().filter_map(|o| o["value"].as_str()).collect();
    if let Some(unknown) = values.iter().find(|v| !offered.contains(**v)) {
        return Err(format!("{unknown:?} is not one of its options"));
    }
    if values.iter().collect::<HashSet<_>>().len() != values.len() {
        return Err("a value is picked twice".to_owned());
    }
    let (min, max) = select_bounds(select);
    let count = values.len() as u64;
    if count < min || count > max {
        return Err(format!("{count} values picked; it takes {min} to {max}"));
    }
    Ok(())
}

/// The modal's rows as a submission carries them, `{type: 4, custom_id, value}` each, after
/// checking what the user typed against each input's rules.
fn filled_rows(modal: &Value, typed: &[(&str, &str)]) -> Result<Vec<Value>, String> {
    let inputs: Vec<&Value> = children(modal).iter().flat_map(children).collect();
    if let Some((unknown, _)) = typed
        .iter()
        .find(|(id, _)| !inputs.iter().any(|i| i["custom_id"] == *id))
    {
        return Err(format!("the modal has no field {unknown:?}"));
    }
    inputs
        .into_iter()
        .map(|input| {
            let id = input["custom_id"].as_str().unwrap_or_default();
            let value = typed
                .iter()
                .find(|(typed_id, _)| *typed_id == id)
                .map(|(_, text)| *text)
                .or_else(|| input["value"].as_str())
                .unwrap_or_default();
            let length = value.chars().count() as u64;
            let required = input["required"].as_bool().unwrap_or(true);
            let (min, max) = input_bounds(input);
            if length == 0 && required {
                return Err(format!("{id:?} is required"));
            }
            if length > 0 && (length < min || length > max) {
                return Err(format!(
                    "{id:?} takes {min} to {max} characters, not {length}"
                ));
            }
            let component = json!({ "type": TEXT_INPUT, "custom_id": id, "value": value });
            Ok(json!({ "type": 1, "components": [component] }))
        })
        .collect()
}
