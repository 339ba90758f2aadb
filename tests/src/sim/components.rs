//! Discord's rules for message components (action rows of buttons or one select menu) and for
//! modals (action rows of one text input each), checked as Discord checks them.
//!
//! The limits are Discord's published ones (components reference): a message has at most 5
//! action rows; a row holds up to 5 buttons or exactly one select menu; a string select has 1-25
//! options (label and value 1-100 characters, description up to 100), a placeholder up to 150,
//! `min_values` 0-25 and `max_values` 1-25; every `custom_id` is 1-100 characters and unique in
//! its message or modal. A modal has a `custom_id`, a title of 1-45 characters and 1-5 rows, each
//! holding one text input: label 1-45, style 1 (short) or 2 (paragraph), `min_length` 0-4000,
//! `max_length` 1-4000, a pre-filled value up to 4000 and a placeholder up to 100. Text inputs
//! live only in modals. A failure is the form error Discord would nest under the field's path.

use std::collections::HashSet;

use serde_json::Value;

use super::rules::{field_error, nest};

pub(crate) const MAX_ROWS: usize = 5;
pub(crate) const MAX_BUTTONS_PER_ROW: usize = 5;
pub(crate) const MAX_CUSTOM_ID: usize = 100;
pub(crate) const MAX_SELECT_OPTIONS: usize = 25;
pub(crate) const MAX_OPTION_TEXT: usize = 100;
pub(crate) const MAX_SELECT_PLACEHOLDER: usize = 150;
pub(crate) const MAX_SELECT_VALUES: u64 = 25;
pub(crate) const MAX_MODAL_TITLE: usize = 45;
pub(crate) const MAX_INPUT_LABEL: usize = 45;
pub(crate) const MAX_INPUT_PLACEHOLDER: usize = 100;
pub(crate) const MAX_INPUT_LENGTH: u64 = 4000;

/// Component types by number.
pub(crate) const ACTION_ROW: u64 = 1;
pub(crate) const BUTTON: u64 = 2;
pub(crate) const STRING_SELECT: u64 = 3;
pub(crate) const TEXT_INPUT: u64 = 4;
/// User, role, mentionable and channel selects: also one per row, no `options`.
const AUTO_SELECTS: [u64; 4] = [5, 6, 7, 8];

/// A rule broken at `path` (relative to the component list), in Discord's words.
struct Broken {
    path: Vec<String>,
    code: &'static str,
    message: String,
}

impl Broken {
    fn at(path: &[&str], code: &'static str, message: impl Into<String>) -> Self {
        Self {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            code,
            message: message.into(),
        }
    }

    fn under(mut self, outer: &[String]) -> Self {
        let mut path = outer.to_vec();
        path.append(&mut self.path);
        self.path = path;
        self
    }

    fn into_form(self, prefix: &[String]) -> Value {
        let mut path = prefix.to_vec();
        path.extend(self.path);
        nest(&path, field_error(self.code, &self.message))
    }
}

fn chars(value: &Value) -> usize {
    value.as_str().map_or(0, |s| s.chars().count())
}

/// A required string of `min..=max` characters.
fn text_between(component: &Value, field: &str, min: usize, max: usize) -> Result<(), Broken> {
    let Some(text) = component.get(field).and_then(Value::as_str) else {
        return match min {
            0 => Ok(()),
            _ => Err(Broken::at(
                &[field],
                "BASE_TYPE_REQUIRED",
                "This field is required",
            )),
        };
    };
    let length = text.chars().count();
    if length < min || length > max {
        let message = match min {
            0 => format!("Must be {max} or fewer in length."),
            _ => format!("Must be between {min} and {max} in length."),
        };
        let code = if min == 0 {
            "BASE_TYPE_MAX_LENGTH"
        } else {
            "BASE_TYPE_BAD_LENGTH"
        };
        return Err(Broken::at(&[field], code, message));
    }
    Ok(())
}

