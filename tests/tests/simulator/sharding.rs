//! Sharding as Discord does it: a guild's interactions reach only the shard
//! `(guild_id >> 22) % num_shards`, DMs only shard 0, READY echoes the shard and names only its
//! guilds; impossible shards are closed with 4010, too few shards with 4011; a second IDENTIFY
//! of a shard invalidates the older session; `GET /gateway/bot` recommends a shard count.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use imagine_tests::{Direction, Entry, SimError, Simulator};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{bot, WAIT};

/// Waits until the bot has `n` shards connected and registered its commands.
async fn wait_shards(sim: &Simulator, n: usize) {
    sim.wait_ready(WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while sim.connected_shards().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only shards {:?} connected",
            sim.connected_shards()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `/shard` there and returns the bot's answer ("shard N": who received it).
async fn who_answers(
    sim: &Simulator,
    user: serenity::all::UserId,
    channel: serenity::all::ChannelId,
) -> String {
    let run = sim.slash_command(user, channel, "shard", vec![]).unwrap();
    let cb = sim.wait_callback(&run, WAIT).await.unwrap();
    cb.data["content"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn a_guilds_interactions_reach_only_its_shard_and_dms_reach_shard_zero() {
    let sim = Simulator::start().await;
    let zero = sim.add_guild_on_shard("Zero", 0, 2);
    let one = sim.add_guild_on_shard("One", 1, 2);
    assert_eq!(Simulator::shard_of(Some(zero), 2), 0);
    assert_eq!(Simulator::shard_of(Some(one), 2), 1);
    let (in_zero, in_one) = (sim.add_channel(zero, "zero"), sim.add_channel(one, "one"));
    let alice = sim.add_user("alice");
    let dm = sim.dm_channel(alice).unwrap();
    bot::start_shards(&sim, 0, 1, 2).await;
    wait_shards(&sim, 2).await;
    assert_eq!(sim.connected_shards(), [[0, 2], [1, 2]]);

    assert_eq!(who_answers(&sim, alice, in_zero).await, "shard 0");
    assert_eq!(who_answers(&sim, alice, in_one).await, "shard 1");
    assert_eq!(
        who_answers(&sim, alice, dm).await,
        "shard 0",
        "DMs go to shard 0"
    );

    // Each READY echoes its IDENTIFY's shard and names only that shard's guilds.
    let readies: Vec<Value> = sim
        .transcript()
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Gateway {
                direction: Direction::ToBot,
                frame,
            } if frame["t"] == "READY" => Some(frame["d"].clone()),
            _ => None,
        })
        .collect();
    assert_eq!(readies.len(), 2, "one READY per shard");
    for ready in readies {
        let shard = ready["shard"].clone();
        let guild = if shard == json!([0, 2]) { zero } else { one };
        assert!(shard == json!([0, 2]) || shard == json!([1, 2]), "{shard}");
        assert_eq!(
            ready["guilds"],
            json!([{ "id": guild.to_string(), "unavailable": true }]),
            "READY of shard {shard}"
        );
    }
}

#[tokio::test]
async fn a_guild_on_a_shard_no_process_runs_is_not_reached() {
    let sim = Simulator::start().await;
    let zero = sim.add_guild_on_shard("Zero", 0, 2);
    let one = sim.add_guild_on_shard("One", 1, 2);
    let (in_zero, in_one) = (sim.add_channel(zero, "zero"), sim.add_channel(one, "one"));
    let alice = sim.add_user("alice");
    bot::start_shards(&sim, 0, 0, 2).await;
    wait_shards(&sim, 1).await;
    assert_eq!(who_answers(&sim, alice, in_zero).await, "shard 0");
    let err = sim
        .slash_command(alice, in_one, "shard", vec![])
        .unwrap_err();
    assert_eq!(err, SimError::BotNotConnected, "shard 1 has no session");
}

/// A bare gateway client: connects, reads HELLO, sends IDENTIFY with `shard` (`Null`: none).
struct RawShard {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl RawShard {
    async fn identify(sim: &Simulator, shard: Value) -> RawShard {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let gateway: Value = client
            .get(format!("{}/api/v10/gateway", sim.api_base()))
            .header("Authorization", format!("Bot {}", sim.token()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = format!("{}?v=10&encoding=json", gateway["url"].as_str().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut raw = RawShard { socket };
        let hello = raw.next_frame().await.expect("HELLO");
        assert_eq!(hello["op"], 10);
        let mut d = json!({
            "token": sim.token(), "intents": 0,
            "properties": { "os": "linux", "browser": "test", "device": "test" },
        });
        if !shard.is_null() {
            d["shard"] = shard;
        }
        let identify = json!({ "op": 2, "d": d }).to_string();
        raw.socket
            .send(Message::Text(identify.into()))
            .await
            .unwrap();
        raw
    }

    /// The next JSON frame; `None` once the server closed (see [`RawShard::close_code`]).
    async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.socket.next())
                .await
                .ok()??
            {
                Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the server closes; its close code.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.socket.next())
                .await
                .ok()??
            {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

#[tokio::test]
async fn impossible_shards_are_closed_with_4010_and_too_few_with_4011() {
    let sim = Simulator::start().await;
    sim.add_guild("Somewhere");
    for bad in [
        json!([2, 2]),
        json!([0, 0]),
        json!([1]),
        json!("0,1"),
        json!([-1, 2]),
    ] {
        let mut raw = RawShard::identify(&sim, bad.clone()).await;
        assert_eq!(raw.close_code().await, Some(4010), "shard {bad}");
    }
    // A good shard gets READY echoing it.
    let mut raw = RawShard::identify(&sim, json!([1, 3])).await;
    let ready = raw.next_frame().await.unwrap();
    assert_eq!(
        (ready["t"].clone(), ready["d"]["shard"].clone()),
        (json!("READY"), json!([1, 3]))
    );

    // Past 2,500 guilds per shard Discord requires (more) sharding.
    for i in 0..2500 {
        sim.add_guild(&format!("guild {i}"));
    }
    let mut raw = RawShard::identify(&sim, Value::Null).await;
    assert_eq!(
        raw.close_code().await,
        Some(4011),
        "2,501 guilds on one shard"
    );
    let mut raw = RawShard::identify(&sim, json!([0, 2])).await;
    let ready = raw.next_frame().await.unwrap();
    assert_eq!(ready["t"], "READY", "two shards carry 2,501 guilds");
}

#[tokio::test]
async fn a_second_identify_of_a_shard_invalidates_the_older_session() {
    let sim = Simulator::start().await;
    let mut older = RawShard::identify(&sim, json!([0, 1])).await;
    assert_eq!(older.next_frame().await.unwrap()["t"], "READY");
    let mut newer = RawShard::identify(&sim, Value::Null).await;
    assert_eq!(newer.next_frame().await.unwrap()["t"], "READY");
    let told = older.next_frame().await.unwrap();
    assert_eq!(
        (told["op"].clone(), told["d"].clone()),
        (json!(9), json!(false))
    );
    // Events now go to the newer session.
    let guild = sim.add_guild("Later");
    let created = newer.next_frame().await.unwrap();
    assert_eq!(created["t"], "GUILD_CREATE");
    assert_eq!(created["d"]["id"], guild.to_string());
}

#[tokio::test]
async fn gateway_bot_recommends_a_shard_per_thousand_guilds() {
    let sim = Simulator::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let shards = |sim: &Simulator| {
        let request = client
            .get(format!("{}/api/v10/gateway/bot", sim.api_base()))
            .header("Authorization", format!("Bot {}", sim.token()));
        async move {
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            answer["shards"].as_u64().unwrap()
        }
    };
    assert_eq!(shards(&sim).await, 1, "no guilds yet");
    for i in 0..1000 {
        sim.add_guild(&format!("guild {i}"));
    }
    assert_eq!(shards(&sim).await, 1);
    sim.add_guild("one more");
    assert_eq!(shards(&sim).await, 2);
}
