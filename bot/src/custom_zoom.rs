//! Custom Zoom: the text of its modal. As in Midjourney, the modal holds the prompt with its
//! parameters, editable, and `--zoom X` (1.0 to 2.0) says how far to zoom out; `--ar W:H` in
//! it may give the new canvas another shape. `--zoom` is read here and taken out; the rest is
//! an ordinary prompt for [`parse_prompt`](crate::params::parse_prompt).

use crate::params::Aspect;

pub const MIN_ZOOM: f32 = 1.0;
pub const MAX_ZOOM: f32 = 2.0;
/// The factor the modal starts with, as Zoom Out 2x.
pub const DEFAULT_ZOOM: f32 = 2.0;

/// The modal's text, split: the prompt and its other parameters, and the zoom factor.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoomText {
    pub prompt: String,
    pub factor: f32,
}

/// Takes `--zoom X` out of `text`. Strict: exactly one `--zoom`, followed by a number from 1
/// to 2; anything else is refused with a sentence saying what to write.
pub fn split_zoom(text: &str) -> Result<ZoomText, String> {
    let mut rest = Vec::new();
    let mut factor = None;
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if !word.eq_ignore_ascii_case("--zoom") {
            rest.push(word);
            continue;
        }
        if factor.is_some() {
            return Err("Write `--zoom` once.".into());
        }
        let value = words
            .next()
            .ok_or("`--zoom` needs a number from 1 to 2, e.g. `--zoom 1.5`.")?;
        factor = Some(parse_factor(value)?);
    }
    let factor = factor.ok_or("Add `--zoom` with a number from 1 to 2, e.g. `--zoom 1.5`.")?;
    Ok(ZoomText {
        prompt: rest.join(" "),
        factor,
    })
}

fn parse_factor(value: &str) -> Result<f32, String> {
    let plain = value.len() <= 8 && value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let factor: f32 = plain
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| format!("`--zoom {}` is not a number from 1 to 2.", short(value)))?;
    if !(MIN_ZOOM..=MAX_ZOOM).contains(&factor) {
        return Err(format!(
            "`--zoom {factor}` is outside 1 to 2: Custom Zoom shrinks the image by at most 2."
        ));
    }
    Ok(factor)
}

fn short(text: &str) -> String {
    text.chars().take(20).collect()
}

/// What the modal starts with: the job's prompt, its `--no` words, its aspect and `--zoom 2`.
pub fn prefill(prompt: &str, negative: &str, aspect: Aspect) -> String {
    let mut text = prompt.to_string();
    if !negative.is_empty() {
        text.push_str(&format!(" --no {negative}"));
    }
    text.push_str(&format!(
        " --ar {}:{} --zoom {DEFAULT_ZOOM}",
        aspect.w, aspect.h
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_is_taken_out_and_the_rest_kept() {
        let z = split_zoom("a red barn --ar 3:2 --zoom 1.5 --seed 4").unwrap();
        assert_eq!(
            z,
            ZoomText {
                prompt: "a red barn --ar 3:2 --seed 4".into(),
                factor: 1.5
            }
        );
        assert_eq!(split_zoom("x --ZOOM 2").unwrap().factor, 2.0);
        assert_eq!(split_zoom("x --zoom 1").unwrap().factor, 1.0);
    }

    #[test]
    fn a_missing_repeated_or_out_of_range_zoom_is_refused() {
        for bad in [
            "a barn",
            "a barn --zoom",
            "a barn --zoom 2.5",
            "a barn --zoom 0.9",
            "a barn --zoom -1",
            "a barn --zoom 1e0",
            "a barn --zoom NaN",
            "a barn --zoom inf",
            "a barn --zoom 1.5 --zoom 2",
            "a barn --zoom 1..5",
        ] {
            let e = split_zoom(bad).unwrap_err();
            assert!(e.contains("zoom"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_prefill_reads_back_as_the_same_job() {
        let text = prefill("a quiet harbour", "boats, people", Aspect { w: 3, h: 2 });
        assert_eq!(text, "a quiet harbour --no boats, people --ar 3:2 --zoom 2");
        let z = split_zoom(&text).unwrap();
        assert_eq!(z.factor, 2.0);
        let parsed = crate::params::parse_prompt(&z.prompt).unwrap();
        assert_eq!(parsed.prompt, "a quiet harbour");
        assert_eq!(parsed.negative, "boats, people");
        assert_eq!(parsed.aspect, Aspect { w: 3, h: 2 });
    }
}
