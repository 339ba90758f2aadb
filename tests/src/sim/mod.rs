//! The simulator: the public handle tests hold, wiring the REST server, the gateway and the
//! simulated world together. Scripted user actions live in `actions`, awaiting in `waits`.

mod actions;
mod clock;
mod components;
pub mod faults;
pub mod fixtures;
mod forms;
mod gateway;
pub mod ledger;
pub mod mentions;
mod rest;
mod rules;
mod state;
pub mod transcript;
mod waits;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serenity::all::{ApplicationId, ChannelId, GuildId, Message, MessageId, UserId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use actions::{Interaction, OptionValue, Upload};
pub use waits::{Callback, WaitError};

use clock::SimClock;
use faults::{Fault, FaultRule};
use state::{ChannelKind, ChannelRecord, GuildRecord, Outgoing, Shared, UserRecord, World};
use transcript::Transcript;

/// How a simulator starts. `Default` is what Discord does, with a short heartbeat so tests see
/// heartbeats quickly.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The bot token the simulator accepts. Fake, never a real one.
    pub token: String,
    pub heartbeat_interval: Duration,
    /// Per-file upload limit, also sent to the bot as `attachment_size_limit`.
    pub attachment_size_limit: usize,
    /// The bot user's name.
    pub bot_name: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token: "simulated.bot-token.not-a-real-discord-token".to_owned(),
            heartbeat_interval: Duration::from_millis(1000),
            attachment_size_limit: 10 * 1024 * 1024,
            bot_name: "Imagine".to_owned(),
        }
    }
}

/// A scripted action Discord itself would not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    UnknownUser(u64),
    UnknownChannel(u64),
    UnknownMessage(u64),
    /// No registered command by that name for that place.
    UnknownCommand(String),
    /// The command's `contexts` do not include this kind of place (guild or DM).
    NotAllowedHere(String),
    NoSuchButton(String),
    /// The bot has no gateway session, so nothing can be delivered to it.
    BotNotConnected,
    /// The user shares no server with the bot and did not install the app.
    CannotDm(u64),
    /// A command in a place only a user install reaches (a server without the bot, a group
    /// DM), by a user who has not installed the app.
    NotInstalled(u64),
    /// The message has no enabled string select with that custom_id.
    NoSuchSelect(String),
    /// A choice the select menu does not allow (unknown value, repeated value, too few or
    /// too many values).
    BadSelection(String),
    /// No modal from that interaction is open for this user (none was shown, or it was
    /// already submitted).
    NoOpenModal,
    /// A modal submission Discord's client would not send (unknown field, a required field
    /// empty, a value outside its length limits).
    BadModalInput(String),
    /// The message is ephemeral and was shown to someone else.
    NotVisible(u64),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::UnknownUser(id) => write!(f, "no user {id} in the simulator"),
            SimError::UnknownChannel(id) => write!(f, "no channel {id} in the simulator"),
            SimError::UnknownMessage(id) => write!(f, "no message {id} in the simulator"),
            SimError::UnknownCommand(name) => {
                write!(f, "the bot registered no command /{name} here")
            }
            SimError::NotAllowedHere(name) => write!(f, "/{name} is not allowed in this context"),
            SimError::NoSuchButton(id) => write!(f, "the message has no enabled button {id:?}"),
            SimError::BotNotConnected => write!(f, "the bot has no gateway session"),
            SimError::CannotDm(id) => write!(f, "the bot cannot open a DM with user {id}"),
            SimError::NoSuchSelect(id) => write!(f, "the message has no enabled select {id:?}"),
            SimError::BadSelection(why) => write!(f, "the select menu does not allow this: {why}"),
            SimError::NoOpenModal => write!(f, "no modal from that interaction is open"),
            SimError::BadModalInput(why) => write!(f, "the modal cannot be submitted: {why}"),
            SimError::NotVisible(id) => {
                write!(f, "message {id} is ephemeral and was shown to someone else")
            }
            SimError::NotInstalled(id) => write!(
                f,
                "user {id} has not installed the app, so its commands are not offered here"
            ),
        }
    }
}

