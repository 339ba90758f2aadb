//! LoRAs through the bot, end to end with the simulator and the tiny model: a prompt's
//! `<lora:NAME:SCALE>` tag changes the image, is recorded in the PNG as AUTOMATIC1111 records
//! it, and carries over to button jobs; an unknown name gets a private reply listing the
//! folder's LoRAs; the next job without a tag gets the base model's pixels back.

mod common;

use common::*;

const KOHYA_HASH_LEN: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_tags_apply_loras_record_them_and_carry_over_to_buttons() {
    let w = world().await;
    let loras = root().join("assets/models/loras");
    let bot = start_bot(
        &w.sim,
        w.dir.path(),
        &[("IMAGINE_LORAS", loras.to_str().unwrap())],
    )
    .await;

    let (base, _) = png_and_parameters(
        &w.sim,
        &imagine(&w, w.alice, w.channel, "a lighthouse --seed 3 --steps 3").await,
    );
    let styled = imagine(
        &w,
        w.alice,
        w.channel,
        "a lighthouse <lora:tiny-sd15-kohya:0.5> --seed 3 --steps 3",
    )
    .await;
    let (image, params) = png_and_parameters(&w.sim, &styled);
    assert_ne!(image, base, "the LoRA changed nothing");
    assert!(
        params.starts_with("a lighthouse <lora:tiny-sd15-kohya:0.5>"),
        "{params}"
    );
    let hash = params
        .split("Lora hashes: \"tiny-sd15-kohya: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no Lora hashes field: {params}"));
    assert!(
        hash[..KOHYA_HASH_LEN]
            .chars()
            .all(|c| c.is_ascii_hexdigit())
            && hash[KOHYA_HASH_LEN..].starts_with('"')
    );

    // U1 of the LoRA grid: the same LoRA, recorded again.
    let upscaled = click(&w, w.alice, &styled, "U1").await;
    let (_, u1_params) = png_and_parameters(&w.sim, &upscaled);
    assert!(
        u1_params.contains("Lora hashes: \"tiny-sd15-kohya: "),
        "{u1_params}"
    );

    // 🔄 rerolls the prompt: with its LoRA.
    let rerun = click(&w, w.alice, &styled, "🔄").await;
    let (_, rerun_params) = png_and_parameters(&w.sim, &rerun);
    assert!(
        rerun_params.contains("Lora hashes: \"tiny-sd15-kohya: "),
        "{rerun_params}"
    );

    // Back to no LoRA: the base model's pixels exactly.
    let (again, again_params) = png_and_parameters(
        &w.sim,
        &imagine(&w, w.alice, w.channel, "a lighthouse --seed 3 --steps 3").await,
    );
    assert_eq!(again, base, "the base model did not come back exactly");
    assert!(!again_params.contains("Lora"), "{again_params}");

    // An unknown name: a private reply that lists the folder's LoRAs.
    let run = run_imagine(&w, w.alice, w.channel, "a cat <lora:nope:1>", None);
    let cb = w.sim.wait_callback(&run, WAIT).await.unwrap();
    assert_reply(&cb, "There is no LoRA named `nope`", true);
    for name in ["`tiny-sd15-kohya`", "`tiny-sd15-peft`", "`tiny-sdxl-kohya`"] {
        assert_reply(&cb, name, true);
    }
    bot.stop().await;
}
