//! Midjourney-style prompt parameters: `a brown puppy --ar 3:2 --seed 42 --no grass`.
//!
//! This is the edge where a user's free text becomes a validated [`ParsedPrompt`]. Everything
//! after the first `--flag` is a parameter; everything before it is the prompt. Every way the
//! text can be wrong maps to one [`ParamError`] whose `Display` is a single short sentence the
//! Discord glue can show the user as is (ephemerally). Whether `--model NAME` names a configured
//! model is not known here: the caller checks it.
//!
//! [`size_for_aspect`] turns an aspect ratio into a pixel size for a model of a given native
//! resolution.

use std::fmt;

/// The longest prompt (the text before the parameters), in characters.
pub const MAX_PROMPT_CHARS: usize = 1500;
/// The longest whole input (prompt and parameters), in characters.
pub const MAX_INPUT_CHARS: usize = 4000;
/// The largest side accepted in `--ar W:H`.
pub const MAX_ASPECT_SIDE: u32 = 21;
/// The most extreme ratio accepted, either way round (4:1 and 1:4).
pub const MAX_ASPECT_RATIO: u32 = 4;

/// An aspect ratio `w:h` as the user wrote it (not reduced: `--ar 4:2` stays 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Aspect {
    pub w: u32,
    pub h: u32,
}

impl Default for Aspect {
    fn default() -> Self {
        Aspect { w: 1, h: 1 }
    }
}

impl fmt::Display for Aspect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.w, self.h)
    }
}

/// A prompt and its parameters, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPrompt {
    /// The text before the first parameter, trimmed; never empty.
    pub prompt: String,
    /// The `--no` words; several `--no` are joined with ", ". Empty when none.
    pub negative: String,
    pub aspect: Aspect,
    pub seed: Option<u32>,
    pub steps: Option<u32>,
    pub stylize: Option<u32>,
    pub chaos: u32,
    /// The model name as written; the caller checks it against the configured models.
    pub model: Option<String>,
}

/// A parameter the parser knows, by its canonical name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    Ar,
    Seed,
    No,
    Steps,
    Stylize,
    Chaos,
    Model,
}

impl Flag {
    /// Every flag, in the order the "Accepted:" list names them.
    pub const ALL: [Flag; 7] = [
        Flag::Ar,
        Flag::Seed,
        Flag::No,
        Flag::Steps,
        Flag::Stylize,
        Flag::Chaos,
        Flag::Model,
    ];

