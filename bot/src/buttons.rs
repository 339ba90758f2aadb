//! The `custom_id` codec for the buttons under a result.
//!
//! A button must keep working after the bot restarts, so its `custom_id` carries everything
//! needed to find its job again, and nothing more: the action, the job id and, for U/V, the
//! image index. Everything else (prompt, seeds, size, who asked) is read back from the
//! [store](crate::store). Discord caps a `custom_id` at 100 characters; ours are at most 27.
//!
//! Format, version-tagged so a later layout can coexist with buttons already posted:
//!
//! | button          | custom_id          |
//! |-----------------|--------------------|
//! | U1..U4          | `im1:u:<job>:<0-3>` |
//! | V1..V4          | `im1:v:<job>:<0-3>` |
//! | 🔄 reroll       | `im1:r:<job>`      |
//! | Vary (Subtle)   | `im1:vs:<job>`     |
//! | Vary (Strong)   | `im1:vx:<job>`     |
//! | Vary (Region)   | `im1:vr:<job>`     |
//! | its region menu (a select) | `im1:vrp:<job>` |
//! | Upscale (Subtle)   | `im1:us:<job>` |
//! | Upscale (Creative) | `im1:uc:<job>` |
//! | Zoom Out 2x     | `im1:z2:<job>`     |
//! | Zoom Out 1.5x   | `im1:z15:<job>`    |
//! | Custom Zoom     | `im1:zc:<job>`     |
//! | its modal       | `im1:zcf:<job>`    |
//! | ⬅️ ➡️ ⬆️ ⬇️ pan   | `im1:pl:<job>`, `im1:pr:<job>`, `im1:pu:<job>`, `im1:pd:<job>` |
//! | ❌ cancel       | `im1:x:<job>`      |
//!
//! `<job>` is a non-negative decimal without leading zeros, so every accepted string is the
//! encoding of exactly one [`ButtonId`] and `encode(parse(s)) == s`.

use imagine_engine::outpaint::Direction;

use crate::store::{JobId, JobKind};

/// Discord's limit on a component's `custom_id`.
pub const MAX_CUSTOM_ID_LEN: usize = 100;
/// How many images a grid holds: U and V indices are `0..GRID_IMAGES`.
pub const GRID_IMAGES: u8 = 4;

const PREFIX: &str = "im1";

/// What a button asks for. Indices are 0-based (`Upscale(0)` is the button labelled U1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ButtonAction {
    /// That image alone, full size.
    Upscale(u8),
    /// Four variations of that image.
    Variation(u8),
    /// The same prompt and parameters with new seeds.
    Reroll,
    /// Under a single image: a close variation.
    VarySubtle,
    /// Under a single image: a loose variation.
    VaryStrong,
    /// Under a single image: opens the (private) menu of areas to repaint.
    VaryRegion,
    /// That menu: the areas picked start the repainting job.
    RegionPick,
    /// Under a single image: twice the size, repainted lightly (or more, `creative`).
    UpscaleTiled { creative: bool },
    /// Under a single image: four pictures around it, it shrunk by 2 (`true`) or 1.5.
    ZoomOut { double: bool },
    /// Under a single image: opens the Custom Zoom modal (prompt, `--zoom`, `--ar`).
    CustomZoom,
    /// That modal, submitted: starts the zoom.
    CustomZoomForm,
    /// Under a single image: four pictures extending it half a side that way.
    Pan(Direction),
    /// Under a queued or running job: stop it. Starts no job.
    Cancel,
}

impl ButtonAction {
    /// The buttons under a finished grid, row by row: `U1..U4 🔄`, then `V1..V4`.
    pub const GRID_ROWS: [&[ButtonAction]; 2] = [
        &[
            ButtonAction::Upscale(0),
            ButtonAction::Upscale(1),
            ButtonAction::Upscale(2),
            ButtonAction::Upscale(3),
            ButtonAction::Reroll,
        ],
        &[
            ButtonAction::Variation(0),
            ButtonAction::Variation(1),
            ButtonAction::Variation(2),
            ButtonAction::Variation(3),
        ],
    ];

