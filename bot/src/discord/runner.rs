//! Where jobs run, as the dispatcher sees it: hand over a job and its stop flag, read its
//! progress and end. Two implementations: the local engine thread
//! ([`EngineThread`](super::engine_thread::EngineThread), `imagine bot`) and the JetStream
//! queue to remote workers ([`Remote`](crate::jetstream::gateway::Remote), `--role gateway`).

use tokio::sync::mpsc;

use super::engine_thread::{EngineEvent, EngineThread};
use crate::queue::StopFlag;
use crate::store::Job;

pub trait JobRunner: Send + Sync {
    /// Starts `job`; its progress and end come back on the returned channel. A channel that
    /// closes without [`EngineEvent::End`] means the runner lost the job: call
    /// [`JobRunner::restart`].
    fn run(&self, job: Job, stop: StopFlag) -> mpsc::UnboundedReceiver<EngineEvent>;

    /// Recovers after a lost job (a new engine thread for the next one).
    fn restart(&self);
}

impl JobRunner for EngineThread {
    fn run(&self, job: Job, stop: StopFlag) -> mpsc::UnboundedReceiver<EngineEvent> {
        EngineThread::run(self, job, stop)
    }

    fn restart(&self) {
        EngineThread::restart(self)
    }
}
