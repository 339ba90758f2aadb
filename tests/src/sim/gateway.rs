//! The gateway: one WebSocket per connection, speaking Discord's opcodes.
//!
//! HELLO on connect; IDENTIFY starts a session (READY, then GUILD_CREATE per guild); heartbeats
//! get ACKs; RESUME of a known session replays what the bot missed and ends with RESUMED, while
//! an unknown session gets INVALID_SESSION so the bot identifies afresh. Dispatches carry one
//! increasing sequence number per session and are kept for replay.
//!
//! Sharding as Discord does it: IDENTIFY may carry `shard: [shard_id, num_shards]` (none means
//! `[0, 1]`); a guild's events and interactions go only to the session of shard
//! `(guild_id >> 22) % num_shards`, DMs only to shard 0; READY echoes the shard and names only
//! its guilds. An impossible shard is closed with 4010 (Invalid shard), too few shards for the
//! bot's guilds (over 2,500 per shard) with 4011 (Sharding required). A second IDENTIFY of a
//! shard that has a live session replaces it: the older connection is told its session is
//! invalid (op 9), as two processes fighting over one shard see on Discord.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::fixtures::{self, GuildParts};
use super::state::{Outgoing, Session, Shared};
use super::transcript::{Direction, Entry};

/// Close code Discord uses for "unknown error, reconnect".
pub(crate) const CLOSE_UNKNOWN_ERROR: u16 = 4000;
const CLOSE_AUTHENTICATION_FAILED: u16 = 4004;
const CLOSE_INVALID_SHARD: u16 = 4010;
const CLOSE_SHARDING_REQUIRED: u16 = 4011;
/// Discord requires sharding past this many guilds per shard.
const MAX_GUILDS_PER_SHARD: usize = 2500;

pub(super) async fn upgrade(State(shared): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| connection(shared, socket))
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

async fn send(shared: &Shared, sink: &mut Sink, frame: Value) -> bool {
    let text = frame.to_string();
    shared.record(Entry::Gateway {
        direction: Direction::ToBot,
        frame,
    });
    sink.send(Message::Text(text.into())).await.is_ok()
}

async fn connection(shared: Arc<Shared>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    shared.world().gateway.connections += 1;
    let interval = shared.config.heartbeat_interval.as_millis() as u64;
    if !send(&shared, &mut sink, fixtures::hello(interval)).await {
        return;
    }
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let Some(Ok(message)) = incoming else { break };
                let text = match message {
                    Message::Text(text) => text.to_string(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                shared.record(Entry::Gateway { direction: Direction::FromBot, frame: frame.clone() });
                handle_frame(&shared, &tx, &frame);
            },
            outgoing = rx.recv() => match outgoing {
                Some(Outgoing::Frame(frame)) => {
                    if !send(&shared, &mut sink, frame).await {
                        break;
                    }
                },
                Some(Outgoing::Close(code)) => {
                    shared.note(format!("gateway closed by the simulator with code {code}"));
                    let frame = CloseFrame { code, reason: "simulated disconnect".into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                },
                None => break,
            },
        }
    }
    let mut world = shared.world();
    world.gateway.forgotten.retain(|l| !l.same_channel(&tx));
    for session in world.gateway.sessions.values_mut() {
        if session
            .live
            .as_ref()
            .is_some_and(|live| live.same_channel(&tx))
        {
            session.live = None;
        }
    }
}

fn handle_frame(shared: &Shared, tx: &mpsc::UnboundedSender<Outgoing>, frame: &Value) {
    match frame["op"].as_u64() {
        Some(1) => {
            let _ = tx.send(Outgoing::Frame(fixtures::heartbeat_ack()));
        }
        Some(2) => identify(shared, tx, &frame["d"]),
        Some(6) => resume(shared, tx, &frame["d"]),
        _ => {}
    }
}

fn token_matches(shared: &Shared, given: &str) -> bool {
    let token = shared.config.token.as_str();
    given == token || given.strip_prefix("Bot ") == Some(token)
}

/// IDENTIFY's `shard`: absent is `[0, 1]`; else two integers, `shard_id < num_shards`.
fn identified_shard(value: &Value) -> Result<[u32; 2], String> {
    if value.is_null() {
        return Ok([0, 1]);
    }
    let pair = value
        .as_array()
        .filter(|a| a.len() == 2)
        .and_then(|a| Some([a[0].as_u64()?, a[1].as_u64()?]))
        .ok_or_else(|| format!("shard {value} is not [shard_id, num_shards]"))?;
    match pair {
        [id, total] if total >= 1 && id < total && total <= u64::from(u32::MAX) => {
            Ok([id as u32, total as u32])
        }
        [id, total] => Err(format!("shard [{id}, {total}] does not exist")),
    }
}

