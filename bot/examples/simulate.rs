//! Try the real bot by hand, without Discord: starts the Discord simulator, runs `imagine bot`
//! against it with a model of your choice, sends one `/imagine`, presses U2 and V1, then
//! Upscale (Subtle), Zoom Out 2x and ➡️ under U2, U1 of the pan and ⬆️ under that, then Vary
//! (Region) under U2 with the left column of cells picked, and saves every image the bot
//! posted.
//!
//! ```sh
//! cargo build -p imagine && cargo run -p imagine --example simulate -- \
//!     "a brown puppy on the beach --seed 42" out/ [model folder, default assets/models/tiny-sd15]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use imagine_tests::{Entry, OptionValue, Simulator};
use serenity::all::Message;

const WAIT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let prompt = args
        .next()
        .unwrap_or_else(|| "a brown puppy on the beach".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "simulate-out".into()));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("assets/models/tiny-sd15"));
    std::fs::create_dir_all(&out).expect("output folder");
    let work = tempfile::tempdir().expect("temp dir");

    let sim = Simulator::start().await;
    let guild = sim.add_guild("Imagine Club");
    let channel = sim.add_channel(guild, "art");
    let alice = sim.add_user("alice");
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("imagine");
    let _bot = tokio::process::Command::new(&bin)
        .arg("bot")
        .env("DISCORD_TOKEN", sim.token())
        .env("DISCORD_API_BASE", sim.api_base())
        .env("IMAGINE_MODEL", &model)
        .env("IMAGINE_DB", work.path().join("imagine.db"))
        .env("IMAGINE_DATA_DIR", work.path().join("data"))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} ({e}): build it first", bin.display()));
    sim.wait_ready(WAIT).await.expect("the bot connects");

    let run = sim
        .slash_command(
            alice,
            channel,
            "imagine",
            vec![("prompt", OptionValue::from(prompt.as_str()))],
        )
        .unwrap();
    let grid = finished(&sim, &run.token).await;
    save(&sim, &grid, &out.join("grid.png"));
    // Each step presses a button under an earlier result: (under, button, saved as).
    let steps = [
        ("grid", "U2", "u2"),
        ("grid", "V1", "v1-grid"),
        ("u2", "Upscale (Subtle)", "u2-upscale-subtle"),
        ("u2", "Zoom Out 2x", "u2-zoom-out-2x"),
        ("u2", "➡️", "u2-pan-right"),
        ("u2-pan-right", "U1", "u2-pan-right-u1"),
        ("u2-pan-right-u1", "⬆️", "u2-pan-right-u1-pan-up"),
    ];
    let mut messages = std::collections::HashMap::from([("grid", grid)]);
    for (under, label, name) in steps {
        let parent = &messages[under];
        let click = sim
            .click_button(alice, parent.id, &custom_id(parent, label))
            .unwrap();
        let msg = finished(&sim, &click.token).await;
        save(&sim, &msg, &out.join(format!("{name}.png")));
        messages.insert(name, msg);
    }
    // Vary (Region): the private menu, then the three cells of the left column.
    let u2 = &messages["u2"];
    let open = sim
        .click_button(alice, u2.id, &custom_id(u2, "Vary (Region)"))
        .unwrap();
    sim.wait_callback(&open, WAIT)
        .await
        .expect("the region menu");
    let menu = sim.response_message(&open).expect("the region menu");
    let select = serde_json::to_value(&menu.components).unwrap()[0]["components"][0]["custom_id"]
        .as_str()
        .expect("the menu's select")
        .to_owned();
    let pick = sim
        .select_values(alice, menu.id, &select, &["c0", "c3", "c6"])
        .unwrap();
    let msg = finished(&sim, &pick.token).await;
    save(&sim, &msg, &out.join("u2-vary-region-left.png"));
    println!("{}", sim.transcript());
}

async fn finished(sim: &Simulator, token: &str) -> Message {
    let path = format!(
        "/webhooks/{}/{token}/messages/@original",
        sim.application_id()
    );
    sim.wait_for("a finished job", WAIT, |entries| {
        entries.iter().filter_map(Entry::as_rest).find_map(|c| {
            // The queued and progress views carry only the ❌ button; a result has labelled ones.
            let done = c.path == path
                && c.status < 300
                && c.response["components"].as_array().is_some_and(|rows| {
                    rows.iter()
                        .flat_map(|r| r["components"].as_array().into_iter().flatten())
                        .any(|b| b["label"].is_string())
                });
            done.then(|| serde_json::from_value(c.response.clone()).unwrap())
        })
    })
    .await
    .expect("the job finishes")
}

fn custom_id(msg: &Message, label: &str) -> String {
    let rows = serde_json::to_value(&msg.components).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["components"].as_array().unwrap().clone())
        .find(|b| b["label"].as_str() == Some(label) || b["emoji"]["name"].as_str() == Some(label))
        .and_then(|b| b["custom_id"].as_str().map(str::to_owned))
        .expect("the button")
}

fn save(sim: &Simulator, msg: &Message, path: &std::path::Path) {
    let bytes = sim
        .file_bytes(&msg.attachments[0].url)
        .expect("the posted file");
    std::fs::write(path, bytes).unwrap();
    println!("{} -> {}", msg.content, path.display());
}