/// An optional integer within `min..=max`.
fn number_between(component: &Value, field: &str, min: u64, max: u64) -> Result<(), Broken> {
    let Some(value) = component.get(field).filter(|v| !v.is_null()) else {
        return Ok(());
    };
    match value.as_u64() {
        Some(n) if n > max => Err(Broken::at(
            &[field],
            "NUMBER_TYPE_MAX",
            format!("int value should be less than or equal to {max}."),
        )),
        Some(n) if n < min => Err(Broken::at(
            &[field],
            "NUMBER_TYPE_MIN",
            format!("int value should be greater than or equal to {min}."),
        )),
        Some(_) => Ok(()),
        None => Err(Broken::at(
            &[field],
            "NUMBER_TYPE_COERCE",
            format!("Value \"{value}\" is not int."),
        )),
    }
}

/// The custom_id of an interactive component: 1-100 characters, unique in its container.
fn custom_id(component: &Value, seen: &mut HashSet<String>) -> Result<(), Broken> {
    text_between(component, "custom_id", 1, MAX_CUSTOM_ID)?;
    let id = component["custom_id"].as_str().unwrap_or_default();
    if !seen.insert(id.to_owned()) {
        return Err(Broken::at(
            &["custom_id"],
            "COMPONENT_CUSTOM_ID_DUPLICATED",
            "Component custom id cannot be duplicated",
        ));
    }
    Ok(())
}

