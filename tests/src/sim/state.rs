//! The simulated world: users, guilds, channels, messages, interactions, files, and the
//! gateway session, all behind one mutex.
//!
//! A plain `std::sync::Mutex` is enough: every critical section is a few map operations and
//! never awaits. Whenever the transcript grows, `changed` ticks so waiting tests re-check.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::clock::SimClock;
use super::faults::FaultRule;
use super::fixtures;
use super::ledger::MessageEvent;
use super::transcript::Entry;

/// Discord's epoch (2015-01-01) in Unix milliseconds, for snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

pub(crate) struct Shared {
    pub world: Mutex<World>,
    /// Held across "look up the nonce, create the message, remember the nonce", so two
    /// concurrent posts with the same nonce cannot both create a message.
    pub nonce_gate: Mutex<()>,
    pub clock: SimClock,
    pub changed: watch::Sender<u64>,
    pub config: super::SimConfig,
    /// `http://127.0.0.1:PORT`, known once the listener is bound.
    pub base: String,
}

impl Shared {
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends to the transcript and wakes waiters.
    pub(crate) fn record(&self, entry: Entry) {
        self.world().transcript.push(entry);
        self.changed.send_modify(|n| *n += 1);
    }

    pub(crate) fn note(&self, text: impl Into<String>) {
        self.record(Entry::Note(text.into()));
    }

    /// A fresh snowflake: timestamp bits from the simulator clock, a counter below.
    pub(crate) fn snowflake(&self) -> u64 {
        let millis = self.clock.unix_millis().saturating_sub(DISCORD_EPOCH_MS);
        let mut world = self.world();
        world.counter += 1;
        (millis << 22) | (world.counter & 0x3F_FFFF)
    }

