//! Vary (Region): which part of a picture to repaint, as users pick it in Discord.
//!
//! Discord has no brush, so a region is picked in a select menu over a 3x3 grid of cells plus
//! the four halves (any combination), or painted in an image attached to `/region` (white =
//! repaint). A pick is stored as a short canonical list (`c0,c4,hl`) and turned into a mask of
//! the picture's size when the job runs, so the job is reproducible from the store alone.

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};

/// One choice of the region menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    /// A cell of the 3x3 grid, 0-8 in reading order (0 top left, 4 centre, 8 bottom right).
    Cell(u8),
    LeftHalf,
    RightHalf,
    TopHalf,
    BottomHalf,
}

/// The menu's options in the order shown: the nine cells, then the halves.
pub const AREAS: [Area; 13] = [
    Area::Cell(0),
    Area::Cell(1),
    Area::Cell(2),
    Area::Cell(3),
    Area::Cell(4),
    Area::Cell(5),
    Area::Cell(6),
    Area::Cell(7),
    Area::Cell(8),
    Area::LeftHalf,
    Area::RightHalf,
    Area::TopHalf,
    Area::BottomHalf,
];

const CELL_NAMES: [&str; 9] = [
    "Top left",
    "Top centre",
    "Top right",
    "Middle left",
    "Centre",
    "Middle right",
    "Bottom left",
    "Bottom centre",
    "Bottom right",
];

impl Area {
    /// The option's value in the menu and in the store: `c0`-`c8`, `hl`, `hr`, `ht`, `hb`.
    pub fn value(self) -> String {
        match self {
            Area::Cell(i) => format!("c{i}"),
            Area::LeftHalf => "hl".into(),
            Area::RightHalf => "hr".into(),
            Area::TopHalf => "ht".into(),
            Area::BottomHalf => "hb".into(),
        }
    }

    /// What the menu shows.
    pub fn label(self) -> String {
        match self {
            Area::Cell(i) => format!("{} cell", CELL_NAMES[usize::from(i.min(8))]),
            Area::LeftHalf => "Left half".into(),
            Area::RightHalf => "Right half".into(),
            Area::TopHalf => "Top half".into(),
            Area::BottomHalf => "Bottom half".into(),
        }
    }

    fn parse(value: &str) -> Option<Area> {
        AREAS.into_iter().find(|a| a.value() == value)
    }

    /// The area's rectangle `(x0, y0, x1, y1)` (end exclusive) in a `w` x `h` picture.
    fn rect(self, (w, h): (u32, u32)) -> (u32, u32, u32, u32) {
        match self {
            Area::Cell(i) => {
                let (col, row) = (u32::from(i % 3), u32::from(i / 3));
                (
                    col * w / 3,
                    row * h / 3,
                    (col + 1) * w / 3,
                    (row + 1) * h / 3,
                )
            }
            Area::LeftHalf => (0, 0, w / 2, h),
            Area::RightHalf => (w / 2, 0, w, h),
            Area::TopHalf => (0, 0, w, h / 2),
            Area::BottomHalf => (0, h / 2, w, h),
        }
    }
}

/// A picked region: one or more distinct areas, kept sorted so that equal picks are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region(Vec<Area>);

impl Region {
    /// The values a user picked in the menu. Strict: each must be a known option, picked once.
    pub fn from_values(values: &[String]) -> Result<Region, String> {
        if values.is_empty() || values.len() > AREAS.len() {
            return Err("Pick at least one part of the image to repaint.".into());
        }
        let mut areas = Vec::with_capacity(values.len());
        for value in values {
            let area = Area::parse(value)
                .ok_or("That choice is not one of the menu's: open Vary (Region) again.")?;
            if areas.contains(&area) {
                return Err("A part was picked twice: open Vary (Region) again.".into());
            }
            areas.push(area);
        }
        areas.sort();
        Ok(Region(areas))
    }

