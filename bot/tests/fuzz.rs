//! Property tests over every parser of outside input, the stable-Rust way to fuzz: the prompt
//! parameter parser, the button `custom_id` codec, the TOML/environment configuration and the
//! image-prompt decoder. Each must never panic, and whatever it accepts must keep its
//! invariants (round trips, limits); whatever it refuses gets one clear line.
//!
//! `cargo test` runs a short pass (a few thousand cases per target, seconds in all) and first
//! replays every failure proptest ever saved in `fuzz.proptest-regressions` beside this file
//! (commit that file when it changes). The long campaign, by hand, in release:
//!
//! ```text
//! FUZZ_CASES=2000000 cargo test --release -p imagine --test fuzz -- --test-threads 2
//! ```
//!
//! `FUZZ_CASES` sets the cases of every property; `FUZZ_CASES_<TARGET>` (PARAMS, BUTTONS,
//! CONFIG, IMAGES) those of one target's, e.g. fewer for the slow image decoder. With
//! `--nocapture` each property prints how many cases ran and how many were accepted.

use std::cell::Cell;
use std::path::Path;

use clap::Parser;
use imagine::buttons::{ButtonAction, ButtonId, GRID_IMAGES, MAX_CUSTOM_ID_LEN};
use imagine::config::{BotArgs, Config};
use imagine::image_input::{self, MAX_SIDE};
use imagine::params::{parse_prompt, ParsedPrompt, MAX_INPUT_CHARS, MAX_PROMPT_CHARS};
use imagine::store::JobId;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestRunner};

/// What a case did, counted for the line each run prints.
enum Outcome {
    Accepted,
    Refused,
}