    pub(crate) fn attachment_url(&self, id: u64, filename: &str) -> String {
        format!("{}/attachments/{id}/{filename}", self.base)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct UserRecord {
    pub id: u64,
    pub name: String,
    pub bot: bool,
    /// A member of the guilds the bot is in (users from `add_user` are).
    pub shares_guild: bool,
    /// Installed the app to their account (user install), so it works wherever they are.
    pub installed_app: bool,
}

impl UserRecord {
    pub(crate) fn json(&self) -> Value {
        fixtures::user(self.id, &self.name, self.bot)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct GuildRecord {
    pub id: u64,
    pub name: String,
    pub owner_id: u64,
    pub channels: Vec<u64>,
    /// False for a server where only users installed the app: no GUILD_CREATE, and the bot's
    /// own channel endpoints there answer 403 Missing Access.
    pub bot_member: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    Guild(u64),
    /// The DM between the bot and this user.
    Dm(u64),
    /// A group DM among users (recipients in the record); the bot is never in it.
    GroupDm,
}

#[derive(Clone, Debug)]
pub(crate) struct ChannelRecord {
    pub id: u64,
    pub name: String,
    pub kind: ChannelKind,
    /// The members of a group DM (empty otherwise).
    pub recipients: Vec<u64>,
}

impl ChannelRecord {
    pub(crate) fn guild_id(&self) -> Option<u64> {
        match self.kind {
            ChannelKind::Guild(id) => Some(id),
            ChannelKind::Dm(_) | ChannelKind::GroupDm => None,
        }
    }

    /// Discord's interaction context type: 0 guild, 1 bot DM, 2 private channel (group DM).
    pub(crate) fn context(&self) -> u8 {
        match self.kind {
            ChannelKind::Guild(_) => 0,
            ChannelKind::Dm(_) => 1,
            ChannelKind::GroupDm => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum InteractionStatus {
    Pending,
    /// Answered with this callback type.
    Answered(u8),
    /// No callback within 3 s: the user saw "The application did not respond".
    Failed,
}

#[derive(Clone, Debug)]
pub(crate) struct InteractionRecord {
    pub id: u64,
    pub channel_id: u64,
    pub user_id: u64,
    pub created_at: Duration,
    /// When the first accepted callback arrived (simulator clock).
    pub answered_at: Option<Duration>,
    /// The accepted callback's `data` (`Null` when none).
    pub reply: Value,
    pub status: InteractionStatus,
    /// The message a type 4/5 callback created (the `@original`), or for a component
    /// interaction answered with 6/7, the message the button sits on.
    pub original: Option<u64>,
    /// For component interactions: the message that carried the button (for a modal
    /// submission, the message the modal was opened from).
    pub source_message: Option<u64>,
    /// Discord's interaction type: 2 command, 3 component, 5 modal submission.
    pub kind: u8,
    /// For an interaction answered with a modal (9): the user has submitted it, closing it.
    pub modal_submitted: bool,
}

pub(crate) struct StoredFile {
    pub filename: String,
    pub content_type: String,
    pub bytes: bytes::Bytes,
}

/// One frame for the live gateway connection to send, or an order to hang up.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Value),
    Close(u16),
}

pub(crate) struct Session {
    pub id: String,
    pub seq: u64,
    /// The intents bitfield the bot identified with.
    pub intents: u64,
    /// Every dispatch of this session, for replay on RESUME.
    pub sent: Vec<Value>,
    /// The shard the session identified as: `[shard_id, num_shards]` (`[0, 1]` unsharded).
    pub shard: [u32; 2],
    /// The connection that identified or resumed it, if one is open.
    pub live: Option<mpsc::UnboundedSender<Outgoing>>,
}

impl Session {
    /// Whether Discord sends this session the events of `guild` (`None`: DMs, shard 0).
    pub fn receives(&self, guild: Option<u64>) -> bool {
        self.shard[0] == fixtures::shard_of(guild, self.shard[1])
    }
}

#[derive(Default)]
pub(crate) struct GatewayState {
    /// One session per shard the bot identified, by `[shard_id, num_shards]`.
    pub sessions: BTreeMap<[u32; 2], Session>,
    /// Open connections whose session the simulator forgot: they carry nothing until they
    /// identify again.
    pub forgotten: Vec<mpsc::UnboundedSender<Outgoing>>,
    pub connections: u64,
}

#[derive(Default)]
pub(crate) struct World {
    pub counter: u64,
    pub bot: Option<UserRecord>,
    pub application_id: u64,
    pub users: BTreeMap<u64, UserRecord>,
    pub guilds: BTreeMap<u64, GuildRecord>,
    pub channels: BTreeMap<u64, ChannelRecord>,
    pub messages: BTreeMap<u64, Value>,
    pub interactions: HashMap<String, InteractionRecord>,
    pub files: HashMap<u64, StoredFile>,
    pub global_commands: Vec<Value>,
    pub guild_commands: HashMap<u64, Vec<Value>>,
    pub commands_registered: bool,
    pub transcript: Vec<Entry>,
    /// Every creation and edit of a message, in order, with whom it pinged.
    pub message_log: Vec<MessageEvent>,
    /// Channel-message nonces: (author, nonce) -> (message, when), for `enforce_nonce`.
    pub nonces: HashMap<(u64, String), (u64, Duration)>,
    pub faults: Vec<FaultRule>,
    pub gateway: GatewayState,
}

impl World {
    pub(crate) fn bot(&self) -> &UserRecord {
        self.bot.as_ref().expect("the bot user exists from start")
    }

    /// The guilds the bot is a member of (READY and GUILD_CREATE name only these).
    pub(crate) fn bot_guild_ids(&self) -> Vec<u64> {
        self.guilds
            .values()
            .filter(|g| g.bot_member)
            .map(|g| g.id)
            .collect()
    }

    pub(crate) fn dm_channel_of(&self, user_id: u64) -> Option<u64> {
        self.channels
            .values()
            .find(|c| c.kind == ChannelKind::Dm(user_id))
            .map(|c| c.id)
    }

    /// Whether the bot's own channel endpoints reach this channel: its guilds and its DMs, not
    /// group DMs or servers where only users installed the app.
    pub(crate) fn bot_can_access(&self, channel: &ChannelRecord) -> bool {
        match channel.kind {
            ChannelKind::Guild(guild) => self.guilds.get(&guild).is_some_and(|g| g.bot_member),
            ChannelKind::Dm(_) => true,
            ChannelKind::GroupDm => false,
        }
    }

    /// The channel object Discord puts in interactions and DM-channel answers.
    pub(crate) fn channel_json(&self, channel: &ChannelRecord) -> Value {
        match channel.kind {
            ChannelKind::GroupDm => {
                let recipients: Vec<Value> = channel
                    .recipients
                    .iter()
                    .filter_map(|id| self.users.get(id))
                    .map(UserRecord::json)
                    .collect();
                let owner = channel.recipients.first().copied().unwrap_or(0);
                fixtures::group_dm_channel(channel.id, &channel.name, owner, recipients)
            }
            ChannelKind::Guild(guild_id) => {
                fixtures::guild_channel(channel.id, guild_id, &channel.name)
            }
            ChannelKind::Dm(user_id) => {
                let recipient = self
                    .users
                    .get(&user_id)
                    .map(UserRecord::json)
                    .unwrap_or_default();
                fixtures::dm_channel(channel.id, &recipient)
            }
        }
    }
}