    /// The stored form, e.g. `c0,c4,hl`.
    pub fn encode(&self) -> String {
        self.0
            .iter()
            .map(|a| a.value())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads [`Region::encode`] back; `None` for anything it would not write.
    pub fn parse(stored: &str) -> Option<Region> {
        let values: Vec<String> = stored.split(',').map(str::to_owned).collect();
        let region = Region::from_values(&values).ok()?;
        (region.encode() == stored).then_some(region)
    }

    /// A short description for messages: "Top left cell, Centre cell".
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|a| a.label())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The mask of a `size` picture: 255 in the picked areas, 0 elsewhere.
    pub fn mask(&self, size: (u32, u32)) -> GrayImage {
        let mut mask = GrayImage::new(size.0, size.1);
        for area in &self.0 {
            let (x0, y0, x1, y1) = area.rect(size);
            for y in y0..y1 {
                for x in x0..x1 {
                    mask.put_pixel(x, y, Luma([255]));
                }
            }
        }
        mask
    }
}

/// A painted mask (any size) fitted to a `size` picture: stretched to it, then made
/// black-and-white at half grey, so that the region is exactly what was painted.
pub fn fit_mask(mask: &GrayImage, size: (u32, u32)) -> GrayImage {
    let scaled = if mask.dimensions() == size {
        mask.clone()
    } else {
        imageops::resize(mask, size.0, size.1, FilterType::Triangle)
    };
    GrayImage::from_fn(size.0, size.1, |x, y| {
        Luma([if scaled.get_pixel(x, y)[0] >= 128 {
            255
        } else {
            0
        }])
    })
}

/// Why a painted mask cannot be used, as a sentence for the user; `None` when it can.
pub fn mask_problem(mask: &GrayImage) -> Option<&'static str> {
    let painted = mask.pixels().filter(|p| p[0] >= 128).count();
    if painted == 0 {
        return Some(
            "The mask has no white area, so there is nothing to repaint: paint the part to \
             change in white on black.",
        );
    }
    if painted == mask.pixels().len() {
        return Some(
            "The mask is white all over, so nothing would be kept: paint only the part to \
             change in white, the rest black (or use Vary (Strong)).",
        );
    }
    None
}

/// Which job `/region` is about: its id, or a link to its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobRef {
    Id(i64),
    Message(u64),
}

/// What `/region job:` accepts, as the user reads it.
pub const JOB_REF_HELP: &str = "Name the job by its number or by its message's link \
    (right-click the message, Copy Message Link).";

/// Reads `/region`'s `job` option: a job number (`42`, `#42`) or a message link
/// (`https://discord.com/channels/<server or @me>/<channel>/<message>`). Strict: anything
/// else is refused with a sentence saying what to give.
pub fn parse_job_ref(text: &str) -> Result<JobRef, String> {
    let text = text.trim();
    let refuse = || format!("I cannot read {:?} as a job. {JOB_REF_HELP}", short(text));
    if text.len() > 200 {
        return Err(refuse());
    }
    let digits = |s: &str| -> Option<u64> {
        let ok = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| s.parse().ok()).flatten()
    };
    let number = text.strip_prefix('#').unwrap_or(text);
    if let Some(id) = digits(number) {
        return i64::try_from(id).map(JobRef::Id).map_err(|_| refuse());
    }
    let path = ["https://", "http://"]
        .iter()
        .find_map(|scheme| text.strip_prefix(scheme))
        .and_then(|rest| {
            [
                "discord.com",
                "ptb.discord.com",
                "canary.discord.com",
                "discordapp.com",
            ]
            .iter()
            .find_map(|host| rest.strip_prefix(host)?.strip_prefix("/channels/"))
        })
        .ok_or_else(refuse)?;
    match path.split('/').collect::<Vec<_>>()[..] {
        [place, channel, message]
            if (place == "@me" || digits(place).is_some()) && digits(channel).is_some() =>
        {
            digits(message).map(JobRef::Message).ok_or_else(refuse)
        }
        _ => Err(refuse()),
    }
}

