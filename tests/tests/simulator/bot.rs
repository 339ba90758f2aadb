//! A minimal serenity/poise bot with Imagine's Discord surface, standing in for the real bot
//! until it exists: `/imagine prompt [image]` defers, then follows up with a PNG and a row of
//! buttons; a button click updates the message; a DM gets an echo; a reaction gets a note.
//! `/ignore` never answers (for the 3 s rule). `/form` opens a modal whose submission it
//! answers; `/menu` answers privately with a select menu, and a pick updates that message.

use poise::serenity_prelude as serenity;
use serenity::{
    ClientBuilder, CreateActionRow, CreateAttachment, CreateButton, CreateInteractionResponse,
    CreateInteractionResponseMessage, CreateMessage, FullEvent, GatewayIntents,
};

use imagine_tests::Simulator;

pub struct Data;
type Error = Box<dyn std::error::Error + Send + Sync>;
type Context<'a> = poise::Context<'a, Data, Error>;

/// A 1x1 transparent PNG.
pub const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

/// Draw a picture from a prompt.
#[poise::command(
    slash_command,
    install_context = "Guild|User",
    interaction_context = "Guild|BotDm|PrivateChannel"
)]
async fn imagine(
    ctx: Context<'_>,
    #[description = "What to draw"] prompt: String,
    #[description = "An image to start from"] image: Option<serenity::Attachment>,
) -> Result<(), Error> {
    ctx.defer().await?;
    let mut content = format!("**{prompt}**");
    if let Some(image) = image {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let bytes = client
            .get(&image.url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        content.push_str(&format!(
            " (from {}: {} bytes)",
            image.filename,
            bytes.len()
        ));
    }
    let buttons = CreateActionRow::Buttons(vec![
        CreateButton::new("imagine:upscale:1").label("U1"),
        CreateButton::new("imagine:reroll").label("Reroll"),
    ]);
    let reply = poise::CreateReply::default()
        .content(content)
        .attachment(CreateAttachment::bytes(TINY_PNG, "grid.png"))
        .components(vec![buttons]);
    ctx.send(reply).await?;
    Ok(())
}

/// Opens a modal with one pre-filled paragraph input (custom_id `form`, field `prompt`).
#[poise::command(slash_command)]
async fn form(ctx: Context<'_>) -> Result<(), Error> {
    let poise::Context::Application(actx) = ctx else {
        return Ok(());
    };
    let input =
        serenity::CreateInputText::new(serenity::InputTextStyle::Paragraph, "Prompt", "prompt")
            .value("a red fox")
            .max_length(100);
    let modal = serenity::CreateModal::new("form", "Remix")
        .components(vec![CreateActionRow::InputText(input)]);
    actx.interaction
        .create_response(ctx, CreateInteractionResponse::Modal(modal))
        .await?;
    Ok(())
}

/// Answers privately with a string select over nine cells (custom_id `cells`, 1 to 3 values).
#[poise::command(slash_command)]
async fn menu(ctx: Context<'_>) -> Result<(), Error> {
    let options = (0..9)
        .map(|i| serenity::CreateSelectMenuOption::new(format!("Cell {i}"), format!("c{i}")))
        .collect();
    let select = serenity::CreateSelectMenu::new(
        "cells",
        serenity::CreateSelectMenuKind::String { options },
    )
    .min_values(1)
    .max_values(3);
    let reply = poise::CreateReply::default()
        .content("Pick the cells")
        .ephemeral(true)
        .components(vec![CreateActionRow::SelectMenu(select)]);
    ctx.send(reply).await?;
    Ok(())
}

/// Says which shard received it.
#[poise::command(
    slash_command,
    install_context = "Guild|User",
    interaction_context = "Guild|BotDm"
)]
async fn shard(ctx: Context<'_>) -> Result<(), Error> {
    ctx.say(format!("shard {}", ctx.serenity_context().shard_id.0))
        .await?;
    Ok(())
}

/// Never answers: Discord shows "The application did not respond" after 3 s.
#[poise::command(
    slash_command,
    install_context = "Guild|User",
    interaction_context = "Guild|BotDm"
)]
async fn ignore(_ctx: Context<'_>) -> Result<(), Error> {
    Ok(())
}

async fn on_event(
    framework: poise::FrameworkContext<'_, Data, Error>,
    event: &FullEvent,
) -> Result<(), Error> {
    let ctx = framework.serenity_context;
    match event {
        FullEvent::InteractionCreate {
            interaction: serenity::Interaction::Component(click),
        } => {
            let text = match &click.data.kind {
                serenity::ComponentInteractionDataKind::StringSelect { values } => {
                    format!("picked {}", values.join(","))
                }
                _ => format!("clicked {}", click.data.custom_id),
            };
            let update = CreateInteractionResponseMessage::new().content(text);
            click
                .create_response(ctx, CreateInteractionResponse::UpdateMessage(update))
                .await?;
        }
        // Only its own modal: tests answer others themselves.
        FullEvent::InteractionCreate {
            interaction: serenity::Interaction::Modal(submit),
        } if submit.data.custom_id == "form" => {
            let fields: Vec<String> = submit
                .data
                .components
                .iter()
                .flat_map(|row| row.components.iter())
                .filter_map(|c| match c {
                    serenity::ActionRowComponent::InputText(input) => Some(format!(
                        "{}={}",
                        input.custom_id,
                        input.value.clone().unwrap_or_default()
                    )),
                    _ => None,
                })
                .collect();
            let reply = CreateInteractionResponseMessage::new()
                .content(format!("submitted {}", fields.join(";")));
            submit
                .create_response(ctx, CreateInteractionResponse::Message(reply))
                .await?;
        }
        FullEvent::Message { new_message }
            if !new_message.author.bot && new_message.guild_id.is_none() =>
        {
            let echo = CreateMessage::new().content(format!("You said: {}", new_message.content));
            new_message.channel_id.send_message(ctx, echo).await?;
        }
        FullEvent::ReactionAdd { add_reaction } => {
            let note = CreateMessage::new().content(format!("reaction {}", add_reaction.emoji));
            add_reaction.channel_id.send_message(ctx, note).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Starts the bot against the simulator; it runs until the test's runtime ends.
pub async fn start(sim: &Simulator) {
    start_with_intents(
        sim,
        GatewayIntents::non_privileged() | GatewayIntents::MESSAGE_CONTENT,
    )
    .await;
}

pub async fn start_with_intents(sim: &Simulator, intents: GatewayIntents) {
    let mut client = client(sim, intents).await;
    tokio::spawn(async move {
        let _ = client.start().await;
    });
}

/// Starts the bot running shards `first..=last` of `total`, as one process of a sharded bot.
pub async fn start_shards(sim: &Simulator, first: u32, last: u32, total: u32) {
    let mut client = client(sim, GatewayIntents::non_privileged()).await;
    tokio::spawn(async move {
        // serenity's range includes its end.
        let _ = client.start_shard_range(first..last, total).await;
    });
}

async fn client(sim: &Simulator, intents: GatewayIntents) -> serenity::Client {
    let framework = poise::Framework::builder()
        .options(poise::FrameworkOptions {
            commands: vec![imagine(), ignore(), form(), menu(), shard()],
            event_handler: |framework, event| Box::pin(on_event(framework, event)),
            ..Default::default()
        })
        .setup(|ctx, _ready, framework| {
            Box::pin(async move {
                poise::builtins::register_globally(ctx, &framework.options().commands).await?;
                Ok(Data)
            })
        })
        .build();
    ClientBuilder::new_with_http(sim.bot_http(), intents)
        .framework(framework)
        .await
        .expect("the bot's client builds")
}
