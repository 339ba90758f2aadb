//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default: info for our crates).
//!
//! At DEBUG and TRACE our dependencies log what they send and receive: serenity the REST
//! routes (an interaction's token is part of its webhook URL), the WebSocket library the raw
//! gateway frames (IDENTIFY carries the bot token, INTERACTION_CREATE the interaction's). No
//! token may reach a log, whatever the level, so every line passes through [`redact`] on its
//! way out.

use std::io::Write;
use std::sync::OnceLock;

use regex::Regex;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,imagine=info,imagine_engine=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| RedactingWriter(Vec::new()))
        .try_init();
}

/// Collects one formatted event and writes it to stderr, redacted, when dropped.
struct RedactingWriter(Vec<u8>);

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let _ = std::io::stderr().write_all(redact(&text).as_bytes());
    }
}

/// Where tokens hide in what our dependencies log, each with the part to keep before it:
/// JSON and Debug `token` fields (quotes possibly escaped), `token=` fields, the token segment
/// of webhook and interaction URLs, and `Authorization: Bot ...` values.
fn patterns() -> &'static [Regex] {
    static PATTERNS: OnceLock<Vec<Regex>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        [
            r#"(?i)(\\*"?token\\*"?(?:\x1b\[[0-9;]*m)*\s*[:=](?:\x1b\[[0-9;]*m)*\s*(?:Some\()?\\*")[^"\\]+"#,
            r#"(?i)(token(?:\x1b\[[0-9;]*m)*\s*[:=](?:\x1b\[[0-9;]*m)*\s*)[^\s",}\)\]\x1b]+"#,
            r#"(/(?:webhooks|interactions)/\d+/)[^/\s"'?\\]+"#,
            r#"(\bBot\s+)[A-Za-z0-9._\-]{16,}"#,
        ]
        .iter()
        .map(|p| Regex::new(p).expect("a valid redaction pattern"))
        .collect()
    })
}

/// `text` with every token it carries replaced by `***`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for pattern in patterns() {
        out = pattern.replace_all(&out, "${1}***").into_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn tokens_are_cut_from_every_shape_they_are_logged_in() {
        let lines = [
            r#"{"op":2,"d":{"token":"Bot.abc.DEF-ghi_123","intents":1}}"#,
            r#"frame: "{\"id\":\"5\",\"token\":\"aW50ZXJhY3Rpb246abc\",\"type\":2}""#,
            r#"route=WebhookOriginalInteractionResponse { application_id: 1, token: "aW50ZXJhY3Rpb246abc" }"#,
            "PATCH https://discord.com/api/v10/webhooks/123/aW50ZXJhY3Rpb246abc/messages/@original",
            "POST /api/v10/interactions/456/aW50ZXJhY3Rpb246abc/callback",
            "authorization: Bot Bot.abc.DEF-ghi_123xyz",
            "token=aW50ZXJhY3Rpb246abc job=3",
            r#"NewJob { interaction_token: Some("aW50ZXJhY3Rpb246abc"), kind: Imagine }"#,
            "\x1b[3mtoken\x1b[0m\x1b[2m=\x1b[0maW50ZXJhY3Rpb246abc \x1b[3mjob\x1b[0m=3",
        ];
        for line in lines {
            let out = redact(line);
            assert!(
                !out.contains("aW50ZXJhY3Rpb246abc") && !out.contains("DEF-ghi_123"),
                "{line}\n -> {out}"
            );
            assert!(out.contains("***"), "{out}");
        }
        let plain = "job{id=3}: delivered via=edit status=done";
        assert_eq!(redact(plain), plain, "lines without tokens are untouched");
    }
}
