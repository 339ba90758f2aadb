//! Awaiting what the bot did. Every wait searches the transcript, re-checking whenever it grows,
//! and fails after its timeout with a [`WaitError`] that prints the whole transcript.

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use serenity::all::{ChannelId, Message};

use super::transcript::{Entry, RestCall, Transcript};
use super::{Interaction, Simulator};

/// A wait that ran out of time (or found something unreadable), with the transcript so far.
pub struct WaitError {
    pub what: String,
    pub transcript: Transcript,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulator: gave up waiting for {}\n{}",
            self.what, self.transcript
        )
    }
}

// Debug prints the same readable text, so `.unwrap()` in a test shows the transcript.
impl fmt::Debug for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WaitError {}

/// The bot's answer to an interaction's callback route.
#[derive(Clone, Debug)]
pub struct Callback {
    /// 4 message, 5 deferred message, 6 deferred update, 7 update message, 9 modal.
    pub kind: u8,
    /// The callback's `data` (`Null` when it had none).
    pub data: Value,
}

pub(crate) fn failed_note(interaction_id: u64) -> String {
    format!("interaction {interaction_id} failed: no response within 3 s")
}

fn successful<'a>(entry: &'a Entry, method: &str, path: &str) -> Option<&'a RestCall> {
    entry
        .as_rest()
        .filter(|c| c.method == method && c.path == path && c.status < 300)
}

fn as_message(value: &Value) -> Option<Message> {
    serde_json::from_value(value.clone()).ok()
}

impl Simulator {
    /// Waits until `found` returns something for the transcript, or `timeout` passes.
    ///
    /// `found` runs while the simulator's state is locked: it must not call the simulator.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&[Entry]) -> Option<T>,
    ) -> Result<T, WaitError> {
        self.wait_until(what, timeout, |sim| found(&sim.shared.world().transcript))
            .await
    }

    /// Waits until `found` returns something, re-asking whenever the transcript grows. Unlike
    /// [`Simulator::wait_for`], `found` may call the simulator (reports, deliveries, messages).
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&Simulator) -> Option<T>,
    ) -> Result<T, WaitError> {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(value) = found(self) {
                return Ok(value);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(WaitError {
                    what: format!("{what} (after {timeout:?})"),
                    transcript: self.transcript(),
                });
            }
        }
    }

    /// Ready means: the bot identified (READY was sent) and registered its commands with a
    /// successful PUT, which poise does last in its setup.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), WaitError> {
        let path = format!("/applications/{}/commands", self.application_id());
        self.wait_for("READY and command registration", timeout, |entries| {
            let ready = entries.iter().any(|e| e.dispatch_name() == Some("READY"));
            let registered = entries
                .iter()
                .any(|e| successful(e, "PUT", &path).is_some());
            (ready && registered).then_some(())
        })
        .await
    }

    /// The interaction's accepted callback.
    pub async fn wait_callback(
        &self,
        interaction: &Interaction,
        timeout: Duration,
    ) -> Result<Callback, WaitError> {
        let path = format!(
            "/interactions/{}/{}/callback",
            interaction.id, interaction.token
        );
        self.wait_for(
            &format!("a callback to interaction {}", interaction.id),
            timeout,
            |entries| {
                let call = entries.iter().find_map(|e| successful(e, "POST", &path))?;
                Some(Callback {
                    kind: call.body["type"].as_u64().unwrap_or(0) as u8,
                    data: call.body["data"].clone(),
                })
            },
        )
        .await
    }

    /// The `n`-th (0-based) accepted follow-up message of the interaction.
    pub async fn wait_followup_n(
        &self,
        interaction: &Interaction,
        n: usize,
        timeout: Duration,
    ) -> Result<Message, WaitError> {
        let path = format!("/webhooks/{}/{}", self.application_id(), interaction.token);
        let what = format!("follow-up #{n} to interaction {}", interaction.id);
        self.wait_for(&what, timeout, |entries| {
            let call = entries
                .iter()
                .filter_map(|e| successful(e, "POST", &path))
                .nth(n)?;
            as_message(&call.response)
        })
        .await
    }

    /// The first accepted follow-up message of the interaction.
    pub async fn wait_followup(
        &self,
        interaction: &Interaction,
        timeout: Duration,
    ) -> Result<Message, WaitError> {
        self.wait_followup_n(interaction, 0, timeout).await
    }

    /// The first accepted edit of the interaction's `@original` response.
    pub async fn wait_edit(
        &self,
        interaction: &Interaction,
        timeout: Duration,
    ) -> Result<Message, WaitError> {
        let path = format!(
            "/webhooks/{}/{}/messages/@original",
            self.application_id(),
            interaction.token
        );
        self.wait_for(
            &format!("an edit of interaction {}'s response", interaction.id),
            timeout,
            |entries| {
                as_message(
                    &entries
                        .iter()
                        .find_map(|e| successful(e, "PATCH", &path))?
                        .response,
                )
            },
        )
        .await
    }

    /// The first message the bot posted through `POST /channels/{channel}/messages`.
    pub async fn wait_channel_message(
        &self,
        channel: ChannelId,
        timeout: Duration,
    ) -> Result<Message, WaitError> {
        let path = format!("/channels/{channel}/messages");
        self.wait_for(
            &format!("a bot message in channel {channel}"),
            timeout,
            |entries| {
                as_message(
                    &entries
                        .iter()
                        .find_map(|e| successful(e, "POST", &path))?
                        .response,
                )
            },
        )
        .await
    }

    /// Waits until the interaction has failed for want of a callback within 3 s.
    pub async fn wait_interaction_failed(
        &self,
        interaction: &Interaction,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let note = failed_note(interaction.id.get());
        self.wait_for(
            &format!("interaction {} to fail", interaction.id),
            timeout,
            |entries| {
                entries
                    .iter()
                    .any(|e| matches!(e, Entry::Note(text) if *text == note))
                    .then_some(())
            },
        )
        .await
    }

    /// Waits until the `count`-th RESUMED dispatch (1-based) went to the bot.
    pub async fn wait_resumed(&self, count: usize, timeout: Duration) -> Result<(), WaitError> {
        self.wait_for("the bot to resume its session", timeout, |entries| {
            (entries
                .iter()
                .filter(|e| e.dispatch_name() == Some("RESUMED"))
                .count()
                >= count)
                .then_some(())
        })
        .await
    }
}