/// Runs `property` over `strategy` for `target`'s number of cases (`FUZZ_CASES_<TARGET>`, else
/// `FUZZ_CASES`, else `ci_cases`), replaying saved failures first, and prints how many cases
/// ran and how many the code under test accepted (run with `--nocapture` to see it).
fn fuzz<S: Strategy>(
    target: &str,
    ci_cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<Outcome, TestCaseError>,
) {
    let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let cases = read(&format!("FUZZ_CASES_{target}"))
        .or_else(|| read("FUZZ_CASES"))
        .unwrap_or(ci_cases);
    let config = ProptestConfig {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    };
    let (accepted, refused) = (Cell::new(0u64), Cell::new(0u64));
    let result = TestRunner::new(config).run(&strategy, |value| {
        let count = match property(value)? {
            Outcome::Accepted => &accepted,
            Outcome::Refused => &refused,
        };
        count.set(count.get() + 1);
        Ok(())
    });
    let thread = std::thread::current();
    eprintln!(
        "fuzz {}: {} cases, {} accepted, {} refused",
        thread.name().unwrap_or(target),
        accepted.get() + refused.get(),
        accepted.get(),
        refused.get()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A user-facing refusal: one line, a full sentence or clause, bounded.
fn assert_one_short_line(message: &str, max_chars: usize) {
    assert!(!message.is_empty());
    assert!(!message.contains('\n'), "{message:?}");
    assert!(message.chars().count() <= max_chars, "{message:?}");
}

// ---------------------------------------------------------------------------------------
// The prompt parameter parser.

/// Words a prompt is made of, rich in what the parser looks at.
fn prompt_word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]{1,8}",
        2 => prop::sample::select(vec![
            "--ar", "--aspect", "--seed", "--no", "--steps", "--stylize", "--s", "--chaos", "--c",
            "--model", "--AR", "—ar", "–seed", "—no", "--", "—", "–", "-", "--1", "--foo", "---ar",
        ])
        .prop_map(str::to_string),
        2 => prop::sample::select(vec![
            "3:2", "1:1", "4:1", "1:5", "21:20", "0:1", ":", "3x2", "0", "1", "100", "101",
            "-1", "+5", "4294967295", "4294967296", "99999999999999999999999", "1e3", "`", "``",
            "é", "☕", "東京", "@everyone", "<@&123>", "\u{0}", "\u{202e}",
        ])
        .prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn prompt_input() -> impl Strategy<Value = String> {
    let space = prop::sample::select(vec![" ", " ", " ", "  ", "\n", "\t", "\u{3000}", "\u{a0}"]);
    prop_oneof![
        6 => prop::collection::vec((prompt_word(), space), 0..24)
            .prop_map(|words| words.into_iter().flat_map(|(w, s)| [w, s.to_string()]).collect()),
        2 => any::<String>(),
        // Around the length limits.
        1 => (1490usize..1510, prop::sample::select(vec!["a", "é", "☕", "a b"]), "( --[a-z]{1,6} [0-9:]{0,5}){0,3}")
            .prop_map(|(n, unit, tail)| format!("{}{tail}", unit.repeat(n))),
        1 => (3990usize..4010).prop_map(|n| format!("cat --no {}", "w ".repeat(n / 2))),
    ]
}

/// The parameters of `p` written back as text, with the shortest spellings.
fn render(p: &ParsedPrompt) -> String {
    let mut text = p.prompt.clone();
    text.push_str(&format!(" --ar {}", p.aspect));
    if let Some(seed) = p.seed {
        text.push_str(&format!(" --seed {seed}"));
    }
    if let Some(steps) = p.steps {
        text.push_str(&format!(" --steps {steps}"));
    }
    if let Some(stylize) = p.stylize {
        text.push_str(&format!(" --s {stylize}"));
    }
    text.push_str(&format!(" --c {}", p.chaos));
    if let Some(model) = &p.model {
        text.push_str(&format!(" --model {model}"));
    }
    if !p.negative.is_empty() {
        text.push_str(&format!(" --no {}", p.negative));
    }
    text
}

fn assert_valid(p: &ParsedPrompt) {
    assert!(!p.prompt.is_empty() && p.prompt.trim() == p.prompt, "{p:?}");
    assert!(p.prompt.chars().count() <= MAX_PROMPT_CHARS);
    let (w, h) = (p.aspect.w, p.aspect.h);
    assert!((1..=21).contains(&w) && (1..=21).contains(&h) && w <= 4 * h && h <= 4 * w);
    assert!(p.steps.is_none_or(|s| (1..=100).contains(&s)));
    assert!(p.stylize.is_none_or(|s| s <= 1000));
    assert!(p.chaos <= 100);
    assert!(p
        .model
        .as_ref()
        .is_none_or(|m| !m.is_empty() && !m.contains(char::is_whitespace)));
}

#[test]
fn params_any_text_is_parsed_or_refused_in_one_short_line() {
    fuzz("PARAMS", 4000, prompt_input(), |input| {
        match parse_prompt(&input) {
            Ok(p) => {
                assert_valid(&p);
                // What was accepted reads back the same from its canonical spelling.
                let again = render(&p);
                if again.chars().count() <= MAX_INPUT_CHARS {
                    prop_assert_eq!(parse_prompt(&again), Ok(p));
                }
                Ok(Outcome::Accepted)
            }
            Err(e) => {
                let message = e.to_string();
                assert_one_short_line(&message, 200);
                prop_assert!(message.ends_with('.'), "{}", message);
                prop_assert_eq!(message.matches('`').count() % 2, 0, "{}", message);
                Ok(Outcome::Refused)
            }
        }
    });
}

/// A valid prompt and parameters, built field by field.
fn parsed_prompt() -> impl Strategy<Value = ParsedPrompt> {
    // Generated within 4:1 rather than filtered: filters run out of tries in long campaigns.
    let aspect = (1u32..=21).prop_flat_map(|h| (h.div_ceil(4)..=(4 * h).min(21), Just(h)));
    let model = "[a-z0-9._/][a-z0-9._/-]{0,19}";
    (
        "[a-zé☕東 ]{0,30}[a-z]",
        aspect,
        prop::option::of(any::<u32>()),
        prop::option::of(1u32..=100),
        prop::option::of(0u32..=1000),
        0u32..=100,
        prop::option::of(model),
        prop::collection::vec("[a-z]{1,6}", 0..4),
    )
        .prop_map(
            |(prompt, (w, h), seed, steps, stylize, chaos, model, negative)| ParsedPrompt {
                prompt: prompt.trim().to_string(),
                negative: negative.join(" "),
                aspect: imagine::params::Aspect { w, h },
                seed,
                steps,
                stylize,
                chaos,
                model,
            },
        )
}

#[test]
fn params_generated_prompts_round_trip() {
    fuzz("PARAMS", 2000, parsed_prompt(), |p| {
        prop_assert_eq!(parse_prompt(&render(&p)), Ok(p));
        Ok(Outcome::Accepted)
    });
}

// ---------------------------------------------------------------------------------------
// The button custom_id codec.

fn any_action() -> impl Strategy<Value = ButtonAction> {
    prop_oneof![
        (0..GRID_IMAGES).prop_map(ButtonAction::Upscale),
        (0..GRID_IMAGES).prop_map(ButtonAction::Variation),
        Just(ButtonAction::Reroll),
        Just(ButtonAction::VarySubtle),
        Just(ButtonAction::VaryStrong),
    ]
}

/// Strings near the codec's grammar, and anything at all.
fn custom_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(im1|im2|IM1|)(:(u|v|r|vs|vx|x|U|))?(:[0-9+\\- ]{0,22})?(:[0-9٣]{0,2})?(:.{0,3})?",
        1 => any::<String>(),
        1 => ".{90,110}",
        // A valid id with one edit: a character inserted, removed or replaced.
        2 => (any_action(), 0..=i64::MAX, any::<prop::sample::Index>(), any::<char>(), 0..3u8)
            .prop_map(|(action, job, at, c, edit)| {
                let mut chars: Vec<char> = ButtonId::new(action, JobId(job)).encode().chars().collect();
                let i = at.index(chars.len() + 1);
                match edit {
                    0 => chars.insert(i, c),
                    1 if i < chars.len() => { chars.remove(i); }
                    _ if i < chars.len() => chars[i] = c,
                    _ => chars.push(c),
                }
                chars.into_iter().collect()
            }),
    ]
}

