//! The REST routes a bot uses, called through serenity's own `Http`: every answer must be a
//! full object serenity can read, and uploads must come back as attachments we can download.

use serenity::all::{
    Builder, CreateAttachment, CreateCommand, CreateInteractionResponse,
    CreateInteractionResponseFollowup, CreateInteractionResponseMessage, CreateMessage,
    EditInteractionResponse, EditMessage, ReactionType,
};

use crate::{ready_world, WAIT};

#[tokio::test]
async fn webhook_routes_create_edit_and_delete_interaction_messages() {
    let world = ready_world().await;
    let sim = &world.sim;
    let http = sim.bot_http();
    let run = sim
        .slash_command(world.alice, world.channel, "ignore", vec![])
        .unwrap();

    let defer = CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new());
    defer.execute(&http, (run.id, &run.token)).await.unwrap();
    let original = http
        .get_original_interaction_response(&run.token)
        .await
        .unwrap();
    assert_eq!(original.channel_id, world.channel);

    let first = CreateInteractionResponseFollowup::new()
        .content("first")
        .add_file(CreateAttachment::bytes(vec![1u8; 10], "a.png"));
    let first = first.execute(&http, (None, &run.token)).await.unwrap();
    assert_eq!(
        first.id, original.id,
        "the first follow-up replaces the thinking message"
    );
    let second = CreateInteractionResponseFollowup::new().content("second");
    let second = second.execute(&http, (None, &run.token)).await.unwrap();
    assert_ne!(second.id, original.id);

    let edit = EditInteractionResponse::new()
        .content("edited")
        .new_attachment(CreateAttachment::bytes(vec![2u8; 20], "b.png"));
    let edited = edit.execute(&http, &run.token).await.unwrap();
    assert_eq!(sim.wait_edit(&run, WAIT).await.unwrap().id, edited.id);
    assert_eq!(edited.content, "edited");
    let sizes: Vec<u32> = edited.attachments.iter().map(|a| a.size).collect();
    assert_eq!(
        sizes,
        [20],
        "serenity sends only the attachments to keep: here, the new one"
    );
    assert_eq!(
        sim.file_bytes(&edited.attachments[0].url).unwrap(),
        vec![2u8; 20]
    );
    let transcript = sim.transcript();
    let patch = transcript
        .rest_calls()
        .find(|c| c.method == "PATCH")
        .unwrap();
    assert_eq!(patch.files[0].filename, "b.png", "{transcript}");

    http.delete_followup_message(&run.token, second.id)
        .await
        .unwrap();
    assert!(sim.message(second.id).is_none());
    assert!(
        http.delete_followup_message(&run.token, second.id)
            .await
            .is_err(),
        "already gone"
    );
    http.delete_original_interaction_response(&run.token)
        .await
        .unwrap();
    assert!(sim.message(original.id).is_none());
}

#[tokio::test]
async fn channel_dm_reaction_and_command_routes_answer_full_objects() {
    let world = ready_world().await;
    let sim = &world.sim;
    let http = sim.bot_http();

    let dm = world.alice.create_dm_channel(&http).await.unwrap();
    assert_eq!(dm.id, sim.dm_channel(world.alice).unwrap());
    assert_eq!(dm.recipient.id, world.alice);

    let sent = CreateMessage::new()
        .content("hello")
        .add_file(CreateAttachment::bytes(vec![3u8; 5], "c.png"));
    let sent = world.channel.send_message(&http, sent).await.unwrap();
    assert_eq!(sent.author.id, sim.bot_user_id());
    assert_eq!(
        sim.file_bytes(&sent.attachments[0].url).unwrap(),
        vec![3u8; 5]
    );
    let edited = world
        .channel
        .edit_message(&http, sent.id, EditMessage::new().content("bye"))
        .await
        .unwrap();
    assert_eq!(
        (edited.content.as_str(), edited.attachments.len()),
        ("bye", 1)
    );
    assert!(edited.edited_timestamp.is_some());

    let thumbs = ReactionType::Unicode("👍".into());
    http.create_reaction(world.channel, sent.id, &thumbs)
        .await
        .unwrap();
    assert_eq!(sim.message(sent.id).unwrap().reactions.len(), 1);
    http.delete_reaction_me(world.channel, sent.id, &thumbs)
        .await
        .unwrap();
    assert!(sim.message(sent.id).unwrap().reactions.is_empty());

    world.channel.delete_message(&http, sent.id).await.unwrap();
    assert!(
        world.channel.message(&http, sent.id).await.is_err(),
        "404 Unknown Message"
    );

    let guild_id = world
        .channel
        .to_channel(&http)
        .await
        .unwrap()
        .guild()
        .unwrap()
        .guild_id;
    let commands = guild_id
        .set_commands(&http, vec![CreateCommand::new("local").description("d")])
        .await
        .unwrap();
    assert_eq!(commands[0].guild_id, Some(guild_id));
    let run = sim
        .slash_command(world.alice, world.channel, "local", vec![])
        .unwrap();
    assert_eq!(
        run.channel_id, world.channel,
        "guild commands can be run in that guild"
    );
    assert!(sim
        .slash_command(
            world.alice,
            sim.dm_channel(world.alice).unwrap(),
            "local",
            vec![]
        )
        .is_err());

    let info = http.get_current_application_info().await.unwrap();
    assert_eq!(info.id, sim.application_id());
    assert_eq!(http.get_bot_gateway().await.unwrap().shards, 1);
}