    /// The canonical spelling, with its dashes: `--ar`.
    pub fn name(self) -> &'static str {
        match self {
            Flag::Ar => "--ar",
            Flag::Seed => "--seed",
            Flag::No => "--no",
            Flag::Steps => "--steps",
            Flag::Stylize => "--stylize",
            Flag::Chaos => "--chaos",
            Flag::Model => "--model",
        }
    }

    /// Looks a flag up by the name after its dashes, case-insensitively, aliases included
    /// (`s` for stylize, `c` for chaos, `aspect` for ar).
    fn from_name(name: &str) -> Option<Flag> {
        Some(match name.to_ascii_lowercase().as_str() {
            "ar" | "aspect" => Flag::Ar,
            "seed" => Flag::Seed,
            "no" => Flag::No,
            "steps" => Flag::Steps,
            "stylize" | "s" => Flag::Stylize,
            "chaos" | "c" => Flag::Chaos,
            "model" => Flag::Model,
            _ => return None,
        })
    }

    /// The inclusive range of a numeric flag; `None` for the others.
    fn range(self) -> Option<(u64, u64)> {
        match self {
            Flag::Seed => Some((0, u32::MAX as u64)),
            Flag::Steps => Some((1, 100)),
            Flag::Stylize => Some((0, 1000)),
            Flag::Chaos => Some((0, 100)),
            Flag::Ar | Flag::No | Flag::Model => None,
        }
    }

    /// What the flag accepts, as the end of a sentence.
    fn accepts(self) -> String {
        match self {
            Flag::Ar => "a ratio W:H such as 3:2, between 1:4 and 4:1".to_string(),
            Flag::No => "the words to keep out of the image".to_string(),
            Flag::Model => "a model name".to_string(),
            numeric => {
                let (lo, hi) = numeric.range().expect("numeric flags have a range");
                format!("a whole number from {lo} to {hi}")
            }
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a prompt was refused. `Display` is one short sentence meant for the user.
///
/// Values the user typed are echoed back shortened and without backticks, so a message can
/// neither break its own code span nor grow without bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("Your prompt is empty: write what you want to see before any `--` parameters.")]
    EmptyPrompt,
    #[error("Your prompt is {chars} characters long: keep it to {MAX_PROMPT_CHARS} or fewer.")]
    PromptTooLong { chars: usize },
    #[error(
        "Your message is {chars} characters long: keep the prompt and parameters to {MAX_INPUT_CHARS} or fewer."
    )]
    InputTooLong { chars: usize },
    #[error("Unknown parameter `{}`. Accepted: {}.", shown(.0), accepted_list())]
    UnknownFlag(String),
    #[error("`{flag}` needs a value: {}.", .flag.accepts())]
    MissingValue { flag: Flag },
    #[error("`{flag} {}` is not a number: use {}.", shown(.value), .flag.accepts())]
    NotANumber { flag: Flag, value: String },
    #[error("`{flag} {}` is out of range: use {}.", shown(.value), .flag.accepts())]
    OutOfRange { flag: Flag, value: String },
    #[error("`{flag}` is given twice: give it once.")]
    Duplicate { flag: Flag },
    #[error("`--ar {}` is not a ratio: write it as W:H, for example `--ar 3:2`.", shown(.value))]
    AspectNotARatio { value: String },
    #[error(
        "`--ar {}` is out of range: each side must be 1 to {MAX_ASPECT_SIDE}, for example `--ar 16:9`.",
        shown(.value)
    )]
    AspectSideOutOfRange { value: String },
    #[error("`--ar {}` is too extreme: use a ratio between 1:4 and 4:1.", shown(.value))]
    AspectTooExtreme { value: String },
    #[error(
        "`{}` after `{flag}` is not understood: put all prompt text before the parameters.",
        shown(.word)
    )]
    UnexpectedText { flag: Flag, word: String },
    /// Not raised by [`parse_prompt`]: the caller knows which models are configured.
    #[error("Unknown model `{}`. Available: {}.", shown(.name), listed(.available))]
    UnknownModel {
        name: String,
        available: Vec<String>,
    },
}

fn accepted_list() -> String {
    Flag::ALL.map(Flag::name).join(", ")
}

/// The most names [`ParamError::UnknownModel`] lists; the rest are counted.
const MAX_LISTED_MODELS: usize = 20;

/// A user-typed value made safe to show inside a code span: no backticks or control
/// characters, at most 40 chars.
fn shown(value: &str) -> String {
    const MAX: usize = 40;
    let clean: String = value
        .chars()
        .filter(|&c| c != '`' && !c.is_control())
        .collect();
    if clean.chars().count() <= MAX {
        clean
    } else {
        let mut cut: String = clean.chars().take(MAX - 1).collect();
        cut.push('…');
        cut
    }
}

/// Model names as code spans, shortened like user input (a configuration may hold many, with
/// long names), so the whole reply stays far under Discord's 2,000 characters.
fn listed(names: &[String]) -> String {
    let mut list: Vec<String> = names
        .iter()
        .take(MAX_LISTED_MODELS)
        .map(|n| format!("`{}`", shown(n)))
        .collect();
    if names.len() > MAX_LISTED_MODELS {
        list.push(format!("and {} more", names.len() - MAX_LISTED_MODELS));
    }
    list.join(", ")
}

/// If `token` is a flag (`--name`, or `—name` / `–name` as phones autocorrect it), returns the
/// name after the dashes. A bare dash or a dash followed by a non-letter is ordinary text, so a
/// prompt like "a cat — at night" is left alone.
fn flag_name(token: &str) -> Option<&str> {
    let rest = ["--", "—", "–"]
        .iter()
        .find_map(|dash| token.strip_prefix(dash))?;
    rest.starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some(rest)
}

/// Whitespace-separated tokens with their byte offsets in `input`.
fn tokens(input: &str) -> impl Iterator<Item = (usize, &str)> {
    input.split_whitespace().map(move |token| {
        let offset = token.as_ptr() as usize - input.as_ptr() as usize;
        (offset, token)
    })
}