#[test]
fn buttons_anything_accepted_is_its_own_canonical_encoding() {
    fuzz("BUTTONS", 4000, custom_id(), |s| {
        match ButtonId::parse(&s) {
            Some(button) => {
                prop_assert_eq!(button.encode(), s);
                prop_assert!(button.job.0 >= 0);
                prop_assert!(button.action.index().is_none_or(|i| i < GRID_IMAGES));
                Ok(Outcome::Accepted)
            }
            None => Ok(Outcome::Refused),
        }
    });
}

#[test]
fn buttons_every_id_round_trips_within_discords_limit() {
    fuzz(
        "BUTTONS",
        2000,
        (any_action(), 0..=i64::MAX),
        |(action, job)| {
            let button = ButtonId::new(action, JobId(job));
            let encoded = button.encode();
            prop_assert!(
                !encoded.is_empty() && encoded.len() <= MAX_CUSTOM_ID_LEN,
                "{}",
                encoded
            );
            prop_assert_eq!(ButtonId::parse(&encoded), Some(button));
            Ok(Outcome::Accepted)
        },
    );
}

// ---------------------------------------------------------------------------------------
// The configuration: TOML file text and flag/environment values.

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    bot: BotArgs,
}

/// Values an environment variable or a TOML string might hold for the setting `key`:
/// mostly plausible ones, some anything at all.
fn setting_value(key: &str) -> BoxedStrategy<String> {
    let plausible: Vec<&'static str> = match key.replace('-', "_").as_str() {
        "discord_token" => vec!["tok-0123456789abcdef", " tok-0123456789abcdef\n", "", " "],
        "model" | "taesd" => vec!["stabilityai/sd-turbo", "./tiny", "a/b/", "/", "", " "],
        "db" | "data_dir" => vec!["imagine.db", "/tmp/x", "", "./data/"],
        "database_url" => vec![
            "postgres://imagine:pw@127.0.0.1:5432/imagine",
            "postgresql://localhost/imagine?sslmode=require",
            "postgres://h/db?sslmode=bogus",
            "postgres://",
            "mysql://u:p@h/db",
            "imagine.db",
            "",
        ],
        "queue_capacity" | "user_cap" => vec!["0", "1", "8", "32", "-1", "18446744073709551616"],
        "discord_api_base" => vec!["http://127.0.0.1:1", "https://x/", "ftp://x", "", "http://"],
        "fast_grid_decode" => vec!["true", "false", "yes", ""],
        "precision" => vec!["fp32", "bf16", " fp32 ", "FP16", ""],
        _ => vec![""],
    };
    prop_oneof![
        3 => prop::sample::select(plausible).prop_map(str::to_string),
        1 => ".{0,12}",
    ]
    .boxed()
}

/// The flags a setting can be given by (`--name=value`, as the environment delivers values).
const FLAGS: [&str; 11] = [
    "discord-token",
    "model",
    "db",
    "database-url",
    "data-dir",
    "queue-capacity",
    "user-cap",
    "discord-api-base",
    "taesd",
    "fast-grid-decode",
    "precision",
];

