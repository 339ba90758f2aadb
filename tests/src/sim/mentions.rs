//! Mentions: whom a message pings, by Discord's rules, and the checks Discord makes on
//! `allowed_mentions`.
//!
//! Discord parses `<@id>`, `<@!id>`, `<@&role>`, `@everyone` and `@here` out of the content.
//! Without `allowed_mentions` every one of them pings; with it, a user pings only if `parse`
//! holds `"users"` or the id is in `users`, a role likewise, and `@everyone`/`@here` only if
//! `parse` holds `"everyone"`. Roles and `@everyone` exist only in servers. The simulator
//! records the result for every created or edited message so a test can assert "pinged only
//! the requester" (Discord notifies on creation; an edit that adds a mention highlights it
//! without a notification, and the simulator counts it all the same, to be strict).

use std::collections::BTreeSet;

use serde_json::Value;
use serenity::all::{RoleId, UserId};

/// Most ids Discord takes in `allowed_mentions.users` or `.roles`.
pub(crate) const MAX_ALLOWED_IDS: usize = 100;
const PARSE_VALUES: [&str; 3] = ["everyone", "roles", "users"];

/// Whom one message pings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pings {
    pub users: BTreeSet<UserId>,
    pub roles: BTreeSet<RoleId>,
    /// `@everyone` or `@here` would notify the server.
    pub everyone: bool,
}

impl Pings {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.roles.is_empty() && !self.everyone
    }

    /// Pings nobody, or only `user`.
    pub fn at_most(&self, user: UserId) -> bool {
        self.roles.is_empty() && !self.everyone && self.users.iter().all(|u| *u == user)
    }
}

/// The mentions written in `content`: user ids, role ids, and whether `@everyone`/`@here`.
fn written_mentions(content: &str) -> (Vec<u64>, Vec<u64>, bool) {
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    let mut rest = content;
    while let Some(start) = rest.find("<@") {
        rest = &rest[start + 2..];
        let (is_role, body) = match rest.as_bytes().first() {
            Some(b'&') => (true, &rest[1..]),
            Some(b'!') => (false, &rest[1..]),
            _ => (false, rest),
        };
        let digits = body.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || body.as_bytes().get(digits) != Some(&b'>') {
            continue;
        }
        if let Ok(id) = body[..digits].parse::<u64>() {
            match is_role {
                true => roles.push(id),
                false => users.push(id),
            }
        }
    }
    let everyone = content.contains("@everyone") || content.contains("@here");
    (users, roles, everyone)
}

fn id_list(allowed: &Value, key: &str) -> Vec<u64> {
    allowed[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()))
        .collect()
}

/// Whom `content` pings under `allowed` (the request's `allowed_mentions`, if any).
/// `in_guild`: roles and `@everyone` exist only in servers; `is_user`: ids that are real users.
pub(crate) fn pings(
    content: &str,
    allowed: Option<&Value>,
    in_guild: bool,
    is_user: impl Fn(u64) -> bool,
) -> Pings {
    let (users, roles, everyone) = written_mentions(content);
    let parse = |what: &str| {
        allowed.is_none_or(|a| {
            a["parse"]
                .as_array()
                .is_some_and(|list| list.iter().any(|v| v == what))
        })
    };
    let listed = |key: &str, id: u64| allowed.is_some_and(|a| id_list(a, key).contains(&id));
    Pings {
        users: users
            .into_iter()
            .filter(|id| is_user(*id) && (parse("users") || listed("users", *id)))
            .map(UserId::new)
            .collect(),
        roles: roles
            .into_iter()
            .filter(|id| in_guild && *id != 0 && (parse("roles") || listed("roles", *id)))
            .map(RoleId::new)
            .collect(),
        everyone: in_guild && everyone && parse("everyone"),
    }
}