/// Parses `prompt --flag value ...` into a validated [`ParsedPrompt`].
///
/// Errors are checked in the order a user would fix them: overall length, then the prompt
/// itself, then each parameter from left to right.
pub fn parse_prompt(input: &str) -> Result<ParsedPrompt, ParamError> {
    let chars = input.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(ParamError::InputTooLong { chars });
    }
    let params_start = tokens(input)
        .find(|(_, token)| flag_name(token).is_some())
        .map_or(input.len(), |(offset, _)| offset);
    let prompt = input[..params_start].trim();
    if prompt.is_empty() {
        return Err(ParamError::EmptyPrompt);
    }
    let prompt_chars = prompt.chars().count();
    if prompt_chars > MAX_PROMPT_CHARS {
        return Err(ParamError::PromptTooLong {
            chars: prompt_chars,
        });
    }
    let mut parsed = ParsedPrompt {
        prompt: prompt.to_string(),
        negative: String::new(),
        aspect: Aspect::default(),
        seed: None,
        steps: None,
        stylize: None,
        chaos: 0,
        model: None,
    };
    parse_params(&input[params_start..], &mut parsed)?;
    Ok(parsed)
}

/// Applies the parameters in `text` (which starts at the first flag) to `parsed`.
fn parse_params(text: &str, parsed: &mut ParsedPrompt) -> Result<(), ParamError> {
    let mut seen: Vec<Flag> = Vec::new();
    let mut negatives: Vec<String> = Vec::new();
    let mut words = text.split_whitespace().peekable();
    while let Some(token) = words.next() {
        let Some(name) = flag_name(token) else {
            // Only reachable after a flag that takes a single value.
            let flag = *seen.last().expect("text starts with a flag");
            return Err(ParamError::UnexpectedText {
                flag,
                word: token.to_string(),
            });
        };
        let flag = Flag::from_name(name).ok_or_else(|| ParamError::UnknownFlag(token.into()))?;
        if flag != Flag::No && seen.contains(&flag) {
            return Err(ParamError::Duplicate { flag });
        }
        seen.push(flag);
        if flag == Flag::No {
            let mut phrase: Vec<&str> = Vec::new();
            while let Some(word) = words.next_if(|w| flag_name(w).is_none()) {
                phrase.push(word);
            }
            if phrase.is_empty() {
                return Err(ParamError::MissingValue { flag });
            }
            negatives.push(phrase.join(" "));
            continue;
        }
        let value = words
            .next_if(|w| flag_name(w).is_none())
            .ok_or(ParamError::MissingValue { flag })?;
        apply_value(flag, value, parsed)?;
    }
    parsed.negative = negatives.join(", ");
    Ok(())
}

fn apply_value(flag: Flag, value: &str, parsed: &mut ParsedPrompt) -> Result<(), ParamError> {
    match flag {
        Flag::Ar => parsed.aspect = parse_aspect(value)?,
        Flag::Model => parsed.model = Some(value.to_string()),
        Flag::Seed => parsed.seed = Some(parse_number(flag, value)?),
        Flag::Steps => parsed.steps = Some(parse_number(flag, value)?),
        Flag::Stylize => parsed.stylize = Some(parse_number(flag, value)?),
        Flag::Chaos => parsed.chaos = parse_number(flag, value)?,
        Flag::No => unreachable!("--no is handled by the caller"),
    }
    Ok(())
}

/// A whole number within the flag's range. Anything made only of digits (with an optional
/// sign) is a number, so `-1` and `99999999999999999999` are out of range, not "not a number".
fn parse_number(flag: Flag, value: &str) -> Result<u32, ParamError> {
    let (lo, hi) = flag.range().expect("numeric flag");
    let (negative, digits) = match value.strip_prefix(['-', '+']) {
        Some(digits) => (value.starts_with('-'), digits),
        None => (false, value),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParamError::NotANumber {
            flag,
            value: value.to_string(),
        });
    }
    let out_of_range = || ParamError::OutOfRange {
        flag,
        value: value.to_string(),
    };
    let n: u64 = digits.parse().map_err(|_| out_of_range())?;
    if (negative && n != 0) || n < lo || n > hi {
        return Err(out_of_range());
    }
    u32::try_from(n).map_err(|_| out_of_range())
}

