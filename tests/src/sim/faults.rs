//! Fault injection: make chosen REST routes answer 429 or 5xx, answer late, or never answer.
//!
//! A rule names an HTTP method and a route pattern below `/api/v10` in which `*` stands for one
//! path segment and a trailing `**` for any rest, e.g. `POST /webhooks/*/*`. Each rule fires a
//! given number of times and then retires, so a client that retries can be seen to recover.

use std::time::Duration;

/// What a faulty route does instead of (or before) answering normally.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 with Discord's body and rate-limit headers; `retry_after` is in the body and headers.
    RateLimited { retry_after: Duration },
    /// The given 5xx status with Discord's error body.
    ServerError(u16),
    /// Answer normally, but only after this delay.
    Latency(Duration),
    /// Never answer and never act: the connection stays open until the client gives up (its
    /// timeout) or the simulator stops. Both are noted in the transcript.
    Hang,
    /// Act on the request (create or edit the message, ...) and record it, but never send the
    /// answer: the client cannot tell whether it worked, as when a connection drops after
    /// Discord committed. The retry that follows must not deliver twice.
    HangAfterApplying,
}

#[derive(Clone, Debug)]
pub(crate) struct FaultRule {
    method: String,
    pattern: Vec<String>,
    fault: Fault,
    remaining: usize,
    /// Fire only on requests that carry a finished result (see `ledger::carries_result`).
    results_only: bool,
}

impl FaultRule {
    pub(crate) fn new(method: &str, pattern: &str, fault: Fault, times: usize) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            pattern: segments(pattern).map(str::to_owned).collect(),
            fault,
            remaining: times,
            results_only: false,
        }
    }

    /// A rule that lets everything else through and fires only on finished results.
    pub(crate) fn for_results(mut self) -> Self {
        self.results_only = true;
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        if self.method != "*" && self.method != method {
            return false;
        }
        let mut parts = segments(path);
        for want in &self.pattern {
            if want == "**" {
                return true;
            }
            match parts.next() {
                Some(part) if want == "*" || want == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('?')
        .next()
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
}

/// Finds the first live rule for this call, uses one of its shots, and returns its fault.
/// `carries_result`: the request would show a finished result.
pub(crate) fn take_fault(
    rules: &mut Vec<FaultRule>,
    method: &str,
    path: &str,
    carries_result: bool,
) -> Option<Fault> {
    let index = rules.iter().position(|r| {
        r.remaining > 0 && r.matches(method, path) && (carries_result || !r.results_only)
    })?;
    let rule = &mut rules[index];
    rule.remaining -= 1;
    let fault = rule.fault.clone();
    if rule.remaining == 0 {
        rules.remove(index);
    }
    Some(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        let rule = FaultRule::new("post", "/webhooks/*/*", Fault::ServerError(500), 1);
        assert!(rule.matches("POST", "/webhooks/1/abc"));
        assert!(!rule.matches("POST", "/webhooks/1/abc/messages/@original"));
        assert!(!rule.matches("PATCH", "/webhooks/1/abc"));
        let tail = FaultRule::new("*", "/channels/**", Fault::ServerError(502), 1);
        assert!(tail.matches("DELETE", "/channels/5/messages/6"));
    }

    #[test]
    fn result_rules_let_other_requests_through() {
        let rule = FaultRule::new("PATCH", "/webhooks/**", Fault::Hang, 1).for_results();
        let mut rules = vec![rule];
        assert!(take_fault(
            &mut rules,
            "PATCH",
            "/webhooks/1/t/messages/@original",
            false
        )
        .is_none());
        assert!(take_fault(
            &mut rules,
            "PATCH",
            "/webhooks/1/t/messages/@original",
            true
        )
        .is_some());
    }

    #[test]
    fn rules_retire_after_their_shots() {
        let mut rules = vec![FaultRule::new(
            "GET",
            "/gateway",
            Fault::ServerError(503),
            2,
        )];
        assert!(take_fault(&mut rules, "GET", "/gateway", false).is_some());
        assert!(take_fault(&mut rules, "GET", "/gateway", false).is_some());
        assert!(take_fault(&mut rules, "GET", "/gateway", false).is_none());
    }
}
