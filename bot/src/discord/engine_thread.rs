//! The engine thread, supervised. The models live on one dedicated thread (candle work is
//! blocking); each job runs there under `catch_unwind`, so a panic in one job (a kernel bug,
//! weights that load but are wrong) fails that job and only that job. After a panic the loaded
//! models are dropped and reloaded clean on the next job; if the thread dies anyway, the next
//! job starts a new one.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use tokio::sync::mpsc;

use crate::queue::{StopFlag, StopReason};
use crate::store::Job;
use crate::worker::{run_job, was_stopped, Engines, JobOutput, JobProgress, WorkItem};

/// How a job ended on the engine thread.
pub enum JobEnd {
    Done(JobOutput),
    /// `shown` is what the user reads; `detail` the whole chain, for the log.
    Failed {
        shown: String,
        detail: String,
    },
    /// Stopped between steps.
    Stopped(StopReason),
    /// The job panicked (details are in the log).
    Panicked,
    /// The end is already in the store (a remote worker's result, written by the gateway's
    /// result reader); `done` if it made images.
    Recorded {
        done: bool,
    },
}

/// What the engine thread reports about the job it runs.
pub enum EngineEvent {
    Progress(JobProgress),
    End(JobEnd),
}

struct Order {
    job: Job,
    stop: StopFlag,
    events: mpsc::UnboundedSender<EngineEvent>,
}

/// Builds a fresh set of (not yet loaded) models.
pub type EnginesFactory = Arc<dyn Fn() -> Engines + Send + Sync>;

/// TEST ONLY: faults the end-to-end tests inject into the real binary, read once at start from
/// `IMAGINE_TEST_FAULTS`, a comma-separated list of:
/// - `panic-in-job:WORD`: any job whose prompt contains WORD panics on the engine thread;
/// - `slow-job:WORD`: each step of such a job takes [`SLOW_STEP`] longer, so tests can act
///   while it runs (tiny test models finish in milliseconds).
///
/// Unset in production, where it changes nothing.
#[derive(Debug, Clone, Default)]
pub struct TestFaults {
    panic_word: Option<String>,
    slow_word: Option<String>,
}

/// How much longer a step of a `slow-job` takes.
const SLOW_STEP: std::time::Duration = std::time::Duration::from_millis(400);

impl TestFaults {
    pub fn from_env() -> TestFaults {
        let spec = std::env::var("IMAGINE_TEST_FAULTS").unwrap_or_default();
        TestFaults::parse(&spec)
    }

    fn parse(spec: &str) -> TestFaults {
        let mut faults = TestFaults::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let word = |prefix: &str| {
                item.strip_prefix(prefix)
                    .filter(|w| !w.is_empty())
                    .map(str::to_string)
            };
            if let Some(w) = word("panic-in-job:") {
                faults.panic_word = Some(w);
            } else if let Some(w) = word("slow-job:") {
                faults.slow_word = Some(w);
            } else {
                tracing::warn!(item, "unknown IMAGINE_TEST_FAULTS item, ignored");
            }
        }
        if faults.panic_word.is_some() || faults.slow_word.is_some() {
            tracing::warn!(
                "IMAGINE_TEST_FAULTS is set: faults are injected on purpose (tests only)"
            );
        }
        faults
    }

    fn hits(word: &Option<String>, job: &Job) -> bool {
        word.as_deref()
            .is_some_and(|w| job.request.prompt.contains(w))
    }

    fn before_job(&self, job: &Job) {
        if Self::hits(&self.panic_word, job) {
            panic!("test fault: panic-in-job");
        }
    }

    fn on_step(&self, job: &Job) {
        if Self::hits(&self.slow_word, job) {
            std::thread::sleep(SLOW_STEP);
        }
    }
}

/// The handle the dispatcher holds.
pub struct EngineThread {
    factory: EnginesFactory,
    data_dir: PathBuf,
    faults: TestFaults,
    sender: Mutex<Option<std_mpsc::Sender<Order>>>,
}

impl EngineThread {
    pub fn new(factory: EnginesFactory, data_dir: PathBuf, faults: TestFaults) -> EngineThread {
        EngineThread {
            factory,
            data_dir,
            faults,
            sender: Mutex::new(None),
        }
    }