    /// The buttons under a single (upscaled) image, row by row, as Midjourney lays them out.
    pub const SINGLE_ROWS: [&[ButtonAction]; 4] = [
        &[
            ButtonAction::VarySubtle,
            ButtonAction::VaryStrong,
            ButtonAction::VaryRegion,
        ],
        &[
            ButtonAction::UpscaleTiled { creative: false },
            ButtonAction::UpscaleTiled { creative: true },
        ],
        &[
            ButtonAction::ZoomOut { double: true },
            ButtonAction::ZoomOut { double: false },
            ButtonAction::CustomZoom,
        ],
        &[
            ButtonAction::Pan(Direction::Left),
            ButtonAction::Pan(Direction::Right),
            ButtonAction::Pan(Direction::Up),
            ButtonAction::Pan(Direction::Down),
        ],
    ];

    /// The button's text, or `None` for the emoji-only reroll button.
    pub fn label(&self) -> Option<String> {
        match self {
            ButtonAction::Upscale(i) => Some(format!("U{}", u16::from(*i) + 1)),
            ButtonAction::Variation(i) => Some(format!("V{}", u16::from(*i) + 1)),
            ButtonAction::Reroll => None,
            ButtonAction::VarySubtle => Some("Vary (Subtle)".to_string()),
            ButtonAction::VaryStrong => Some("Vary (Strong)".to_string()),
            ButtonAction::VaryRegion => Some("Vary (Region)".to_string()),
            ButtonAction::RegionPick => Some("Pick the parts to repaint".to_string()),
            ButtonAction::UpscaleTiled { creative: false } => Some("Upscale (Subtle)".to_string()),
            ButtonAction::UpscaleTiled { creative: true } => Some("Upscale (Creative)".to_string()),
            ButtonAction::ZoomOut { double: true } => Some("Zoom Out 2x".to_string()),
            ButtonAction::ZoomOut { double: false } => Some("Zoom Out 1.5x".to_string()),
            ButtonAction::CustomZoom => Some("Custom Zoom".to_string()),
            ButtonAction::CustomZoomForm => Some("Custom Zoom".to_string()),
            ButtonAction::Pan(_) | ButtonAction::Cancel => None,
        }
    }

    /// The button's emoji, if it has one.
    pub fn emoji(&self) -> Option<&'static str> {
        match self {
            ButtonAction::Reroll => Some("🔄"),
            ButtonAction::Cancel => Some("❌"),
            ButtonAction::Pan(Direction::Left) => Some("⬅️"),
            ButtonAction::Pan(Direction::Right) => Some("➡️"),
            ButtonAction::Pan(Direction::Up) => Some("⬆️"),
            ButtonAction::Pan(Direction::Down) => Some("⬇️"),
            _ => None,
        }
    }

    /// The kind of job a click starts; `None` for [`ButtonAction::Cancel`], which starts none.
    pub fn job_kind(&self) -> Option<JobKind> {
        match self {
            ButtonAction::Upscale(_) => Some(JobKind::Upscale),
            ButtonAction::Variation(_) => Some(JobKind::Variation),
            ButtonAction::Reroll => Some(JobKind::Reroll),
            ButtonAction::VarySubtle => Some(JobKind::VarySubtle),
            ButtonAction::VaryStrong => Some(JobKind::VaryStrong),
            ButtonAction::VaryRegion | ButtonAction::RegionPick => Some(JobKind::VaryRegion),
            ButtonAction::UpscaleTiled { creative: false } => Some(JobKind::UpscaleSubtle),
            ButtonAction::UpscaleTiled { creative: true } => Some(JobKind::UpscaleCreative),
            ButtonAction::ZoomOut { .. }
            | ButtonAction::CustomZoom
            | ButtonAction::CustomZoomForm => Some(JobKind::ZoomOut),
            ButtonAction::Pan(_) => Some(JobKind::Pan),
            ButtonAction::Cancel => None,
        }
    }

    /// The image of the parent job the action is about, for U and V.
    pub fn index(&self) -> Option<u8> {
        match self {
            ButtonAction::Upscale(i) | ButtonAction::Variation(i) => Some(*i),
            _ => None,
        }
    }
}

/// A button: what it does, and to which job. Its `custom_id` is [`ButtonId::encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ButtonId {
    pub action: ButtonAction,
    pub job: JobId,
}