const KEYS: [&str; 13] = [
    "discord_token",
    "model",
    "db",
    "database_url",
    "data_dir",
    "queue_capacity",
    "user_cap",
    "discord_api_base",
    "taesd",
    "fast_grid_decode",
    "precision",
    "queue_size",
    "models",
];

/// A TOML value for `key`: a plausible one written as its type wants, or any TOML at all.
fn toml_value(key: &'static str) -> impl Strategy<Value = String> {
    let typed = setting_value(key).prop_map(move |v| {
        let bare = matches!(key, "queue_capacity" | "user_cap" | "fast_grid_decode");
        if bare && !v.is_empty() {
            v
        } else {
            format!("{v:?}")
        }
    });
    prop_oneof![
        4 => typed,
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "true", "1.5", "[]", "[1, \"a\"]", "{}", "{ a = 1 }", "1979-05-27T07:32:00Z", "'lit'",
            "\"\"\"multi\nline\"\"\"", "\"unterminated", "nan", "inf", "0x10", "= =", "",
        ])
        .prop_map(str::to_string),
    ]
}

fn toml_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        6 => prop::sample::select(KEYS.to_vec())
            .prop_flat_map(|k| toml_value(k).prop_map(move |v| format!("{k} = {v}"))),
        1 => Just("[models]".to_string()),
        1 => ("[a-z0-9-]{1,8}", toml_value("model")).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => ".{0,20}",
    ];
    prop_oneof![
        4 => prop::collection::vec(line, 0..5).prop_map(|lines| lines.join("\n")),
        1 => any::<String>(),
    ]
}