/// `W:H` with whole sides 1..=21 and a ratio within 1:4..=4:1. The ratio is checked before the
/// sides, so `--ar 100:1` is reported as too extreme rather than too large.
fn parse_aspect(value: &str) -> Result<Aspect, ParamError> {
    let not_ratio = || ParamError::AspectNotARatio {
        value: value.to_string(),
    };
    let (w, h) = value.split_once(':').ok_or_else(not_ratio)?;
    let side = |s: &str| -> Result<u64, ParamError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_ratio());
        }
        // Absurdly long digit strings saturate: they are out of range either way.
        Ok(s.parse().unwrap_or(u64::MAX))
    };
    let (w, h) = (side(w)?, side(h)?);
    let sides_error = || ParamError::AspectSideOutOfRange {
        value: value.to_string(),
    };
    if w == 0 || h == 0 {
        return Err(sides_error());
    }
    let max = u128::from(MAX_ASPECT_RATIO);
    if u128::from(w) > max * u128::from(h) || u128::from(h) > max * u128::from(w) {
        return Err(ParamError::AspectTooExtreme {
            value: value.to_string(),
        });
    }
    if w > u64::from(MAX_ASPECT_SIDE) || h > u64::from(MAX_ASPECT_SIDE) {
        return Err(sides_error());
    }
    Ok(Aspect {
        w: w as u32,
        h: h as u32,
    })
}

/// The pixel size to generate for `aspect` on a model whose native resolution is
/// `native`x`native`.
///
/// Both sides are multiples of 64 (the latent grid of SD-style models), at least 64. Among all
/// such sizes, this returns the one with the lowest cost
///
/// `|ln(w·h / native²)| + |ln((w/h) / (W/H))|`
///
/// that is, the relative error of the pixel count plus the relative error of the ratio, both in
/// log space and weighted equally. Log space makes the rule symmetric: 2:3 gives exactly the
/// transpose of 3:2, and 10% too many pixels costs as much as 10% too few. Equal costs (within
/// float noise) go to the closer ratio, then to the fewer pixels (cheaper), then the narrower.
/// `native` below 64 is taken as 64.
///
/// | `--ar` | native 512 | native 768 |
/// |--------|------------|------------|
/// | 1:1    | 512x512    | 768x768    |
/// | 4:3    | 576x448    | 896x640    |
/// | 3:2    | 640x448    | 960x640    |
/// | 16:9   | 704x384    | 1024x576   |
/// | 2:1    | 768x384    | 1024x512   |
/// | 4:1    | 1024x256   | 1536x384   |
pub fn size_for_aspect(aspect: Aspect, native: u32) -> (u32, u32) {
    const GRID: u32 = 64;
    let native = native.max(GRID);
    let target = SizeTarget {
        area: f64::from(native) * f64::from(native),
        ratio: f64::from(aspect.w.max(1)) / f64::from(aspect.h.max(1)),
    };
    // Ratios are at most 4:1, so no side needs more than 2x native; 4x leaves ample room.
    let max_side = native.saturating_mul(4).div_ceil(GRID) * GRID;
    let sides = || (GRID..=max_side).step_by(GRID as usize);
    sides()
        .flat_map(|h| sides().map(move |w| (w, h)))
        .reduce(|best, candidate| {
            if target.prefers(candidate, best) {
                candidate
            } else {
                best
            }
        })
        .expect("the grid is never empty")
}

/// What [`size_for_aspect`] aims at.
struct SizeTarget {
    area: f64,
    ratio: f64,
}

impl SizeTarget {
    fn ratio_error(&self, (w, h): (u32, u32)) -> f64 {
        (f64::from(w) / f64::from(h) / self.ratio).ln().abs()
    }

    fn cost(&self, (w, h): (u32, u32)) -> f64 {
        (f64::from(w) * f64::from(h) / self.area).ln().abs() + self.ratio_error((w, h))
    }