impl ButtonId {
    pub fn new(action: ButtonAction, job: JobId) -> Self {
        ButtonId { action, job }
    }

    /// The `custom_id`, e.g. `im1:u:123:2`. Only ids with an index below [`GRID_IMAGES`] and a
    /// non-negative job are meaningful; the store hands out nothing else.
    pub fn encode(&self) -> String {
        debug_assert!(self.job.0 >= 0, "job ids are never negative");
        debug_assert!(self.action.index().is_none_or(|i| i < GRID_IMAGES));
        let job = self.job.0;
        match self.action {
            ButtonAction::Upscale(i) => format!("{PREFIX}:u:{job}:{i}"),
            ButtonAction::Variation(i) => format!("{PREFIX}:v:{job}:{i}"),
            ButtonAction::Reroll => format!("{PREFIX}:r:{job}"),
            ButtonAction::VarySubtle => format!("{PREFIX}:vs:{job}"),
            ButtonAction::VaryStrong => format!("{PREFIX}:vx:{job}"),
            ButtonAction::VaryRegion => format!("{PREFIX}:vr:{job}"),
            ButtonAction::RegionPick => format!("{PREFIX}:vrp:{job}"),
            ButtonAction::UpscaleTiled { creative: false } => format!("{PREFIX}:us:{job}"),
            ButtonAction::UpscaleTiled { creative: true } => format!("{PREFIX}:uc:{job}"),
            ButtonAction::ZoomOut { double: true } => format!("{PREFIX}:z2:{job}"),
            ButtonAction::ZoomOut { double: false } => format!("{PREFIX}:z15:{job}"),
            ButtonAction::CustomZoom => format!("{PREFIX}:zc:{job}"),
            ButtonAction::CustomZoomForm => format!("{PREFIX}:zcf:{job}"),
            ButtonAction::Pan(d) => format!("{PREFIX}:p{}:{job}", &d.name()[..1]),
            ButtonAction::Cancel => format!("{PREFIX}:x:{job}"),
        }
    }

    /// Reads a `custom_id` back. Strict: anything that [`encode`](Self::encode) would not
    /// produce is `None` (other prefixes, unknown actions, missing or extra parts, signs,
    /// leading zeros, an index outside 0..4, ids beyond `i64`, over 100 characters).
    pub fn parse(custom_id: &str) -> Option<ButtonId> {
        if custom_id.len() > MAX_CUSTOM_ID_LEN {
            return None;
        }
        let mut parts = custom_id.split(':');
        if parts.next()? != PREFIX {
            return None;
        }
        let code = parts.next()?;
        let job = JobId(parse_canonical(parts.next()?)?);
        let action = match code {
            "u" => ButtonAction::Upscale(parse_index(parts.next()?)?),
            "v" => ButtonAction::Variation(parse_index(parts.next()?)?),
            "r" => ButtonAction::Reroll,
            "vs" => ButtonAction::VarySubtle,
            "vx" => ButtonAction::VaryStrong,
            "vr" => ButtonAction::VaryRegion,
            "vrp" => ButtonAction::RegionPick,
            "us" => ButtonAction::UpscaleTiled { creative: false },
            "uc" => ButtonAction::UpscaleTiled { creative: true },
            "z2" => ButtonAction::ZoomOut { double: true },
            "z15" => ButtonAction::ZoomOut { double: false },
            "zc" => ButtonAction::CustomZoom,
            "zcf" => ButtonAction::CustomZoomForm,
            "pl" => ButtonAction::Pan(Direction::Left),
            "pr" => ButtonAction::Pan(Direction::Right),
            "pu" => ButtonAction::Pan(Direction::Up),
            "pd" => ButtonAction::Pan(Direction::Down),
            "x" => ButtonAction::Cancel,
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(ButtonId { action, job })
    }
}

/// A non-negative `i64` written in canonical decimal: digits only, no leading zeros.
fn parse_canonical(digits: &str) -> Option<i64> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok()
}

