//! Bookkeeping for storm tests: when each interaction was first answered (on the simulator's
//! clock, for the 3 s rule), every change to every bot message with whom it pinged, and from
//! those the deliveries of finished results, so a test can assert "every interaction answered
//! within 3 s" and "every job delivered exactly once".
//!
//! A delivery is a message that becomes a finished result: created as one (a channel post, a
//! follow-up, a callback message), or edited from something else into one. A result is known by
//! its buttons' custom_ids (they name the job), so editing the same `@original` again with the
//! same result is not a second delivery, while posting that result again is.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use serenity::all::{ChannelId, InteractionId, MessageId, UserId};

use super::mentions::Pings;
use super::state::{InteractionStatus, Shared};
use super::{Interaction, Simulator};

/// How a message changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    Edited,
}

/// One creation or edit of a bot message.
#[derive(Clone, Debug)]
pub struct MessageEvent {
    pub message_id: MessageId,
    pub channel_id: ChannelId,
    pub change: Change,
    /// The interaction whose token made the change (callback, follow-up, webhook edit); `None`
    /// for the bot's own channel endpoints.
    pub interaction: Option<InteractionId>,
    /// Simulator clock.
    pub at: Duration,
    /// The message as it stood after the change.
    pub message: Value,
    /// Whom this change pinged.
    pub pings: Pings,
}

/// A finished result reaching a user.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The result's button custom_ids, in order: which job's result this is.
    pub key: Vec<String>,
    pub event: MessageEvent,
}

impl Delivery {
    pub fn content(&self) -> &str {
        self.event.message["content"].as_str().unwrap_or("")
    }
}

/// What became of one interaction the simulator sent.
#[derive(Clone, Debug)]
pub struct InteractionReport {
    pub interaction: Interaction,
    pub user: UserId,
    /// Simulator clock when INTERACTION_CREATE went out.
    pub sent_at: Duration,
    /// Time to the first accepted callback, if one came.
    pub answered_after: Option<Duration>,
    /// The accepted callback's type.
    pub callback: Option<u8>,
    /// The accepted callback's `data` (`Null` when none).
    pub reply: Value,
    /// Discord gave up: the user saw "The application did not respond".
    pub failed: bool,
}

impl InteractionReport {
    pub fn answered_within(&self, limit: Duration) -> bool {
        self.answered_after.is_some_and(|after| after <= limit)
    }

    /// Answered with a message (or a "thinking" state) everyone in the channel sees.
    pub fn answered_publicly(&self) -> bool {
        let flags = self.reply["flags"].as_u64().unwrap_or(0);
        matches!(self.callback, Some(4 | 5 | 7)) && flags & 64 == 0
    }

    /// Answered with a message only the user sees.
    pub fn answered_privately(&self) -> bool {
        self.callback.is_some() && !self.answered_publicly()
    }

    /// The text of the callback's message, if it had one.
    pub fn reply_text(&self) -> &str {
        self.reply["content"].as_str().unwrap_or("")
    }
}

/// The default idea of a finished result: a message everyone sees (not ephemeral) with an
/// attachment and at least two buttons. A queued or progress message carries at most one
/// button (cancel) and a preview; a finished grid carries nine, a single image five or more.
pub fn looks_finished(message: &Value) -> bool {
    let ephemeral = message["flags"].as_u64().unwrap_or(0) & 64 != 0;
    let attached = message["attachments"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    !ephemeral && attached && button_ids(message).len() >= 2
}

/// Whether a request body (or a callback's) would show a finished result: at least two
/// buttons, and a file uploaded or an attachment named. The request-side twin of
/// [`looks_finished`], for faults that hit only deliveries.
pub(crate) fn carries_result(body: &Value, uploads: usize) -> bool {
    let message = match body.get("data") {
        Some(data) if body.get("type").is_some() => data,
        _ => body,
    };
    let named = message["attachments"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    button_ids(message).len() >= 2 && (uploads > 0 || named)
}

/// The custom_ids of a message's buttons, row by row.
pub fn button_ids(message: &Value) -> Vec<String> {
    let rows = message["components"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["custom_id"].as_str().map(str::to_owned))
        .collect()
}

impl Shared {
    /// Appends a change of a bot message to the log.
    pub(crate) fn log_message(
        &self,
        message: &Value,
        change: Change,
        interaction: Option<u64>,
        pings: Pings,
    ) {
        let id = |key: &str| {
            message[key]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(1)
        };
        let event = MessageEvent {
            message_id: MessageId::new(id("id")),
            channel_id: ChannelId::new(id("channel_id")),
            change,
            interaction: interaction.map(InteractionId::new),
            at: self.clock.elapsed(),
            message: message.clone(),
            pings,
        };
        self.world().message_log.push(event);
    }
}

impl Simulator {
    /// Every creation and edit of a bot message so far, in order.
    pub fn message_events(&self) -> Vec<MessageEvent> {
        self.shared.world().message_log.clone()
    }

    /// Deliveries of finished results by [`looks_finished`].
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries_where(looks_finished)
    }

    /// Deliveries of messages that `is_result` calls finished results.
    pub fn deliveries_where(&self, is_result: impl Fn(&Value) -> bool) -> Vec<Delivery> {
        let mut showing: HashMap<MessageId, Vec<String>> = HashMap::new();
        let mut deliveries = Vec::new();
        for event in self.message_events() {
            if !is_result(&event.message) {
                showing.remove(&event.message_id);
                continue;
            }
            let key = button_ids(&event.message);
            let before = showing.insert(event.message_id, key.clone());
            if event.change == Change::Created || before.as_ref() != Some(&key) {
                deliveries.push(Delivery { key, event });
            }
        }
        deliveries
    }

    /// Every interaction sent so far and what became of it, in the order they were sent.
    pub fn interaction_reports(&self) -> Vec<InteractionReport> {
        let world = self.shared.world();
        let mut reports: Vec<InteractionReport> = world
            .interactions
            .iter()
            .map(|(token, record)| InteractionReport {
                interaction: Interaction {
                    id: InteractionId::new(record.id),
                    token: token.clone(),
                    channel_id: ChannelId::new(record.channel_id),
                },
                user: UserId::new(record.user_id),
                sent_at: record.created_at,
                answered_after: record
                    .answered_at
                    .map(|at| at.saturating_sub(record.created_at)),
                callback: match record.status {
                    InteractionStatus::Answered(kind) => Some(kind),
                    _ => None,
                },
                reply: record.reply.clone(),
                failed: record.status == InteractionStatus::Failed,
            })
            .collect();
        reports.sort_by_key(|r| (r.sent_at, r.interaction.id));
        reports
    }

    /// The report for one interaction.
    pub fn interaction_report(&self, interaction: &Interaction) -> Option<InteractionReport> {
        self.interaction_reports()
            .into_iter()
            .find(|r| r.interaction.id == interaction.id)
    }
}
