//! The queue settings of a gateway and its workers, checked strictly at start.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::config::Role;

/// The queue settings as given (flags, environment, file), before checking.
#[derive(Debug, Default)]
pub struct QueueInputs {
    pub url: Option<String>,
    pub slots: Option<usize>,
    pub models: Option<Vec<String>>,
    pub ack_wait: Option<f64>,
    pub max_attempts: Option<u32>,
    pub name: Option<String>,
}

/// How a gateway and its workers share the JetStream queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// `nats://host:port` (or `tls://`).
    pub url: String,
    /// Gateway: jobs handed to the workers at once.
    pub slots: usize,
    /// Worker: the models it serves (`None`: all configured).
    pub models: Option<Vec<String>>,
    /// After this long without an ack or an in-progress signal, a job goes to another worker.
    pub ack_wait: Duration,
    /// Workers that may take a job before it fails visibly.
    pub max_attempts: u32,
    /// Worker: its name in logs and results.
    pub worker_name: String,
}

/// The most jobs a gateway hands out at once (each holds a task and a little memory).
const MAX_SLOTS: usize = 1024;
const MAX_ATTEMPTS: u32 = 10;

impl QueueSettings {
    /// The settings for `role`: none for `bot` without a queue_url; a gateway and a worker
    /// need one.
    pub fn resolve(role: Role, given: QueueInputs) -> Result<Option<QueueSettings>> {
        let url = given
            .url
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty());
        let url = match (role, url) {
            (Role::Bot, None) => return Ok(None),
            (Role::Bot, Some(_)) => bail!(
                "queue_url is set: run `imagine bot --role gateway` and `imagine worker` processes, or unset it (IMAGINE_QUEUE_URL) to run everything in one process"
            ),
            (_, None) => bail!(
                "a gateway and its workers share a NATS JetStream server: set queue_url (IMAGINE_QUEUE_URL), e.g. nats://127.0.0.1:4222"
            ),
            (_, Some(url)) => check_url(&url)?,
        };
        let slots = given.slots.unwrap_or(4);
        if !(1..=MAX_SLOTS).contains(&slots) {
            bail!("worker_slots must be between 1 and {MAX_SLOTS}, got {slots} (IMAGINE_WORKER_SLOTS)");
        }
        let ack_wait = given.ack_wait.unwrap_or(30.0);
        if !(1.0..=3600.0).contains(&ack_wait) {
            bail!("job_ack_wait must be between 1 and 3600 seconds, got {ack_wait} (IMAGINE_JOB_ACK_WAIT)");
        }
        let max_attempts = given.max_attempts.unwrap_or(3);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            bail!("job_max_attempts must be between 1 and {MAX_ATTEMPTS}, got {max_attempts} (IMAGINE_JOB_MAX_ATTEMPTS)");
        }
        let worker_name = match given.name.map(|n| n.trim().to_string()) {
            Some(n) if n.is_empty() || n.len() > 64 || n.chars().any(char::is_control) => {
                bail!("worker_name must be 1 to 64 printable characters (IMAGINE_WORKER_NAME)")
            }
            Some(n) => n,
            None => default_worker_name(),
        };
        Ok(Some(QueueSettings {
            url,
            slots,
            models: given.models,
            ack_wait: Duration::from_secs_f64(ack_wait),
            max_attempts,
            worker_name,
        }))
    }

    /// Every model a worker names is configured, and every model maps to its own subject.
    pub fn check_models(&self, configured: &BTreeMap<String, String>, role: Role) -> Result<()> {
        let mut tokens = BTreeMap::new();
        for name in configured.keys() {
            let token = super::subject_token(name);
            if let Some(other) = tokens.insert(token.clone(), name) {
                bail!("the models {other:?} and {name:?} would share the queue subject {token:?}: rename one in [models]");
            }
        }
        if role == Role::Worker {
            for name in self.models.iter().flatten() {
                if !configured.contains_key(name) {
                    let known: Vec<_> = configured.keys().map(String::as_str).collect();
                    bail!(
                        "worker_models names {name:?}, which is not a configured model; configured: {} (IMAGINE_WORKER_MODELS, [models])",
                        known.join(", ")
                    );
                }
            }
            if self.models.as_ref().is_some_and(Vec::is_empty) {
                bail!("worker_models is empty: name at least one model (IMAGINE_WORKER_MODELS)");
            }
        }
        Ok(())
    }

    /// The models a worker serves.
    pub fn served<'a>(&'a self, configured: &'a BTreeMap<String, String>) -> Vec<&'a str> {
        match &self.models {
            Some(models) => models.iter().map(String::as_str).collect(),
            None => configured.keys().map(String::as_str).collect(),
        }
    }
}

fn check_url(url: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url).ok();
    let ok = parsed.as_ref().is_some_and(|u| {
        matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if !ok {
        bail!("queue_url must be a NATS URL such as nats://127.0.0.1:4222 (IMAGINE_QUEUE_URL)");
    }
    Ok(url.to_string())
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(url: Option<&str>) -> QueueInputs {
        QueueInputs {
            url: url.map(str::to_string),
            ..QueueInputs::default()
        }
    }

    #[test]
    fn one_process_needs_no_queue_and_the_others_need_one() {
        assert_eq!(
            QueueSettings::resolve(Role::Bot, inputs(None)).unwrap(),
            None
        );
        let e = QueueSettings::resolve(Role::Bot, inputs(Some("nats://h:4222"))).unwrap_err();
        assert!(e.to_string().contains("--role gateway"), "{e}");
        for role in [Role::Gateway, Role::Worker] {
            let e = QueueSettings::resolve(role, inputs(None)).unwrap_err();
            assert!(e.to_string().contains("IMAGINE_QUEUE_URL"), "{e}");
        }
        let q = QueueSettings::resolve(Role::Gateway, inputs(Some("nats://127.0.0.1:4222")))
            .unwrap()
            .unwrap();
        assert_eq!((q.slots, q.max_attempts), (4, 3));
        assert_eq!(q.ack_wait, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        for url in ["http://h:4222", "nats://", "127.0.0.1:4222"] {
            let e = QueueSettings::resolve(Role::Worker, inputs(Some(url))).unwrap_err();
            assert!(
                e.to_string().contains("nats://127.0.0.1:4222"),
                "{url}: {e}"
            );
        }
        let bad = |f: &dyn Fn(&mut QueueInputs)| {
            let mut i = inputs(Some("nats://h"));
            f(&mut i);
            QueueSettings::resolve(Role::Worker, i)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&|i| i.slots = Some(0)).contains("worker_slots"));
        assert!(bad(&|i| i.ack_wait = Some(0.1)).contains("job_ack_wait"));
        assert!(bad(&|i| i.max_attempts = Some(0)).contains("job_max_attempts"));
        assert!(bad(&|i| i.name = Some(" ".into())).contains("worker_name"));
    }

    #[test]
    fn a_worker_serves_configured_models_only() {
        let configured: BTreeMap<_, _> = [("a".to_string(), "x".to_string())].into();
        let mut q = QueueSettings::resolve(Role::Worker, inputs(Some("nats://h")))
            .unwrap()
            .unwrap();
        assert_eq!(q.served(&configured), vec!["a"]);
        q.models = Some(vec!["b".into()]);
        let e = q.check_models(&configured, Role::Worker).unwrap_err();
        assert!(e.to_string().contains("configured: a"), "{e}");
        let clash: BTreeMap<_, _> = [
            ("a.b".to_string(), String::new()),
            ("a_b".to_string(), String::new()),
        ]
        .into();
        assert!(q.check_models(&clash, Role::Gateway).is_err());
    }
}