fn parse_index(digit: &str) -> Option<u8> {
    match digit.as_bytes() {
        [d @ b'0'..=b'3'] => Some(*d - b'0'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_actions() -> Vec<ButtonAction> {
        let mut actions: Vec<ButtonAction> = (0..GRID_IMAGES)
            .flat_map(|i| [ButtonAction::Upscale(i), ButtonAction::Variation(i)])
            .collect();
        actions.extend([
            ButtonAction::Reroll,
            ButtonAction::VarySubtle,
            ButtonAction::VaryStrong,
            ButtonAction::RegionPick,
            ButtonAction::CustomZoomForm,
            ButtonAction::Cancel,
        ]);
        actions.extend(
            ButtonAction::SINGLE_ROWS
                .iter()
                .flat_map(|r| r.iter().copied()),
        );
        actions
    }

    #[test]
    fn encodings_are_compact_and_documented() {
        let id = |action| ButtonId::new(action, JobId(123)).encode();
        assert_eq!(id(ButtonAction::Upscale(2)), "im1:u:123:2");
        assert_eq!(id(ButtonAction::Variation(0)), "im1:v:123:0");
        assert_eq!(id(ButtonAction::Reroll), "im1:r:123");
        assert_eq!(id(ButtonAction::VarySubtle), "im1:vs:123");
        assert_eq!(id(ButtonAction::VaryStrong), "im1:vx:123");
        assert_eq!(id(ButtonAction::Cancel), "im1:x:123");
        assert_eq!(id(ButtonAction::VaryRegion), "im1:vr:123");
        assert_eq!(id(ButtonAction::RegionPick), "im1:vrp:123");
        assert_eq!(id(ButtonAction::CustomZoom), "im1:zc:123");
        assert_eq!(id(ButtonAction::CustomZoomForm), "im1:zcf:123");
        assert_eq!(id(ButtonAction::ZoomOut { double: true }), "im1:z2:123");
        assert_eq!(id(ButtonAction::ZoomOut { double: false }), "im1:z15:123");
        assert_eq!(id(ButtonAction::Pan(Direction::Left)), "im1:pl:123");
        assert_eq!(id(ButtonAction::Pan(Direction::Down)), "im1:pd:123");
    }

    #[test]
    fn a_single_image_has_the_toolbox_within_discords_limits() {
        let rows = ButtonAction::SINGLE_ROWS;
        assert!(rows.len() <= 5 && rows.iter().all(|r| !r.is_empty() && r.len() <= 5));
        let shown: Vec<String> = rows
            .iter()
            .flat_map(|r| r.iter())
            .map(|a| a.label().or(a.emoji().map(str::to_string)).unwrap())
            .collect();
        assert_eq!(
            shown,
            [
                "Vary (Subtle)",
                "Vary (Strong)",
                "Vary (Region)",
                "Upscale (Subtle)",
                "Upscale (Creative)",
                "Zoom Out 2x",
                "Zoom Out 1.5x",
                "Custom Zoom",
                "⬅️",
                "➡️",
                "⬆️",
                "⬇️"
            ]
        );
    }

    #[test]
    fn every_button_round_trips() {
        for action in all_actions() {
            for job in [0, 1, 7, 123, 99_999, i64::MAX] {
                let button = ButtonId::new(action, JobId(job));
                let encoded = button.encode();
                assert!(encoded.len() <= MAX_CUSTOM_ID_LEN, "{encoded}");
                assert_eq!(ButtonId::parse(&encoded), Some(button), "{encoded}");
            }
        }
    }

    #[test]
    fn longest_id_is_far_under_discords_limit() {
        let longest = ButtonId::new(ButtonAction::Upscale(3), JobId(i64::MAX)).encode();
        assert_eq!(longest, "im1:u:9223372036854775807:3");
        assert!(longest.len() <= 27);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        let long = format!("im1:r:{}", "1".repeat(200));
        let rejected = [
            "",
            "im1",
            "im1:",
            "im1:u",
            "im1:u:",
            "im1:u:123",
            "im1:u:123:",
            "im1:u:123:4",
            "im1:u:123:9",
            "im1:v:123:-1",
            "im1:u:123:03",
            "im1:u:123:2:",
            "im1:u:123:2:0",
            "im1:r:123:0",
            "im1:vs:123:1",
            "im1:r:-1",
            "im1:r:-0",
            "im1:r:+1",
            "im1:r:0123",
            "im1:r:00",
            "im1:r: 1",
            "im1:r:1 ",
            "im1:r:1.0",
            "im1:r:9223372036854775808",
            "im1:x:123:0",
            "im1:xx:123",
            "im1:U:123:0",
            "IM1:r:123",
            "im2:r:123",
            "im1::r:123",
            ":im1:r:123",
            "im1:r:١٢٣",
            "im1:u:1:٣",
            &long,
        ];
        for custom_id in rejected {
            assert_eq!(ButtonId::parse(custom_id), None, "{custom_id:?}");
        }
    }

    #[test]
    fn ids_over_100_characters_are_rejected_before_parsing() {
        // Valid shape, but padded over the limit with leading zeros (which are also refused):
        // the length check must not depend on that.
        let padded = format!("im1:r:{}", "9".repeat(95));
        assert!(padded.len() > MAX_CUSTOM_ID_LEN);
        assert_eq!(ButtonId::parse(&padded), None);
    }

    #[test]
    fn garbage_never_panics_and_anything_accepted_is_canonical() {
        // A small deterministic generator over an alphabet rich in the codec's own characters.
        let alphabet: Vec<char> = "im1uvrsx:0123456789-+ é🔄\u{0}".chars().collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let mut s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if next() % 3 == 0 {
                s = format!("im1:{s}");
            }
            if let Some(button) = ButtonId::parse(&s) {
                assert_eq!(button.encode(), s);
            }
        }
        // Mutations of valid ids: every accepted one must be its own canonical encoding.
        let mut accepted_mutations = 0;
        for action in all_actions() {
            let valid = ButtonId::new(action, JobId(4021)).encode();
            for cut in 0..valid.len() {
                for insert in [":", "0", "9", "-", "x"] {
                    let mut mutated = valid.clone();
                    mutated.insert_str(cut, insert);
                    if let Some(button) = ButtonId::parse(&mutated) {
                        accepted_mutations += 1;
                        assert_eq!(button.encode(), mutated);
                    }
                }
                // A prefix is only accepted when it is itself a canonical id ("im1:r:402").
                let truncated = &valid[..cut];
                if let Some(button) = ButtonId::parse(truncated) {
                    assert_eq!(button.encode(), truncated);
                    assert!(button.job.0 < 4021);
                }
            }
        }
        // Inserting a digit into the job id ("4021" -> "49021") yields other valid ids, so the
        // acceptance path is exercised, not only rejection.
        assert!(accepted_mutations > 0);
    }

    #[test]
    fn labels_and_emoji_match_the_discord_layout() {
        let labels: Vec<Option<String>> = ButtonAction::GRID_ROWS
            .iter()
            .flat_map(|row| row.iter().map(ButtonAction::label))
            .collect();
        let expected = ["U1", "U2", "U3", "U4"]
            .iter()
            .map(|s| Some(s.to_string()))
            .chain([None])
            .chain(["V1", "V2", "V3", "V4"].iter().map(|s| Some(s.to_string())))
            .collect::<Vec<_>>();
        assert_eq!(labels, expected);
        assert_eq!(ButtonAction::Reroll.emoji(), Some("🔄"));
        assert_eq!(ButtonAction::Upscale(0).emoji(), None);
        // Every button shows something: a label or an emoji.
        for action in all_actions() {
            assert!(action.label().is_some() || action.emoji().is_some());
        }
    }

    #[test]
    fn actions_map_to_job_kinds_and_parent_indices() {
        assert_eq!(ButtonAction::Upscale(2).job_kind(), Some(JobKind::Upscale));
        assert_eq!(ButtonAction::Upscale(2).index(), Some(2));
        assert_eq!(
            ButtonAction::Variation(1).job_kind(),
            Some(JobKind::Variation)
        );
        assert_eq!(ButtonAction::Variation(1).index(), Some(1));
        assert_eq!(ButtonAction::Reroll.job_kind(), Some(JobKind::Reroll));
        assert_eq!(ButtonAction::Reroll.index(), None);
        assert_eq!(
            ButtonAction::VarySubtle.job_kind(),
            Some(JobKind::VarySubtle)
        );
        assert_eq!(
            ButtonAction::VaryStrong.job_kind(),
            Some(JobKind::VaryStrong)
        );
    }
}