impl std::error::Error for SimError {}

/// A running Discord simulator on 127.0.0.1. Dropping it stops the server.
pub struct Simulator {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    watchers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.server.abort();
        for watcher in self
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            watcher.abort();
        }
    }
}

impl Simulator {
    pub async fn start() -> Self {
        Self::start_with(SimConfig::default()).await
    }

    /// Binds 127.0.0.1 on an OS-chosen port and starts serving.
    pub async fn start_with(config: SimConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            world: Mutex::new(World::default()),
            nonce_gate: Mutex::new(()),
            clock: SimClock::new(),
            changed: watch::channel(0).0,
            base: format!("http://{address}"),
            config,
        });
        let bot_id = shared.snowflake();
        {
            let mut world = shared.world();
            let bot = UserRecord {
                id: bot_id,
                name: shared.config.bot_name.clone(),
                bot: true,
                shares_guild: true,
                installed_app: false,
            };
            world.users.insert(bot_id, bot.clone());
            world.bot = Some(bot);
            world.application_id = bot_id;
        }
        let router = rest::router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            shared,
            server,
            watchers: Mutex::new(Vec::new()),
        }
    }

    /// What the bot uses instead of `https://discord.com` (`HttpBuilder::proxy`).
    pub fn api_base(&self) -> &str {
        &self.shared.base
    }

    /// A serenity `Http` aimed at this simulator, as the bot must build it: proxy base, rate
    /// limiter off (serenity ignores the proxy otherwise), no HTTP(S)_PROXY from the env, and the
    /// application id preset (a client learns it from READY; tests calling REST directly need it).
    pub fn bot_http(&self) -> serenity::http::Http {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        serenity::http::HttpBuilder::new(self.token())
            .client(client)
            .proxy(self.api_base())
            .application_id(self.application_id())
            .ratelimiter_disabled(true)
            .build()
    }

    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    pub fn application_id(&self) -> ApplicationId {
        ApplicationId::new(self.shared.world().application_id)
    }

    pub fn bot_user_id(&self) -> UserId {
        UserId::new(self.shared.world().bot().id)
    }

    /// Adds a guild the bot is in. If the bot is already connected it gets GUILD_CREATE now,
    /// otherwise on IDENTIFY.
    pub fn add_guild(&self, name: &str) -> GuildId {
        let id = self.insert_guild(name, true);
        gateway::dispatch_guild_create(&self.shared, id);
        GuildId::new(id)
    }

    /// Adds a server the bot is not a member of, where users who installed the app to their
    /// account can still run its commands (a user-installed context): the bot gets no
    /// GUILD_CREATE for it, and its channel endpoints there answer 403 Missing Access (50001).
    /// Only the interaction's own webhook (callback, `@original`, follow-ups) reaches users.
    pub fn add_guild_without_bot(&self, name: &str) -> GuildId {
        GuildId::new(self.insert_guild(name, false))
    }

    /// Adds a guild the bot is in whose id puts it on `shard` of `num_shards` (Discord sends
    /// its events only to that shard).
    pub fn add_guild_on_shard(&self, name: &str, shard: u32, num_shards: u32) -> GuildId {
        assert!(
            shard < num_shards,
            "shard {shard} of {num_shards} does not exist"
        );
        // A fresh snowflake with its time part moved back (by under num_shards ms) onto the
        // shard; the low bits (the counter) keep it unique.
        let fresh = self.shared.snowflake();
        let millis = fresh >> 22;
        let total = u64::from(num_shards);
        let on_shard = millis - millis % total + u64::from(shard);
        let millis = if on_shard > millis {
            on_shard - total
        } else {
            on_shard
        };
        let id = (millis << 22) | (fresh & 0x3F_FFFF);
        self.insert_guild_with_id(id, name, true);
        gateway::dispatch_guild_create(&self.shared, id);
        GuildId::new(id)
    }

    fn insert_guild(&self, name: &str, bot_member: bool) -> u64 {
        let id = self.shared.snowflake();
        self.insert_guild_with_id(id, name, bot_member);
        id
    }

    fn insert_guild_with_id(&self, id: u64, name: &str, bot_member: bool) {
        let owner_id = self.shared.world().bot().id;
        let record = GuildRecord {
            id,
            name: name.to_owned(),
            owner_id,
            channels: Vec::new(),
            bot_member,
        };
        self.shared.world().guilds.insert(id, record);
    }

    /// Adds a group DM (channel type 3) among `users`. The bot is never a member: only users
    /// who installed the app can run its commands there (context 2), and the bot's channel
    /// endpoints answer 403 Missing Access.
    pub fn add_group_dm(&self, name: &str, users: &[UserId]) -> Result<ChannelId, SimError> {
        let mut world = self.shared.world();
        if let Some(unknown) = users.iter().find(|u| !world.users.contains_key(&u.get())) {
            return Err(SimError::UnknownUser(unknown.get()));
        }
        drop(world);
        let id = self.shared.snowflake();
        let record = ChannelRecord {
            id,
            name: name.to_owned(),
            kind: ChannelKind::GroupDm,
            recipients: users.iter().map(|u| u.get()).collect(),
        };
        world = self.shared.world();
        world.channels.insert(id, record);
        Ok(ChannelId::new(id))
    }

    /// Adds a text channel to a guild.
    pub fn add_channel(&self, guild: GuildId, name: &str) -> ChannelId {
        let id = self.shared.snowflake();
        let mut world = self.shared.world();
        let record = ChannelRecord {
            id,
            name: name.to_owned(),
            kind: ChannelKind::Guild(guild.get()),
            recipients: Vec::new(),
        };
        world.channels.insert(id, record);
        if let Some(guild) = world.guilds.get_mut(&guild.get()) {
            guild.channels.push(id);
        }
        ChannelId::new(id)
    }

    /// Adds a (human) user; users are members of every guild the bot is in.
    pub fn add_user(&self, name: &str) -> UserId {
        self.insert_user(name, true)
    }

    /// Adds a user who shares no server with the bot and has not installed the app: the bot
    /// cannot open a DM with them. [`Simulator::install_app`] changes the latter.
    pub fn add_stranger(&self, name: &str) -> UserId {
        self.insert_user(name, false)
    }

    fn insert_user(&self, name: &str, shares_guild: bool) -> UserId {
        let id = self.shared.snowflake();
        let record = UserRecord {
            id,
            name: name.to_owned(),
            bot: false,
            shares_guild,
            installed_app: false,
        };
        self.shared.world().users.insert(id, record);
        UserId::new(id)
    }

    /// The user installs the app to their account: its commands then work for them in servers
    /// without the bot and in group DMs, and the bot may open a DM with them.
    pub fn install_app(&self, user: UserId) -> Result<(), SimError> {
        let mut world = self.shared.world();
        let record = world
            .users
            .get_mut(&user.get())
            .ok_or(SimError::UnknownUser(user.get()))?;
        record.installed_app = true;
        Ok(())
    }

    /// The DM channel between the bot and `user`, opened on first use. Discord opens one only
    /// with users who share a server with the bot or installed the app.
    pub fn dm_channel(&self, user: UserId) -> Result<ChannelId, SimError> {
        if !self.shared.world().users.contains_key(&user.get()) {
            return Err(SimError::UnknownUser(user.get()));
        }
        rest::open_dm(&self.shared, user.get())
            .ok()
            .map(ChannelId::new)
            .ok_or(SimError::CannotDm(user.get()))
    }

    /// The simulator's clock: time since it started, plus every `advance_clock`. Interaction
    /// reports and message events are stamped with it.
    pub fn clock(&self) -> Duration {
        self.shared.clock.elapsed()
    }

    /// Moves the simulator's clock forward (for the 3 s and 15 min rules).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
        self.shared.note(format!("clock advanced by {by:?}"));
    }

    /// Makes the next `times` calls matching `method` and `pattern` (e.g. `POST /webhooks/*/*`,
    /// `*` = one segment, trailing `**` = the rest, method `*` = any) fail with `fault`.
    pub fn fail_route(&self, method: &str, pattern: &str, fault: Fault, times: usize) {
        self.shared
            .world()
            .faults
            .push(FaultRule::new(method, pattern, fault, times));
    }

    /// Like [`Simulator::fail_route`], but the rule fires only on requests that carry a
    /// finished result (two or more buttons and a file); queued and progress edits pass.
    pub fn fail_result_route(&self, method: &str, pattern: &str, fault: Fault, times: usize) {
        let rule = FaultRule::new(method, pattern, fault, times).for_results();
        self.shared.world().faults.push(rule);
    }

    /// Closes the bot's gateway connections, every shard's (close code 4000), so it must
    /// RESUME. Dispatches sent meanwhile are replayed on RESUME. Returns false when no
    /// connection was open.
    pub fn drop_gateway(&self) -> bool {
        let lives: Vec<_> = {
            let mut world = self.shared.world();
            let gateway = &mut world.gateway;
            let mut lives: Vec<_> = gateway.forgotten.drain(..).collect();
            lives.extend(gateway.sessions.values_mut().filter_map(|s| s.live.take()));
            lives
        };
        let mut closed = false;
        for tx in lives {
            closed |= tx
                .send(Outgoing::Close(gateway::CLOSE_UNKNOWN_ERROR))
                .is_ok();
        }
        closed
    }

    /// Forgets the gateway sessions: a later RESUME gets INVALID_SESSION and must re-identify.
    pub fn forget_session(&self) {
        let mut world = self.shared.world();
        let gateway = &mut world.gateway;
        let lives = std::mem::take(&mut gateway.sessions)
            .into_values()
            .filter_map(|s| s.live);
        gateway.forgotten.extend(lives);
        drop(world);
        self.shared.note("gateway session forgotten");
    }

    /// The shards (`[shard_id, num_shards]`) with a session whose connection is open now.
    pub fn connected_shards(&self) -> Vec<[u32; 2]> {
        let world = self.shared.world();
        let sessions = world.gateway.sessions.values();
        sessions
            .filter(|s| s.live.is_some())
            .map(|s| s.shard)
            .collect()
    }

    /// The shard Discord sends `guild`'s events to when the bot runs `num_shards` shards
    /// (`None`, DMs: shard 0).
    pub fn shard_of(guild: Option<GuildId>, num_shards: u32) -> u32 {
        fixtures::shard_of(guild.map(GuildId::get), num_shards)
    }

    /// How many WebSocket connections the bot has opened so far.
    pub fn gateway_connections(&self) -> u64 {
        self.shared.world().gateway.connections
    }

    /// A snapshot of everything recorded so far.
    pub fn transcript(&self) -> Transcript {
        Transcript {
            entries: self.shared.world().transcript.clone(),
        }
    }

    /// A message as the simulator holds it now.
    pub fn message(&self, id: MessageId) -> Option<Message> {
        let value = self.shared.world().messages.get(&id.get()).cloned()?;
        serde_json::from_value(value).ok()
    }

    /// The bytes behind an attachment URL the simulator handed out.
    pub fn file_bytes(&self, url: &str) -> Option<Vec<u8>> {
        let rest = url
            .strip_prefix(&self.shared.base)?
            .strip_prefix("/attachments/")?;
        let (id, filename) = rest.split_once('/')?;
        let world = self.shared.world();
        let file = world.files.get(&id.parse().ok()?)?;
        (file.filename == filename).then(|| file.bytes.to_vec())
    }

    fn keep_watcher(&self, task: JoinHandle<()>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|w| !w.is_finished());
        watchers.push(task);
    }
}
