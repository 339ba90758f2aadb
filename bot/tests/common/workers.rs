//! `imagine worker` processes for the scaled-out tests: started with the tiny model against a
//! NATS server, each with its own data folder and log, killed with SIGKILL when a test says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use imagine_tests::servers::nats::NatsServer;
use tokio::process::{Child, Command};

use super::{root, WAIT};

/// A job is handed to another worker this long after its worker went silent.
pub const ACK_WAIT: &str = "2";

pub struct Worker {
    child: Option<Child>,
    log: PathBuf,
}

/// Starts `imagine worker` named `name` (its own data folder and log under `dir`) and waits
/// until it takes jobs.
pub async fn start_worker(
    dir: &Path,
    name: &str,
    nats: &NatsServer,
    env: &[(&str, &str)],
) -> Worker {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagine"));
    cmd.arg("worker")
        .env("IMAGINE_MODEL", root().join("assets/models/tiny-sd15"))
        .env("IMAGINE_DATA_DIR", dir.join(name))
        .env("IMAGINE_QUEUE_URL", nats.url())
        .env("IMAGINE_WORKER_NAME", name)
        .env("IMAGINE_JOB_ACK_WAIT", ACK_WAIT)
        .env("IMAGINE_DEVICE", "cpu")
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "warn,imagine=info")
        .env("IMAGINE_TEST_FAULTS", "slow-job:slow")
        .env_remove("DISCORD_TOKEN")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let worker = Worker {
        child: Some(cmd.spawn().expect("start imagine worker")),
        log,
    };
    worker
        .wait_log("a worker ready", |l| l.contains("worker ready"))
        .await;
    worker
}

impl Worker {
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Whether its log has a line about `job` saying `what`.
    pub fn says(&self, job: i64, what: &str) -> bool {
        let span = format!("job{{id={job}}}");
        self.lines()
            .iter()
            .any(|l| l.contains(&span) && l.contains(what))
    }

    pub fn touched(&self, job: i64) -> bool {
        let span = format!("job{{id={job}}}");
        self.lines().iter().any(|l| l.contains(&span))
    }

    pub async fn wait_log(&self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.lines().iter().any(|l| f(l)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not in {}:\n{}",
                self.log.display(),
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_says(&self, job: i64, what: &str) {
        self.wait_log(&format!("job {job}: {what}"), |l| {
            l.contains(&format!("job{{id={job}}}")) && l.contains(what)
        })
        .await;
    }

    /// SIGKILL: no cleanup, no goodbye to the queue.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
}