/// Flag values, a config file's text, a token for that file, where to cut the token's line.
type ConfigCase = (
    Vec<(&'static str, String)>,
    Option<String>,
    Option<String>,
    prop::sample::Index,
);

/// Flag values (standing in for environment values: clap parses both the same way), a
/// config file's text, and a token in that file that may be cut anywhere.
fn config_case() -> impl Strategy<Value = ConfigCase> {
    (
        prop::collection::vec(
            prop::sample::select(FLAGS.to_vec())
                .prop_flat_map(|flag| setting_value(flag).prop_map(move |v| (flag, v))),
            0..6,
        ),
        prop::option::of(toml_text()),
        prop::option::weighted(0.7, "tok-[a-z0-9]{16}"),
        any::<prop::sample::Index>(),
    )
}

#[test]
fn config_any_file_and_values_resolve_or_explain_without_showing_the_token() {
    fuzz(
        "CONFIG",
        1500,
        config_case(),
        |(values, text, file_token, broken_at)| {
            let mut argv = vec!["imagine".to_string()];
            let mut seen = std::collections::HashSet::new();
            for (flag, value) in values {
                if seen.insert(flag) {
                    argv.push(format!("--{flag}={value}"));
                }
            }
            // Refusals of values are clap's own messages, before any configuration exists.
            let Ok(flags) = Flags::try_parse_from(&argv) else {
                return Ok(Outcome::Refused);
            };
            let mut text = text;
            if let Some(token) = &file_token {
                // The token line, possibly cut short: an unterminated string must not show it.
                let line = format!("discord_token = \"{token}\"");
                // Cut in one case out of four (past the end means whole).
                let cut = broken_at.index(4 * line.len()).min(line.len());
                let file = text.get_or_insert_with(String::new);
                *file = format!("{}\n{}", &line[..cut], file);
            }
            let file = text.as_deref().map(|t| (Path::new("imagine.toml"), t));
            match Config::resolve_with_file(&flags.bot, file) {
                Ok(c) => {
                    prop_assert!(c.queue_capacity >= 1 && c.user_cap >= 1);
                    prop_assert!(c.models.contains_key(&c.default_model));
                    let token = c.token.expose();
                    prop_assert!(!token.is_empty() && token.trim() == token);
                    let http = |b: &str| b.starts_with("http://") || b.starts_with("https://");
                    let base_ok = c
                        .api_base
                        .as_deref()
                        .is_none_or(|b| http(b) && !b.ends_with('/'));
                    prop_assert!(base_ok, "{:?}", c.api_base);
                    prop_assert!(!c.fast_grid_decode || c.taesd.is_some());
                    // The token shows only where the same text is another setting's value (a
                    // file that also names it as a model) or is too short to tell ("o" is in
                    // "Config").
                    let shown = format!("{c:?}");
                    let settings = (&c.models, &c.db, &c.data_dir, &c.api_base, &c.taesd);
                    let elsewhere = format!("{settings:?}").contains(token);
                    let hidden = token.len() < 16 || elsewhere || !shown.contains(token);
                    prop_assert!(hidden, "{}", shown);
                    Ok(Outcome::Accepted)
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    prop_assert!(!message.trim().is_empty());
                    if let Some(token) = &file_token {
                        prop_assert!(!message.contains(token.as_str()), "{}", message);
                    }
                    Ok(Outcome::Refused)
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// The image-prompt decoder.

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/testdata/images");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    SetByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    /// Overwrites 2 or 4 bytes where formats keep their dimensions with a chosen size.
    Dimension(u8, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => (0..4u8, prop_oneof![Just(0u32), Just(1), Just(MAX_SIDE), Just(MAX_SIDE + 1), Just(65535), Just(u32::MAX), any::<u32>()])
            .prop_map(|(which, v)| Mutation::Dimension(which, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::FlipBit(i, bit) => {
            let at = i.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::SetByte(i, v) => {
            let at = i.index(bytes.len());
            bytes[at] = *v;
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Insert(i, v) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, v.iter().copied());
        }
        Mutation::Dimension(which, v) => {
            // PNG IHDR width/height (big-endian u32 at 16, 20); GIF screen (LE u16 at 6, 8);
            // JPEG: the first SOF0/SOF2 marker's height, width (BE u16).
            let (at, le, width) = match (which, bytes.starts_with(b"\x89PNG")) {
                (0 | 1, true) => (16 + 4 * usize::from(*which), false, 4),
                _ if bytes.starts_with(b"GIF") => (6 + 2 * usize::from(*which % 2), true, 2),
                _ => match bytes
                    .windows(2)
                    .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
                {
                    Some(sof) => (sof + 5 + 2 * usize::from(*which % 2), false, 2),
                    None => return,
                },
            };
            let value = if width == 4 {
                v.to_be_bytes().to_vec()
            } else if le {
                (*v as u16).to_le_bytes().to_vec()
            } else {
                (*v as u16).to_be_bytes().to_vec()
            };
            if at + width <= bytes.len() {
                bytes[at..at + width].copy_from_slice(&value);
            }
        }
    }
}

/// Decodes `bytes`: a picture within the limits, or one short line saying why not.
fn decodes_or_refuses(bytes: &[u8]) -> Outcome {
    match image_input::decode(bytes) {
        Ok(img) => {
            assert!(img.width() >= 1 && img.height() >= 1);
            assert!(img.width() <= MAX_SIDE && img.height() <= MAX_SIDE);
            Outcome::Accepted
        }
        Err(e) => {
            assert_one_short_line(&e.to_string(), 200);
            Outcome::Refused
        }
    }
}

fn image_with_magic() -> impl Strategy<Value = Vec<u8>> {
    let magic = prop::sample::select(vec![
        &b""[..],
        b"\x89PNG\r\n\x1a\n",
        b"\xFF\xD8\xFF",
        b"GIF89a",
        b"RIFF\0\0\0\0WEBPVP8 ",
        b"RIFF\0\0\0\0WEBPVP8L",
        b"RIFF\0\0\0\0WEBPVP8X",
        b"BM",
        b"\0\0\0\x18ftypheic",
    ]);
    (magic, prop::collection::vec(any::<u8>(), 0..2048)).prop_map(|(magic, rest)| {
        let mut bytes = magic.to_vec();
        bytes.extend(rest);
        bytes
    })
}

#[test]
fn images_arbitrary_bytes_never_panic() {
    fuzz("IMAGES", 1500, image_with_magic(), |bytes| {
        Ok(decodes_or_refuses(&bytes))
    });
}

#[test]
fn images_mutated_corpus_files_never_panic() {
    let corpus = corpus();
    let case = (
        any::<prop::sample::Index>(),
        prop::collection::vec(mutation(), 1..6),
    );
    fuzz("IMAGES", 1500, case, |(file, mutations)| {
        let mut bytes = corpus[file.index(corpus.len())].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        Ok(decodes_or_refuses(&bytes))
    });
}