    /// Hands `job` to the engine thread (starting one if there is none); its progress and end
    /// come back on the returned channel. A channel that closes without [`EngineEvent::End`]
    /// means the thread died: call [`EngineThread::restart`].
    pub fn run(&self, job: Job, stop: StopFlag) -> mpsc::UnboundedReceiver<EngineEvent> {
        let (events, rx) = mpsc::unbounded_channel();
        let mut order = Order { job, stop, events };
        let mut sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..2 {
            let tx = sender.get_or_insert_with(|| self.spawn());
            match tx.send(order) {
                Ok(()) => return rx,
                Err(std_mpsc::SendError(back)) => {
                    tracing::error!("the engine thread had stopped; starting a new one");
                    order = back;
                    *sender = None;
                }
            }
        }
        // Spawning failed twice: the receiver closes at once and the job fails visibly.
        rx
    }

    /// Forgets the current thread; the next job starts a new one.
    pub fn restart(&self) {
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn spawn(&self) -> std_mpsc::Sender<Order> {
        let (tx, rx) = std_mpsc::channel::<Order>();
        let factory = self.factory.clone();
        let data_dir = self.data_dir.clone();
        let faults = self.faults.clone();
        let spawned = std::thread::Builder::new()
            .name("imagine-worker".into())
            .spawn(move || serve(rx, factory, data_dir, faults));
        if let Err(e) = spawned {
            tracing::error!("cannot start the engine thread: {e}");
        }
        tx
    }
}

fn serve(
    orders: std_mpsc::Receiver<Order>,
    factory: EnginesFactory,
    data_dir: PathBuf,
    faults: TestFaults,
) {
    // Subnormal floats cost 10-100x on x86; the diffusion loop never needs them.
    imagine_engine::kernels::denormals::flush_on_compute_threads();
    let mut engines = factory();
    for order in orders {
        let span = tracing::info_span!("job", id = order.job.id.0);
        let _entered = span.enter();
        let events = order.events.clone();
        let stop = order.stop.clone();
        let item = WorkItem { job: order.job };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            faults.before_job(&item.job);
            run_job(&mut engines, &item, &data_dir, &mut |p| {
                faults.on_step(&item.job);
                let _ = events.send(EngineEvent::Progress(p));
                match stop.requested() {
                    Some(_) => ControlFlow::Break(()),
                    None => ControlFlow::Continue(()),
                }
            })
        }));
        let end = match outcome {
            Ok(Ok(output)) => JobEnd::Done(output),
            Ok(Err(e)) if was_stopped(&e) => {
                JobEnd::Stopped(stop.requested().unwrap_or(StopReason::Cancelled))
            }
            Ok(Err(e)) => JobEnd::Failed {
                shown: user_facing(&e.to_string()),
                detail: format!("{e:#}"),
            },
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                tracing::error!("the job panicked: {what}; reloading the models for the next job");
                // Whatever the panic left half-built is dropped; models load again on use.
                engines = factory();
                JobEnd::Panicked
            }
        };
        let _ = order.events.send(EngineEvent::End(end));
    }
}

/// A failure as users see it: the first line, without file system paths.
pub fn user_facing(error: &str) -> String {
    let first = error.lines().next().unwrap_or(error);
    let short: String = first.chars().take(300).collect();
    if short.contains('/') {
        "the image could not be made (see the bot's log)".into()
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_faults_are_read_strictly() {
        let f = TestFaults::parse("panic-in-job:boom, slow-job:slow,bogus,panic-in-job:");
        assert_eq!(f.panic_word.as_deref(), Some("boom"));
        assert_eq!(f.slow_word.as_deref(), Some("slow"));
        let none = TestFaults::parse("");
        assert!(none.panic_word.is_none() && none.slow_word.is_none());
    }

    #[test]
    fn users_never_see_paths() {
        assert_eq!(
            user_facing("the model broken could not be loaded"),
            "the model broken could not be loaded"
        );
        assert!(!user_facing("cannot read /srv/x.png").contains("/srv"));
    }
}