/// A form error: where it sits below the message body, and its `_errors` leaf.
pub(crate) type FieldError = (Vec<String>, &'static str, String);

/// Checks `allowed_mentions` as Discord does: known `parse` values, at most 100 ids per list,
/// ids that are snowflakes, and no `parse` entry that contradicts an explicit list.
pub(crate) fn check_allowed_mentions(body: &Value) -> Result<(), FieldError> {
    let Some(allowed) = body.get("allowed_mentions").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let at = |rest: &[&str]| -> Vec<String> {
        std::iter::once("allowed_mentions")
            .chain(rest.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    if !allowed.is_object() {
        let message = "Only dictionaries may be used in a DictType".to_owned();
        return Err((at(&[]), "DICT_TYPE_CONVERT", message));
    }
    let parse = allowed["parse"].as_array().cloned().unwrap_or_default();
    for (i, value) in parse.iter().enumerate() {
        if !value.as_str().is_some_and(|v| PARSE_VALUES.contains(&v)) {
            let message = "Value must be one of {'everyone', 'roles', 'users'}.".to_owned();
            let index = i.to_string();
            return Err((at(&["parse", &index]), "BASE_TYPE_CHOICES", message));
        }
    }
    for key in ["users", "roles"] {
        let Some(list) = allowed.get(key).and_then(Value::as_array) else {
            continue;
        };
        if list.len() > MAX_ALLOWED_IDS {
            let message = format!("Must be {MAX_ALLOWED_IDS} or fewer in length.");
            return Err((at(&[key]), "BASE_TYPE_MAX_LENGTH", message));
        }
        for (i, id) in list.iter().enumerate() {
            let snowflake = id.as_str().is_some_and(|s| s.parse::<u64>().is_ok()) || id.is_u64();
            if !snowflake {
                let message = format!("Value \"{id}\" is not snowflake.");
                let index = i.to_string();
                return Err((at(&[key, &index]), "NUMBER_TYPE_COERCE", message));
            }
        }
        if !list.is_empty() && parse.iter().any(|v| v == key) {
            let message = format!("parse:[\"{key}\"] and {key}: [ids] are mutually exclusive.");
            return Err((at(&[]), "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE", message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn anyone(_: u64) -> bool {
        true
    }

    #[test]
    fn without_allowed_mentions_everything_written_pings() {
        let p = pings("hi <@1> <@!2> <@&3> @everyone", None, true, anyone);
        assert_eq!(p.users.len(), 2);
        assert_eq!(p.roles.len(), 1);
        assert!(p.everyone);
        let dm = pings("hi <@&3> @here", None, false, anyone);
        assert!(dm.is_empty(), "no roles or @everyone outside servers");
    }

    #[test]
    fn allowed_mentions_filter_what_pings() {
        let only_one = json!({ "parse": [], "users": ["1"] });
        let p = pings("<@1> <@2> <@&3> @everyone", Some(&only_one), true, anyone);
        assert!(p.at_most(UserId::new(1)) && !p.is_empty(), "{p:?}");
        let none = json!({ "parse": [] });
        assert!(pings("<@1> @everyone", Some(&none), true, anyone).is_empty());
        let users = json!({ "parse": ["users"] });
        assert_eq!(
            pings("<@1> <@2>", Some(&users), true, anyone).users.len(),
            2
        );
        assert!(pings("<@5x> <@> <@&>", None, true, anyone).is_empty());
    }

    #[test]
    fn contradictions_and_bad_values_are_refused() {
        let contradiction = json!({ "allowed_mentions": { "parse": ["users"], "users": ["1"] } });
        let (path, code, _) = check_allowed_mentions(&contradiction).unwrap_err();
        assert_eq!(
            (path, code),
            (
                vec!["allowed_mentions".to_owned()],
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE"
            )
        );
        let unknown = json!({ "allowed_mentions": { "parse": ["users", "channels"] } });
        assert_eq!(
            check_allowed_mentions(&unknown).unwrap_err().1,
            "BASE_TYPE_CHOICES"
        );
        let ids: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
        let many = json!({ "allowed_mentions": { "users": ids } });
        assert_eq!(
            check_allowed_mentions(&many).unwrap_err().1,
            "BASE_TYPE_MAX_LENGTH"
        );
        let fine = json!({ "allowed_mentions": { "parse": ["roles"], "users": ["1"] } });
        assert!(check_allowed_mentions(&fine).is_ok());
    }
}
