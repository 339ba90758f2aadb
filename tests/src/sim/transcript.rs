//! The transcript: every REST call and every gateway frame, in order.
//!
//! Tests assert on it, waits search it, and a failed wait prints it (its `Display` is meant to
//! be read by a person looking at a red test).

use std::fmt;

use serde_json::Value;

/// One uploaded file, as the simulator received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSummary {
    /// The multipart field name, e.g. `files[0]`.
    pub field: String,
    pub filename: String,
    pub size: usize,
}

/// One REST request and the simulator's answer to it.
#[derive(Clone, Debug)]
pub struct RestCall {
    pub method: String,
    /// Path below `/api/v10`, e.g. `/webhooks/1/tok`.
    pub path: String,
    /// The JSON body (for multipart: the parsed `payload_json`), `Null` when there was none.
    pub body: Value,
    pub files: Vec<FileSummary>,
    pub status: u16,
    /// The JSON answer, `Null` for empty answers (204).
    pub response: Value,
}

/// Which way a gateway frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the simulator to the bot.
    ToBot,
    /// From the bot to the simulator.
    FromBot,
}

/// One thing that happened.
#[derive(Clone, Debug)]
pub enum Entry {
    Rest(RestCall),
    Gateway {
        direction: Direction,
        frame: Value,
    },
    /// Something the simulator decided on its own, e.g. an interaction timing out.
    Note(String),
}

impl Entry {
    pub fn as_rest(&self) -> Option<&RestCall> {
        match self {
            Entry::Rest(call) => Some(call),
            _ => None,
        }
    }

    /// The dispatch name (`t`) of a frame sent to the bot, if this is one.
    pub fn dispatch_name(&self) -> Option<&str> {
        match self {
            Entry::Gateway {
                direction: Direction::ToBot,
                frame,
            } => frame["t"].as_str(),
            _ => None,
        }
    }

    /// The opcode of a frame the bot sent, if this is one.
    pub fn op_from_bot(&self) -> Option<u64> {
        match self {
            Entry::Gateway {
                direction: Direction::FromBot,
                frame,
            } => frame["op"].as_u64(),
            _ => None,
        }
    }
}

/// A snapshot of everything recorded so far.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    pub entries: Vec<Entry>,
}

impl Transcript {
    pub fn rest_calls(&self) -> impl Iterator<Item = &RestCall> {
        self.entries.iter().filter_map(Entry::as_rest)
    }

    /// REST calls whose method matches and whose path starts with `prefix`.
    pub fn calls_to(&self, method: &str, prefix: &str) -> Vec<&RestCall> {
        self.rest_calls()
            .filter(|c| c.method == method && c.path.starts_with(prefix))
            .collect()
    }

    pub fn dispatches(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter_map(Entry::dispatch_name)
            .collect()
    }
}

const BODY_PREVIEW: usize = 300;

fn preview(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= BODY_PREVIEW {
        return text;
    }
    let cut = (0..=BODY_PREVIEW)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

/// The frame data with any token blanked, so transcripts can be pasted anywhere.
fn redacted(data: &Value) -> Value {
    let mut data = data.clone();
    if let Some(token) = data.get_mut("token") {
        *token = Value::String("<redacted>".to_owned());
    }
    data
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Rest(c) => {
                write!(f, "REST {} {} -> {}", c.method, c.path, c.status)?;
                if !c.body.is_null() {
                    write!(f, "\n      body: {}", preview(&c.body))?;
                }
                for file in &c.files {
                    write!(
                        f,
                        "\n      file: {} {} ({} bytes)",
                        file.field, file.filename, file.size
                    )?;
                }
                if c.status >= 400 && !c.response.is_null() {
                    write!(f, "\n      answer: {}", preview(&c.response))?;
                }
                Ok(())
            }
            Entry::Gateway { direction, frame } => {
                let arrow = match direction {
                    Direction::ToBot => "GW  -> bot",
                    Direction::FromBot => "GW  <- bot",
                };
                let op = frame["op"].as_u64().unwrap_or(u64::MAX);
                match frame["t"].as_str() {
                    Some(t) => write!(f, "{arrow} op {op} {t} s={}", frame["s"]),
                    None if op == 2 => write!(f, "{arrow} op 2 IDENTIFY"),
                    None => write!(f, "{arrow} op {op} {}", preview(&redacted(&frame["d"]))),
                }
            }
            Entry::Note(text) => write!(f, "NOTE {text}"),
        }
    }
}

impl fmt::Display for Transcript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "--- simulator transcript ({} entries) ---",
            self.entries.len()
        )?;
        for (index, entry) in self.entries.iter().enumerate() {
            writeln!(f, "{index:4} {entry}")?;
        }
        write!(f, "--- end of transcript ---")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn display_shows_calls_errors_and_frames_but_no_tokens() {
        let rejected = RestCall {
            method: "POST".into(),
            path: "/webhooks/1/tok".into(),
            body: json!({ "content": "hi" }),
            files: vec![FileSummary {
                field: "files[0]".into(),
                filename: "a.png".into(),
                size: 3,
            }],
            status: 400,
            response: json!({ "code": 50035 }),
        };
        let resume = json!({ "op": 6, "d": { "token": "secret", "session_id": "s", "seq": 4 } });
        let transcript = Transcript {
            entries: vec![
                Entry::Rest(rejected),
                Entry::Gateway {
                    direction: Direction::FromBot,
                    frame: resume,
                },
                Entry::Gateway {
                    direction: Direction::ToBot,
                    frame: json!({ "op": 0, "s": 5, "t": "RESUMED", "d": {} }),
                },
            ],
        };
        let text = transcript.to_string();
        assert!(text.contains("REST POST /webhooks/1/tok -> 400"), "{text}");
        assert!(text.contains("file: files[0] a.png (3 bytes)"), "{text}");
        assert!(text.contains("answer: {\"code\":50035}"), "{text}");
        assert!(text.contains("GW  -> bot op 0 RESUMED s=5"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