fn identify(shared: &Shared, tx: &mpsc::UnboundedSender<Outgoing>, data: &Value) {
    if !token_matches(shared, data["token"].as_str().unwrap_or("")) {
        let _ = tx.send(Outgoing::Close(CLOSE_AUTHENTICATION_FAILED));
        return;
    }
    let shard = match identified_shard(&data["shard"]) {
        Ok(shard) => shard,
        Err(why) => {
            shared.note(format!("IDENTIFY refused: {why}"));
            let _ = tx.send(Outgoing::Close(CLOSE_INVALID_SHARD));
            return;
        }
    };
    let guilds = shared.world().bot_guild_ids().len();
    if guilds > MAX_GUILDS_PER_SHARD * shard[1] as usize {
        shared.note(format!(
            "IDENTIFY refused: {guilds} guilds need more than {} shards",
            shard[1]
        ));
        let _ = tx.send(Outgoing::Close(CLOSE_SHARDING_REQUIRED));
        return;
    }
    let session_id = format!("simulated-session-{}", shared.snowflake());
    let url = super::rest::gateway_url(shared);
    let (ready, guild_ids) = {
        let mut world = shared.world();
        let guild_ids: Vec<u64> = world
            .bot_guild_ids()
            .into_iter()
            .filter(|g| fixtures::shard_of(Some(*g), shard[1]) == shard[0])
            .collect();
        let ready = fixtures::ready(
            &world.bot().json(),
            world.application_id,
            &guild_ids,
            &session_id,
            &url,
            shard,
        );
        let intents = data["intents"].as_u64().unwrap_or(0);
        let session = Session {
            id: session_id,
            seq: 0,
            intents,
            sent: Vec::new(),
            shard,
            live: Some(tx.clone()),
        };
        world.gateway.forgotten.retain(|l| !l.same_channel(tx));
        let older = world.gateway.sessions.insert(shard, session);
        if let Some(live) = older.and_then(|s| s.live).filter(|l| !l.same_channel(tx)) {
            let _ = live.send(Outgoing::Frame(fixtures::invalid_session(false)));
        }
        (ready, guild_ids)
    };
    dispatch_to(shared, |s| s.shard == shard, "READY", ready);
    for guild_id in guild_ids {
        dispatch_guild_create(shared, guild_id);
    }
}

fn resume(shared: &Shared, tx: &mpsc::UnboundedSender<Outgoing>, data: &Value) {
    let known = {
        let mut world = shared.world();
        let seen = data["seq"].as_u64().unwrap_or(0);
        let matches = world
            .gateway
            .sessions
            .values_mut()
            .find(|s| data["session_id"].as_str() == Some(s.id.as_str()));
        match matches {
            Some(session) => {
                for frame in session.sent.iter().filter(|f| f["s"].as_u64() > Some(seen)) {
                    let _ = tx.send(Outgoing::Frame(frame.clone()));
                }
                session.live = Some(tx.clone());
                Some(session.shard)
            }
            None => None,
        }
    };
    match known {
        Some(shard) => {
            dispatch_to(
                shared,
                |s| s.shard == shard,
                "RESUMED",
                serde_json::json!({}),
            );
        }
        None => {
            let _ = tx.send(Outgoing::Frame(fixtures::invalid_session(false)));
        }
    }
}

/// The guild a dispatch is about, which picks its shard (`None`: a DM, shard 0).
fn guild_of(name: &str, data: &Value) -> Option<u64> {
    let id = match name {
        "GUILD_CREATE" => &data["id"],
        _ => &data["guild_id"],
    };
    id.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| id.as_u64())
}

/// The intent (bit, name) without which Discord withholds this dispatch.
fn required_intent(name: &str, data: &Value) -> Option<(u64, &'static str)> {
    let in_guild = data.get("guild_id").is_some_and(|g| !g.is_null());
    match (name, in_guild) {
        ("MESSAGE_CREATE", true) => Some((1 << 9, "GUILD_MESSAGES")),
        ("MESSAGE_CREATE", false) => Some((1 << 12, "DIRECT_MESSAGES")),
        ("MESSAGE_REACTION_ADD", true) => Some((1 << 10, "GUILD_MESSAGE_REACTIONS")),
        ("MESSAGE_REACTION_ADD", false) => Some((1 << 13, "DIRECT_MESSAGE_REACTIONS")),
        _ => None,
    }
}

/// Sends a dispatch to the session of the shard its guild belongs to (shard 0 for DMs), or
/// keeps it for replay while that shard reconnects. Like Discord, withholds events the bot has
/// no intent for (noted in the transcript). Returns false when no session of that shard
/// exists: the bot never identified it.
pub(crate) fn dispatch(shared: &Shared, name: &str, data: Value) -> bool {
    let guild = guild_of(name, &data);
    dispatch_to(shared, |s| s.receives(guild), name, data)
}

/// Sends a dispatch to every session `to` picks; false if it picks none.
fn dispatch_to(shared: &Shared, to: impl Fn(&Session) -> bool, name: &str, data: Value) -> bool {
    let (found, withheld) = {
        let mut world = shared.world();
        let mut found = false;
        let mut withheld = None;
        for session in world.gateway.sessions.values_mut().filter(|s| to(s)) {
            found = true;
            match required_intent(name, &data) {
                Some((bit, intent)) if session.intents & bit == 0 => withheld = Some(intent),
                _ => {
                    session.seq += 1;
                    let frame = fixtures::dispatch(session.seq, name, data.clone());
                    session.sent.push(frame.clone());
                    if let Some(live) = &session.live {
                        let _ = live.send(Outgoing::Frame(frame));
                    }
                }
            }
        }
        (found, withheld)
    };
    if let Some(intent) = withheld {
        shared.note(format!(
            "{name} withheld: the bot did not identify with intent {intent}"
        ));
    }
    found
}

pub(crate) fn dispatch_guild_create(shared: &Shared, guild_id: u64) {
    let joined_at = shared.clock.timestamp();
    let payload = {
        let world = shared.world();
        let Some(guild) = world.guilds.get(&guild_id).filter(|g| g.bot_member) else {
            return;
        };
        let channels = guild
            .channels
            .iter()
            .filter_map(|id| world.channels.get(id))
            .map(|c| world.channel_json(c))
            .collect();
        let mut members = vec![fixtures::member(&world.bot().json(), &joined_at)];
        members.extend(
            world
                .users
                .values()
                .filter(|u| !u.bot && u.shares_guild)
                .map(|u| fixtures::member(&u.json(), &joined_at)),
        );
        fixtures::guild_create(GuildParts {
            id: guild.id,
            name: &guild.name,
            owner_id: guild.owner_id,
            joined_at: &joined_at,
            channels,
            members,
        })
    };
    dispatch(shared, "GUILD_CREATE", payload);
}