/// At most 40 characters of user text, for quoting it back.
fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_are_stored_canonically_and_read_back() {
        let region = Region::from_values(&values(&["hl", "c4", "c0"])).unwrap();
        assert_eq!(region.encode(), "c0,c4,hl");
        assert_eq!(Region::parse("c0,c4,hl"), Some(region.clone()));
        assert_eq!(region.describe(), "Top left cell, Centre cell, Left half");
        for stored in ["", "c4,c0", "c0,c0", "c9", "c0,", " c0", "C0", "c0,c4,hl,x"] {
            assert_eq!(Region::parse(stored), None, "{stored:?}");
        }
    }

    #[test]
    fn unknown_repeated_or_empty_picks_are_refused() {
        assert!(Region::from_values(&[]).is_err());
        assert!(Region::from_values(&values(&["c9"])).is_err());
        assert!(Region::from_values(&values(&["c1", "c1"])).is_err());
        let all: Vec<String> = AREAS.iter().map(|a| a.value()).collect();
        assert!(Region::from_values(&all).is_ok());
        let mut too_many = all.clone();
        too_many.push("c0".into());
        assert!(Region::from_values(&too_many).is_err());
    }

    #[test]
    fn the_menu_fits_discords_select_limits() {
        assert!(AREAS.len() <= 25);
        for area in AREAS {
            assert!((1..=100).contains(&area.label().chars().count()));
            assert!((1..=100).contains(&area.value().len()));
        }
    }

    #[test]
    fn cells_and_halves_cover_their_part_of_the_picture() {
        let centre = Region::from_values(&values(&["c4"]))
            .unwrap()
            .mask((96, 64));
        let white = |m: &GrayImage, x, y| m.get_pixel(x, y)[0] == 255;
        assert!(white(&centre, 32, 22) && white(&centre, 63, 41));
        assert!(!white(&centre, 31, 22) && !white(&centre, 64, 41) && !white(&centre, 40, 42));
        let left = Region::from_values(&values(&["hl"]))
            .unwrap()
            .mask((96, 64));
        let count = left.pixels().filter(|p| p[0] == 255).count();
        assert_eq!(count, 48 * 64);
        let corners = Region::from_values(&values(&["c0", "c8"]))
            .unwrap()
            .mask((90, 90));
        assert!(white(&corners, 0, 0) && white(&corners, 89, 89) && !white(&corners, 45, 45));
    }

    #[test]
    fn jobs_are_named_by_number_or_message_link() {
        assert_eq!(parse_job_ref("42"), Ok(JobRef::Id(42)));
        assert_eq!(parse_job_ref(" #7 "), Ok(JobRef::Id(7)));
        let link = "https://discord.com/channels/111/222/333";
        assert_eq!(parse_job_ref(link), Ok(JobRef::Message(333)));
        let dm = "https://canary.discord.com/channels/@me/222/444";
        assert_eq!(parse_job_ref(dm), Ok(JobRef::Message(444)));
        for bad in [
            "",
            "-1",
            "4x",
            "99999999999999999999",
            "https://discord.com/channels/111/222",
            "https://discord.com/channels/111/222/333/4",
            "https://evil.example/channels/1/2/3",
            "https://discord.com.evil.example/channels/1/2/3",
            "https://discord.com/channels/abc/222/333",
            "ftp://discord.com/channels/1/2/3",
        ] {
            let e = parse_job_ref(bad).unwrap_err();
            assert!(e.contains("Copy Message Link"), "{bad:?}: {e}");
        }
        assert!(parse_job_ref(&"1".repeat(300)).is_err());
    }

    #[test]
    fn a_painted_mask_of_any_size_fits_the_picture() {
        // A 10x10 mask whose left half is white, for a 64x32 picture.
        let small = GrayImage::from_fn(10, 10, |x, _| Luma([if x < 5 { 255 } else { 0 }]));
        let fitted = fit_mask(&small, (64, 32));
        assert_eq!(fitted.dimensions(), (64, 32));
        assert!(fitted.pixels().all(|p| p[0] == 0 || p[0] == 255));
        assert_eq!(fitted.get_pixel(5, 16)[0], 255);
        assert_eq!(fitted.get_pixel(60, 16)[0], 0);
        assert_eq!(mask_problem(&fitted), None);
        assert!(mask_problem(&GrayImage::new(8, 8)).is_some());
        assert!(mask_problem(&GrayImage::from_pixel(8, 8, Luma([255]))).is_some());
    }
}