fn rows(list: &Value) -> &[Value] {
    list.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Checks a message's `components` (absent is fine). `prefix` is the path to the message.
pub(crate) fn check_message_components(payload: &Value, prefix: &[String]) -> Result<(), Value> {
    let Some(list) = payload.get("components").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let outer = [prefix, &["components".to_owned()]].concat();
    message_rows(rows(list)).map_err(|b| b.into_form(&outer))
}

fn message_rows(rows_list: &[Value]) -> Result<(), Broken> {
    if rows_list.len() > MAX_ROWS {
        return Err(Broken::at(
            &[],
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {MAX_ROWS} or fewer in length."),
        ));
    }
    let mut seen = HashSet::new();
    for (r, row) in rows_list.iter().enumerate() {
        let here = [r.to_string()];
        if row["type"].as_u64() != Some(ACTION_ROW) {
            return Err(Broken::at(
                &["type"],
                "UNION_TYPE_CHOICES",
                "Value must be an action row.",
            )
            .under(&here));
        }
        let children = rows(&row["components"]);
        let here = [r.to_string(), "components".to_owned()];
        if children.is_empty() {
            return Err(
                Broken::at(&[], "BASE_TYPE_MIN_LENGTH", "Must be 1 or more in length.")
                    .under(&here),
            );
        }
        let selects = children
            .iter()
            .filter(|c| is_select(c["type"].as_u64()))
            .count();
        if selects > 0 && children.len() > 1 {
            return Err(Broken::at(
                &[],
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "The specified component exceeds the maximum width",
            )
            .under(&here));
        }
        if children.len() > MAX_BUTTONS_PER_ROW {
            return Err(Broken::at(
                &[],
                "BASE_TYPE_MAX_LENGTH",
                format!("Must be {MAX_BUTTONS_PER_ROW} or fewer in length."),
            )
            .under(&here));
        }
        for (c, child) in children.iter().enumerate() {
            let at = [r.to_string(), "components".to_owned(), c.to_string()];
            message_component(child, &mut seen).map_err(|b| b.under(&at))?;
        }
    }
    Ok(())
}

fn is_select(kind: Option<u64>) -> bool {
    kind == Some(STRING_SELECT) || kind.is_some_and(|k| AUTO_SELECTS.contains(&k))
}

fn message_component(component: &Value, seen: &mut HashSet<String>) -> Result<(), Broken> {
    match component["type"].as_u64() {
        // Link buttons (style 5) and premium buttons (6) carry no custom_id.
        Some(BUTTON) if matches!(component["style"].as_u64(), Some(5 | 6)) => Ok(()),
        Some(BUTTON) => custom_id(component, seen),
        Some(STRING_SELECT) => string_select(component, seen),
        Some(kind) if AUTO_SELECTS.contains(&kind) => {
            custom_id(component, seen)?;
            select_counts(component, None)
        }
        Some(TEXT_INPUT) => Err(Broken::at(
            &["type"],
            "UNION_TYPE_CHOICES",
            "Text inputs can only be used in modals.",
        )),
        _ => Err(Broken::at(
            &["type"],
            "UNION_TYPE_CHOICES",
            "Value of field \"type\" must be one of the component types.",
        )),
    }
}

fn string_select(select: &Value, seen: &mut HashSet<String>) -> Result<(), Broken> {
    custom_id(select, seen)?;
    text_between(select, "placeholder", 0, MAX_SELECT_PLACEHOLDER)?;
    let options = rows(&select["options"]);
    if options.is_empty() || options.len() > MAX_SELECT_OPTIONS {
        return Err(Broken::at(
            &["options"],
            "BASE_TYPE_BAD_LENGTH",
            format!("Must be between 1 and {MAX_SELECT_OPTIONS} in length."),
        ));
    }
    let mut values = HashSet::new();
    for (o, option) in options.iter().enumerate() {
        let at = ["options".to_owned(), o.to_string()];
        text_between(option, "label", 1, MAX_OPTION_TEXT).map_err(|b| b.under(&at))?;
        text_between(option, "value", 1, MAX_OPTION_TEXT).map_err(|b| b.under(&at))?;
        text_between(option, "description", 0, MAX_OPTION_TEXT).map_err(|b| b.under(&at))?;
        if !values.insert(option["value"].as_str().unwrap_or_default()) {
            return Err(Broken::at(
                &["value"],
                "SELECT_COMPONENT_OPTION_VALUE_DUPLICATED",
                "Select component option values must be unique",
            )
            .under(&at));
        }
    }
    select_counts(select, Some(options.len()))
}

/// `min_values` 0-25, `max_values` 1-25 (both default 1), min <= max <= the options offered.
fn select_counts(select: &Value, options: Option<usize>) -> Result<(), Broken> {
    number_between(select, "min_values", 0, MAX_SELECT_VALUES)?;
    number_between(select, "max_values", 1, MAX_SELECT_VALUES)?;
    let (min, max) = select_bounds(select);
    if min > max {
        return Err(Broken::at(
            &["min_values"],
            "SELECT_COMPONENT_MIN_VALUES_EXCEEDS_MAX",
            "min_values must be less than or equal to max_values",
        ));
    }
    if options.is_some_and(|n| max as usize > n) {
        return Err(Broken::at(
            &["max_values"],
            "SELECT_COMPONENT_MAX_VALUES_EXCEEDS_OPTIONS",
            "max_values must be less than or equal to the number of options",
        ));
    }
    Ok(())
}

/// A select's `(min_values, max_values)`, Discord's defaults (1, 1) filled in.
pub(crate) fn select_bounds(select: &Value) -> (u64, u64) {
    (
        select["min_values"].as_u64().unwrap_or(1),
        select["max_values"].as_u64().unwrap_or(1),
    )
}

/// Checks an interaction callback's modal `data` (type 9). Errors nest under `data`.
pub(crate) fn check_modal(data: &Value) -> Result<(), Value> {
    let outer = ["data".to_owned()];
    modal(data).map_err(|b| b.into_form(&outer))
}

fn modal(data: &Value) -> Result<(), Broken> {
    text_between(data, "custom_id", 1, MAX_CUSTOM_ID)?;
    text_between(data, "title", 1, MAX_MODAL_TITLE)?;
    let list = rows(&data["components"]);
    if list.is_empty() || list.len() > MAX_ROWS {
        return Err(Broken::at(
            &["components"],
            "BASE_TYPE_BAD_LENGTH",
            format!("Must be between 1 and {MAX_ROWS} in length."),
        ));
    }
    let mut seen = HashSet::new();
    for (r, row) in list.iter().enumerate() {
        let here = ["components".to_owned(), r.to_string()];
        let children = rows(&row["components"]);
        if row["type"].as_u64() != Some(ACTION_ROW) || children.len() != 1 {
            return Err(Broken::at(
                &["components"],
                "BASE_TYPE_BAD_LENGTH",
                "A modal's action row holds exactly one text input.",
            )
            .under(&here));
        }
        let at = [here.to_vec(), vec!["components".to_owned(), "0".to_owned()]].concat();
        text_input(&children[0], &mut seen).map_err(|b| b.under(&at))?;
    }
    Ok(())
}

fn text_input(input: &Value, seen: &mut HashSet<String>) -> Result<(), Broken> {
    if input["type"].as_u64() != Some(TEXT_INPUT) {
        return Err(Broken::at(
            &["type"],
            "UNION_TYPE_CHOICES",
            "A modal holds text inputs (component type 4).",
        ));
    }
    custom_id(input, seen)?;
    text_between(input, "label", 1, MAX_INPUT_LABEL)?;
    if !matches!(input["style"].as_u64(), Some(1 | 2)) {
        return Err(Broken::at(
            &["style"],
            "BASE_TYPE_CHOICES",
            "Value must be one of {1, 2}.",
        ));
    }
    number_between(input, "min_length", 0, MAX_INPUT_LENGTH)?;
    number_between(input, "max_length", 1, MAX_INPUT_LENGTH)?;
    let (min, max) = input_bounds(input);
    if min > max {
        return Err(Broken::at(
            &["min_length"],
            "TEXT_INPUT_MIN_LENGTH_EXCEEDS_MAX",
            "min_length must be less than or equal to max_length",
        ));
    }
    text_between(input, "value", 0, MAX_INPUT_LENGTH as usize)?;
    text_between(input, "placeholder", 0, MAX_INPUT_PLACEHOLDER)?;
    if chars(&input["value"]) > max as usize {
        return Err(Broken::at(
            &["value"],
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {max} or fewer in length."),
        ));
    }
    Ok(())
}

/// A text input's `(min_length, max_length)`, defaults (0, 4000) filled in.
pub(crate) fn input_bounds(input: &Value) -> (u64, u64) {
    (
        input["min_length"].as_u64().unwrap_or(0),
        input["max_length"].as_u64().unwrap_or(MAX_INPUT_LENGTH),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn select(options: usize, max_values: u64) -> Value {
        let options: Vec<Value> = (0..options)
            .map(|i| json!({ "label": format!("cell {i}"), "value": format!("c{i}") }))
            .collect();
        json!({ "type": 3, "custom_id": "pick", "options": options, "min_values": 1,
                "max_values": max_values })
    }

    fn input(id: &str) -> Value {
        json!({ "type": 4, "custom_id": id, "label": "Prompt", "style": 2, "value": "a cat" })
    }

    /// The error code Discord nests at `path`.
    fn leaf<'a>(error: &'a Value, path: &[&str]) -> &'a Value {
        &path.iter().fold(error, |v, k| &v[*k])["_errors"][0]["code"]
    }

    #[test]
    fn a_select_fills_its_row_alone() {
        let button = json!({ "type": 2, "style": 1, "label": "x", "custom_id": "b" });
        let ok = json!({ "components": [{ "type": 1, "components": [select(13, 13)] }] });
        assert!(check_message_components(&ok, &[]).is_ok());
        let crowded =
            json!({ "components": [{ "type": 1, "components": [select(2, 1), button] }] });
        let error = check_message_components(&crowded, &[]).unwrap_err();
        assert_eq!(
            leaf(&error, &["components", "0", "components"]),
            "COMPONENT_LAYOUT_WIDTH_EXCEEDED"
        );
    }

    #[test]
    fn select_limits_match_discords() {
        let path = ["components", "0", "components", "0"];
        for (bad, field, code) in [
            (select(0, 1), "options", "BASE_TYPE_BAD_LENGTH"),
            (select(26, 1), "options", "BASE_TYPE_BAD_LENGTH"),
            (select(3, 26), "max_values", "NUMBER_TYPE_MAX"),
            (
                select(3, 4),
                "max_values",
                "SELECT_COMPONENT_MAX_VALUES_EXCEEDS_OPTIONS",
            ),
        ] {
            let message = json!({ "components": [{ "type": 1, "components": [bad] }] });
            let error = check_message_components(&message, &[]).unwrap_err();
            let at: Vec<&str> = path.iter().copied().chain([field]).collect();
            assert_eq!(leaf(&error, &at), code, "{error}");
        }
        let mut long_label = select(1, 1);
        long_label["options"][0]["label"] = json!("x".repeat(101));
        let message = json!({ "components": [{ "type": 1, "components": [long_label] }] });
        let error = check_message_components(&message, &[]).unwrap_err();
        let at = [&path[..], &["options", "0", "label"]].concat();
        assert_eq!(leaf(&error, &at), "BASE_TYPE_BAD_LENGTH", "{error}");
    }

    #[test]
    fn custom_ids_are_unique_in_a_message() {
        let button = json!({ "type": 2, "style": 1, "label": "x", "custom_id": "pick" });
        let message = json!({ "components": [
            { "type": 1, "components": [button] },
            { "type": 1, "components": [select(2, 1)] },
        ] });
        let error = check_message_components(&message, &[]).unwrap_err();
        let at = ["components", "1", "components", "0", "custom_id"];
        assert_eq!(
            leaf(&error, &at),
            "COMPONENT_CUSTOM_ID_DUPLICATED",
            "{error}"
        );
    }

    #[test]
    fn text_inputs_belong_in_modals_only() {
        let message = json!({ "components": [{ "type": 1, "components": [input("p")] }] });
        assert!(check_message_components(&message, &[]).is_err());
        let modal = json!({ "custom_id": "m", "title": "Remix", "components": [
            { "type": 1, "components": [input("p")] },
        ] });
        assert!(check_modal(&modal).is_ok());
    }

    #[test]
    fn modal_limits_match_discords() {
        let good = |rows: usize| {
            let rows: Vec<Value> = (0..rows)
                .map(|i| json!({ "type": 1, "components": [input(&format!("p{i}"))] }))
                .collect();
            json!({ "custom_id": "m", "title": "Remix", "components": rows })
        };
        assert!(check_modal(&good(5)).is_ok());
        let mut cases = vec![
            (good(0), vec!["data", "components"], "BASE_TYPE_BAD_LENGTH"),
            (good(6), vec!["data", "components"], "BASE_TYPE_BAD_LENGTH"),
        ];
        let mut title = good(1);
        title["title"] = json!("t".repeat(46));
        cases.push((title, vec!["data", "title"], "BASE_TYPE_BAD_LENGTH"));
        let input_at = ["data", "components", "0", "components", "0"];
        for (field, value, code) in [
            ("label", json!("l".repeat(46)), "BASE_TYPE_BAD_LENGTH"),
            ("style", json!(3), "BASE_TYPE_CHOICES"),
            ("max_length", json!(4001), "NUMBER_TYPE_MAX"),
            ("min_length", json!(4001), "NUMBER_TYPE_MAX"),
            ("value", json!("v".repeat(4001)), "BASE_TYPE_MAX_LENGTH"),
        ] {
            let mut modal = good(1);
            modal["components"][0]["components"][0][field] = value;
            cases.push((modal, [&input_at[..], &[field]].concat(), code));
        }
        let mut twice = good(2);
        twice["components"][1]["components"][0]["custom_id"] = json!("p0");
        let at = ["data", "components", "1", "components", "0", "custom_id"];
        cases.push((twice, at.to_vec(), "COMPONENT_CUSTOM_ID_DUPLICATED"));
        for (modal, path, code) in cases {
            let error = check_modal(&modal).unwrap_err();
            assert_eq!(leaf(&error, &path), code, "{path:?}: {error}");
        }
    }
}