    /// Whether size `a` beats size `b`. Costs within 1e-9 are ties: several sizes can be
    /// exactly as good on paper (512 @ 2:1: 768x384 and 704x384), and float noise must not
    /// pick between them.
    fn prefers(&self, a: (u32, u32), b: (u32, u32)) -> bool {
        const EPS: f64 = 1e-9;
        let order = |x: f64, y: f64| {
            if x < y - EPS {
                Some(true)
            } else if x > y + EPS {
                Some(false)
            } else {
                None
            }
        };
        order(self.cost(a), self.cost(b))
            .or_else(|| order(self.ratio_error(a), self.ratio_error(b)))
            .unwrap_or(
                (u64::from(a.0) * u64::from(a.1), a.0) < (u64::from(b.0) * u64::from(b.1), b.0),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> ParsedPrompt {
        parse_prompt(input).unwrap_or_else(|e| panic!("{input:?} should parse, got: {e}"))
    }

    fn error(input: &str) -> ParamError {
        match parse_prompt(input) {
            Ok(p) => panic!("{input:?} should be refused, got {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_prompt_gets_the_defaults() {
        let p = parse("  a brown puppy on the beach  ");
        assert_eq!(
            p,
            ParsedPrompt {
                prompt: "a brown puppy on the beach".into(),
                negative: String::new(),
                aspect: Aspect { w: 1, h: 1 },
                seed: None,
                steps: None,
                stylize: None,
                chaos: 0,
                model: None,
            }
        );
    }

    #[test]
    fn every_parameter_is_read() {
        let p = parse(
            "a puppy --ar 3:2 --seed 42 --no grass trees --steps 30 --stylize 250 --chaos 10 --model sd-turbo",
        );
        assert_eq!(p.prompt, "a puppy");
        assert_eq!(p.aspect, Aspect { w: 3, h: 2 });
        assert_eq!(p.seed, Some(42));
        assert_eq!(p.negative, "grass trees");
        assert_eq!(p.steps, Some(30));
        assert_eq!(p.stylize, Some(250));
        assert_eq!(p.chaos, 10);
        assert_eq!(p.model.as_deref(), Some("sd-turbo"));
    }

    #[test]
    fn short_aliases_and_upper_case_flags() {
        let p = parse("cat --s 100 --c 5 --AR 16:9 --Seed 9");
        assert_eq!(p.stylize, Some(100));
        assert_eq!(p.chaos, 5);
        assert_eq!(p.aspect, Aspect { w: 16, h: 9 });
        assert_eq!(p.seed, Some(9));
        let p = parse("cat --aspect 2:3");
        assert_eq!(p.aspect, Aspect { w: 2, h: 3 });
    }

    #[test]
    fn phone_dashes_are_flags() {
        let p = parse("a fox —ar 4:3 –seed 7 —no snow");
        assert_eq!(p.prompt, "a fox");
        assert_eq!(p.aspect, Aspect { w: 4, h: 3 });
        assert_eq!(p.seed, Some(7));
        assert_eq!(p.negative, "snow");
    }

    #[test]
    fn dashes_inside_the_prompt_are_text() {
        let p = parse("a cat — at night -- moody, well-lit, x--y --seed 1");
        assert_eq!(p.prompt, "a cat — at night -- moody, well-lit, x--y");
        assert_eq!(p.seed, Some(1));
    }

    #[test]
    fn prompt_keeps_its_inner_whitespace_and_lines() {
        let p = parse("line one\nline  two\t--seed 3");
        assert_eq!(p.prompt, "line one\nline  two");
    }

    #[test]
    fn several_no_are_joined_with_commas() {
        let p = parse("room --no chairs --ar 2:1 --no red walls --no people");
        assert_eq!(p.negative, "chairs, red walls, people");
        assert_eq!(p.aspect, Aspect { w: 2, h: 1 });
    }

    #[test]
    fn numeric_bounds_are_inclusive() {
        let p = parse("x --seed 4294967295 --steps 100 --stylize 1000 --chaos 100");
        assert_eq!(
            (p.seed, p.steps, p.stylize, p.chaos),
            (Some(u32::MAX), Some(100), Some(1000), 100)
        );
        let p = parse("x --seed 0 --steps 1 --stylize 0 --chaos 0");
        assert_eq!(
            (p.seed, p.steps, p.stylize, p.chaos),
            (Some(0), Some(1), Some(0), 0)
        );
        assert_eq!(parse("x --seed +5").seed, Some(5));
    }

    #[test]
    fn aspect_limits_are_inclusive() {
        assert_eq!(parse("x --ar 4:1").aspect, Aspect { w: 4, h: 1 });
        assert_eq!(parse("x --ar 1:4").aspect, Aspect { w: 1, h: 4 });
        assert_eq!(parse("x --ar 21:20").aspect, Aspect { w: 21, h: 20 });
        assert_eq!(parse("x --ar 20:21").aspect, Aspect { w: 20, h: 21 });
        assert_eq!(parse("x --ar 21:21").aspect, Aspect { w: 21, h: 21 });
    }

    #[test]
    fn length_limits_count_characters_not_bytes() {
        let prompt = "é".repeat(MAX_PROMPT_CHARS);
        assert_eq!(parse(&prompt).prompt.chars().count(), MAX_PROMPT_CHARS);
        let too_long = "é".repeat(MAX_PROMPT_CHARS + 1);
        assert_eq!(
            error(&too_long),
            ParamError::PromptTooLong {
                chars: MAX_PROMPT_CHARS + 1
            }
        );
        // 4000 characters in all, most of them in --no: accepted.
        let input = format!("cat --no {}", "a".repeat(MAX_INPUT_CHARS - 9));
        assert_eq!(input.chars().count(), MAX_INPUT_CHARS);
        assert_eq!(parse(&input).negative.len(), MAX_INPUT_CHARS - 9);
        let input = format!("cat --no {}", "a".repeat(MAX_INPUT_CHARS - 8));
        assert_eq!(
            error(&input),
            ParamError::InputTooLong {
                chars: MAX_INPUT_CHARS + 1
            }
        );
    }

    #[test]
    fn empty_prompts_are_refused() {
        for input in ["", "   ", "\n\t", "--ar 3:2", " —seed 4 "] {
            assert_eq!(error(input), ParamError::EmptyPrompt, "{input:?}");
        }
    }

    #[test]
    fn unknown_flags_are_refused_and_listed() {
        let e = error("cat --foo 3");
        assert_eq!(e, ParamError::UnknownFlag("--foo".into()));
        assert_eq!(
            e.to_string(),
            "Unknown parameter `--foo`. Accepted: --ar, --seed, --no, --steps, --stylize, --chaos, --model."
        );
        assert_eq!(
            error("cat —quality 2"),
            ParamError::UnknownFlag("—quality".into())
        );
    }

    #[test]
    fn missing_values_are_refused() {
        for (input, flag) in [
            ("cat --ar", Flag::Ar),
            ("cat --seed", Flag::Seed),
            ("cat --seed --ar 3:2", Flag::Seed),
            ("cat --no", Flag::No),
            ("cat --no --seed 2", Flag::No),
            ("cat --steps", Flag::Steps),
            ("cat --s", Flag::Stylize),
            ("cat --chaos", Flag::Chaos),
            ("cat --model", Flag::Model),
        ] {
            assert_eq!(error(input), ParamError::MissingValue { flag }, "{input:?}");
        }
        assert_eq!(
            error("cat --steps").to_string(),
            "`--steps` needs a value: a whole number from 1 to 100."
        );
    }

    #[test]
    fn non_numbers_are_refused() {
        for (input, flag, value) in [
            ("cat --seed abc", Flag::Seed, "abc"),
            ("cat --steps 2.5", Flag::Steps, "2.5"),
            ("cat --stylize 1e3", Flag::Stylize, "1e3"),
            ("cat --chaos -", Flag::Chaos, "-"),
            ("cat --seed 0x10", Flag::Seed, "0x10"),
        ] {
            assert_eq!(
                error(input),
                ParamError::NotANumber {
                    flag,
                    value: value.into()
                },
                "{input:?}"
            );
        }
        assert_eq!(
            error("cat --seed abc").to_string(),
            "`--seed abc` is not a number: use a whole number from 0 to 4294967295."
        );
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        for (input, flag, value) in [
            ("cat --seed 4294967296", Flag::Seed, "4294967296"),
            ("cat --seed -1", Flag::Seed, "-1"),
            (
                "cat --seed 99999999999999999999999",
                Flag::Seed,
                "99999999999999999999999",
            ),
            ("cat --steps 0", Flag::Steps, "0"),
            ("cat --steps 101", Flag::Steps, "101"),
            ("cat --stylize 1001", Flag::Stylize, "1001"),
            ("cat --s -3", Flag::Stylize, "-3"),
            ("cat --chaos 101", Flag::Chaos, "101"),
            ("cat --c 500", Flag::Chaos, "500"),
        ] {
            assert_eq!(
                error(input),
                ParamError::OutOfRange {
                    flag,
                    value: value.into()
                },
                "{input:?}"
            );
        }
        assert_eq!(
            error("cat --chaos 101").to_string(),
            "`--chaos 101` is out of range: use a whole number from 0 to 100."
        );
        assert_eq!(
            error("cat --stylize 5000").to_string(),
            "`--stylize 5000` is out of range: use a whole number from 0 to 1000."
        );
    }

    #[test]
    fn repeated_flags_are_refused_except_no() {
        assert_eq!(
            error("cat --seed 1 --seed 2"),
            ParamError::Duplicate { flag: Flag::Seed }
        );
        assert_eq!(
            error("cat --s 1 --stylize 2"),
            ParamError::Duplicate {
                flag: Flag::Stylize
            }
        );
        assert_eq!(
            error("cat --ar 1:1 —ar 2:1"),
            ParamError::Duplicate { flag: Flag::Ar }
        );
        assert_eq!(
            error("cat --model a --model b").to_string(),
            "`--model` is given twice: give it once."
        );
    }

    #[test]
    fn malformed_ratios_are_refused() {
        for value in [
            "3x2", "3:", ":2", "3:2:1", "a:b", "1.5:1", "-3:2", "3", "3 :2",
        ] {
            let input = format!("cat --ar {value}");
            let e = error(&input);
            let expected_value = value.split_whitespace().next().unwrap();
            assert_eq!(
                e,
                ParamError::AspectNotARatio {
                    value: expected_value.into()
                },
                "{input:?}"
            );
        }
        assert_eq!(
            error("cat --ar 3x2").to_string(),
            "`--ar 3x2` is not a ratio: write it as W:H, for example `--ar 3:2`."
        );
    }

    #[test]
    fn extreme_ratios_are_refused() {
        for value in [
            "100:1",
            "1:100",
            "5:1",
            "9:2",
            "1:5",
            "21:5",
            "99999999999999999999999:1",
        ] {
            assert_eq!(
                error(&format!("cat --ar {value}")),
                ParamError::AspectTooExtreme {
                    value: value.into()
                },
                "{value}"
            );
        }
        assert_eq!(
            error("cat --ar 100:1").to_string(),
            "`--ar 100:1` is too extreme: use a ratio between 1:4 and 4:1."
        );
    }

    #[test]
    fn ratio_sides_must_be_1_to_21() {
        for value in ["0:1", "1:0", "0:0", "32:18", "22:22", "1920:1080"] {
            assert_eq!(
                error(&format!("cat --ar {value}")),
                ParamError::AspectSideOutOfRange {
                    value: value.into()
                },
                "{value}"
            );
        }
        assert_eq!(
            error("cat --ar 32:18").to_string(),
            "`--ar 32:18` is out of range: each side must be 1 to 21, for example `--ar 16:9`."
        );
    }

    #[test]
    fn stray_words_after_a_value_are_refused() {
        assert_eq!(
            error("cat --ar 3:2 on a mat"),
            ParamError::UnexpectedText {
                flag: Flag::Ar,
                word: "on".into()
            }
        );
        assert_eq!(
            error("cat --seed 1 2").to_string(),
            "`2` after `--seed` is not understood: put all prompt text before the parameters."
        );
    }

    #[test]
    fn the_first_error_from_the_left_wins() {
        assert_eq!(
            error("cat --bogus --seed x"),
            ParamError::UnknownFlag("--bogus".into())
        );
        assert_eq!(
            error("cat --seed x --bogus"),
            ParamError::NotANumber {
                flag: Flag::Seed,
                value: "x".into()
            }
        );
    }

    #[test]
    fn echoed_values_are_short_and_cannot_break_code_spans() {
        let e = error(&format!("cat --seed `{}`", "9".repeat(100)));
        let message = e.to_string();
        assert_eq!(message.matches('`').count(), 2, "{message}");
        assert!(message.chars().count() < 120, "{message}");
        assert!(message.contains('…'));
    }

    #[test]
    fn an_unknown_model_reply_stays_short_whatever_the_names() {
        let e = ParamError::UnknownModel {
            name: "nope".into(),
            available: vec!["sd-turbo".into(), "sd15".into()],
        };
        assert_eq!(
            e.to_string(),
            "Unknown model `nope`. Available: `sd-turbo`, `sd15`."
        );
        let e = ParamError::UnknownModel {
            name: format!("`{}\n@everyone", "m".repeat(5000)),
            available: (0..1000)
                .map(|i| format!("model-{i}-{}", "x".repeat(300)))
                .collect(),
        };
        let message = e.to_string();
        assert!(message.chars().count() <= 1200, "{}", message.len());
        assert!(!message.contains('\n'), "{message}");
        assert!(message.ends_with("and 980 more."), "{message}");
        let name_shown = message.split('`').nth(1).unwrap();
        assert_eq!(name_shown.chars().count(), 40, "{name_shown}");
    }

    #[test]
    fn every_error_is_one_short_sentence() {
        let inputs = [
            "",
            &"x".repeat(MAX_PROMPT_CHARS + 1),
            &"x".repeat(MAX_INPUT_CHARS + 1),
            "a --foo",
            "a --seed",
            "a --seed x",
            "a --seed -1",
            "a --seed 1 --seed 1",
            "a --ar 3",
            "a --ar 0:1",
            "a --ar 9:1",
            "a --ar 1:1 b",
        ];
        for input in inputs {
            let message = error(input).to_string();
            assert!(message.ends_with('.'), "{message}");
            assert!(message.chars().count() <= 120, "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    fn size(w: u32, h: u32, native: u32) -> (u32, u32) {
        size_for_aspect(Aspect { w, h }, native)
    }

    #[test]
    fn sizes_for_native_512() {
        assert_eq!(size(1, 1, 512), (512, 512));
        assert_eq!(size(3, 2, 512), (640, 448));
        assert_eq!(size(16, 9, 512), (704, 384));
        assert_eq!(size(4, 3, 512), (576, 448));
        assert_eq!(size(2, 1, 512), (768, 384));
        assert_eq!(size(3, 1, 512), (960, 320));
        assert_eq!(size(4, 1, 512), (1024, 256));
        assert_eq!(size(1, 4, 512), (256, 1024));
    }

    #[test]
    fn sizes_for_native_768() {
        assert_eq!(size(1, 1, 768), (768, 768));
        assert_eq!(size(3, 2, 768), (960, 640));
        assert_eq!(size(4, 3, 768), (896, 640));
        assert_eq!(size(16, 9, 768), (1024, 576));
        assert_eq!(size(2, 1, 768), (1024, 512));
        assert_eq!(size(4, 1, 768), (1536, 384));
    }

    #[test]
    fn sizes_are_on_the_grid_and_near_the_budget_for_every_accepted_ratio() {
        for native in [512, 768, 1024] {
            for w in 1..=MAX_ASPECT_SIDE {
                for h in 1..=MAX_ASPECT_SIDE {
                    if w > 4 * h || h > 4 * w {
                        continue;
                    }
                    let (pw, ph) = size(w, h, native);
                    assert!(pw % 64 == 0 && ph % 64 == 0 && pw >= 64 && ph >= 64);
                    let area = f64::from(pw * ph) / f64::from(native * native);
                    assert!(
                        (0.8..=1.25).contains(&area),
                        "{w}:{h}@{native} -> {pw}x{ph}"
                    );
                    let ratio = f64::from(pw) / f64::from(ph) / (f64::from(w) / f64::from(h));
                    assert!(
                        (0.88..=1.13).contains(&ratio),
                        "{w}:{h}@{native} -> {pw}x{ph}"
                    );
                    // Wider asked means at least as wide given.
                    if w > h {
                        assert!(pw >= ph, "{w}:{h}@{native} -> {pw}x{ph}");
                    }
                    // The rule is symmetric: the transposed ratio gives the transposed size.
                    assert_eq!(size(h, w, native), (ph, pw), "{w}:{h}@{native}");
                }
            }
        }
    }

    #[test]
    fn tiny_natives_still_give_a_usable_size() {
        assert_eq!(size(1, 1, 0), (64, 64));
        // On a 1x1 grid of 64 px, keeping the ratio (4x the pixels) ties with keeping the
        // pixel count (a square); the ratio wins ties.
        assert_eq!(size(4, 1, 10), (256, 64));
    }
}
