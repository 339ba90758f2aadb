//! The bounded job queue: at most `capacity` jobs wait, at most `user_cap` jobs per user are
//! waiting or running, and every waiting job knows its position. Admission is a two-step
//! [`Reservation`]: the slot is taken (and the caps checked) before the job is written to the
//! store, and the job enters the line only once everything it needs is ready.
//!
//! A waiting job can be withdrawn (cancel); a running one carries a [`StopFlag`] that the
//! engine reads between steps (cancel, or a graceful stop that requeues it). As many jobs run
//! at once as there are workers (one per compute device); positions count the line, and the
//! wait a position means is estimated from recent job times and the number of workers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::JobId;

/// Why a job was not admitted; each says what the user can do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("The queue is full ({0} jobs waiting). Please try again in a few minutes.")]
    Full(usize),
    #[error(
        "You already have {0} jobs queued or running. Wait for one to finish, then try again."
    )]
    UserCap(usize),
}

/// Why a running job should stop at its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The requester (or an admin) cancelled it: it ends, cancelled.
    Cancelled = 1,
    /// The bot is stopping: the job goes back in line for the next start.
    ShuttingDown = 2,
}

/// Read by the running job between steps; set from any thread.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicU8>);

impl StopFlag {
    /// Asks the job to stop. A cancel wins over a shutdown (the user's wish is final).
    pub fn request(&self, why: StopReason) {
        match why {
            StopReason::Cancelled => self.0.store(why as u8, Ordering::SeqCst),
            StopReason::ShuttingDown => {
                let _ = self
                    .0
                    .compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
    }

    pub fn requested(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancelled),
            2 => Some(StopReason::ShuttingDown),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    waiting: VecDeque<(JobId, u64)>,
    running: Vec<Running>,
    /// Slots taken by admissions not yet committed, per user.
    reserved: Vec<u64>,
    /// A moving average of how long a finished job took.
    typical: Option<Duration>,
}

/// A job a worker has taken.
#[derive(Debug)]
struct Running {
    job: JobId,
    user: u64,
    stop: StopFlag,
    /// Recorded as running in the store. Until then the job keeps its place in the capacity,
    /// so that the store never shows more jobs waiting than the queue allows.
    started: bool,
}

impl State {
    fn active_for(&self, user: u64) -> usize {
        self.waiting.iter().filter(|(_, u)| *u == user).count()
            + self.running.iter().filter(|r| r.user == user).count()
            + self.reserved.iter().filter(|u| **u == user).count()
    }

    /// Places the capacity counts: waiting, being admitted, taken but not yet started.
    fn held(&self) -> usize {
        self.waiting.len()
            + self.reserved.len()
            + self.running.iter().filter(|r| !r.started).count()
    }
}

/// Shared handle on the queue.
#[derive(Clone)]
pub struct JobQueue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
    capacity: usize,
    user_cap: usize,
    /// How many jobs run at once.
    workers: usize,
}

/// A taken slot; dropped without [`Reservation::commit`], it is given back.
pub struct Reservation {
    queue: JobQueue,
    user: u64,
    committed: bool,
}

impl Reservation {
    /// The position the job will most likely get: behind the waiting jobs and the other
    /// admissions still in progress (this one counts itself among them). If the guess turns
    /// out wrong, the caller re-shows the real position after [`Reservation::commit`].
    pub fn expected_position(&self) -> usize {
        let s = self.queue.lock();
        s.waiting.len() + s.reserved.len()
    }

    /// Puts the job in line; returns its position (1 = next). The line is in the order the
    /// store admitted its jobs (job ids grow with each): a job whose admission took longer
    /// (its first message slow to confirm, an image prompt downloading) keeps its place ahead
    /// of the jobs asked for after it that have not started yet.
    pub fn commit(mut self, job: JobId) -> usize {
        self.committed = true;
        let mut s = self.queue.lock();
        release(&mut s, self.user);
        let at = s
            .waiting
            .iter()
            .position(|(j, _)| *j > job)
            .unwrap_or(s.waiting.len());
        s.waiting.insert(at, (job, self.user));
        let position = at + 1;
        crate::metrics::queue_depth(s.waiting.len());
        drop(s);
        self.queue.ready.notify_waiters();
        position
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            release(&mut self.queue.lock(), self.user);
        }
    }
}

fn release(s: &mut State, user: u64) {
    if let Some(i) = s.reserved.iter().position(|u| *u == user) {
        s.reserved.swap_remove(i);
    }
}

impl JobQueue {
    pub fn new(capacity: usize, user_cap: usize) -> Self {
        Self {
            state: Arc::default(),
            ready: Arc::new(Notify::new()),
            capacity,
            user_cap,
            workers: 1,
        }
    }

    /// A queue feeding `workers` workers (at least one): that many jobs run at once.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// How many jobs run at once.
    pub fn workers(&self) -> usize {
        self.workers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `user`, or says why not.
    pub fn reserve(&self, user: u64) -> Result<Reservation, QueueError> {
        let mut s = self.lock();
        if s.held() >= self.capacity {
            return Err(QueueError::Full(self.capacity));
        }
        if s.active_for(user) >= self.user_cap {
            return Err(QueueError::UserCap(self.user_cap));
        }
        s.reserved.push(user);
        Ok(Reservation {
            queue: self.clone(),
            user,
            committed: false,
        })
    }

    /// Puts a job back in line without checking caps (jobs resumed after a restart).
    pub fn resume(&self, job: JobId, user: u64) {
        let mut s = self.lock();
        s.waiting.push_back((job, user));
        crate::metrics::queue_depth(s.waiting.len());
        drop(s);
        self.ready.notify_waiters();
    }

    /// Waits for the next job and marks it running.
    pub async fn next(&self) -> JobId {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if s.running.len() < self.workers {
                    if let Some((job, user)) = s.waiting.pop_front() {
                        s.running.push(Running {
                            job,
                            user,
                            stop: StopFlag::default(),
                            started: false,
                        });
                        crate::metrics::queue_depth(s.waiting.len());
                        return job;
                    }
                }
            }
            notified.await;
        }
    }

    /// The store records `job` as running (or it ended before it could start): its place
    /// in the queue's capacity is free.
    pub fn started(&self, job: JobId) {
        let mut s = self.lock();
        if let Some(r) = s.running.iter_mut().find(|r| r.job == job) {
            r.started = true;
        }
    }

    /// A running job ended; the next may start.
    pub fn finish(&self, job: JobId) {
        let mut s = self.lock();
        s.running.retain(|r| r.job != job);
        drop(s);
        self.ready.notify_waiters();
    }

    /// Takes a waiting job out of line (it was cancelled). False if it was not waiting.
    pub fn withdraw(&self, job: JobId) -> bool {
        let mut s = self.lock();
        let before = s.waiting.len();
        s.waiting.retain(|(j, _)| *j != job);
        s.waiting.len() != before
    }

    /// The running jobs.
    pub fn running(&self) -> Vec<JobId> {
        self.lock().running.iter().map(|r| r.job).collect()
    }

    /// The stop flag of `job` if it is running.
    pub fn stop_flag(&self, job: JobId) -> Option<StopFlag> {
        let s = self.lock();
        s.running
            .iter()
            .find(|r| r.job == job)
            .map(|r| r.stop.clone())
    }

    /// Records how long a finished job took, for [`JobQueue::wait_for`].
    pub fn record_job_time(&self, took: Duration) {
        let mut s = self.lock();
        s.typical = Some(match s.typical {
            None => took,
            // Recent jobs weigh most: models, sizes and load change.
            Some(avg) => avg.mul_f64(0.7) + took.mul_f64(0.3),
        });
    }

    /// About how long the job at `position` (1 = next) waits before it starts: the jobs
    /// before it and the running ones are shared among the workers. `None` until a job has
    /// finished (nothing to estimate from).
    pub fn wait_for(&self, position: usize) -> Option<Duration> {
        let s = self.lock();
        let typical = s.typical?;
        let rounds = position.div_ceil(self.workers);
        // The running jobs are half done, on average.
        let busy = s.running.len().min(self.workers) as f64 / self.workers as f64;
        Some(typical.mul_f64((rounds as f64 - 1.0 + busy * 0.5).max(0.0)))
    }

    /// Waiting jobs with their positions (1 = next).
    pub fn positions(&self) -> Vec<(JobId, usize)> {
        self.lock()
            .waiting
            .iter()
            .enumerate()
            .map(|(i, (job, _))| (*job, i + 1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_one_at_a_time() {
        let q = JobQueue::new(4, 4);
        let r = q.reserve(1).unwrap();
        assert_eq!(r.expected_position(), 1);
        assert_eq!(r.commit(JobId(1)), 1);
        let pending = q.reserve(3).unwrap();
        assert_eq!(
            q.reserve(4).unwrap().expected_position(),
            3,
            "behind a pending admission"
        );
        drop(pending);
        assert_eq!(q.reserve(2).unwrap().commit(JobId(2)), 2);
        assert_eq!(q.next().await, JobId(1));
        assert_eq!(q.positions(), vec![(JobId(2), 1)]);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), q.next()).await;
        assert!(
            waiting.is_err(),
            "a second job must not start while one runs"
        );
        q.finish(JobId(1));
        assert_eq!(q.next().await, JobId(2));
    }

    #[tokio::test]
    async fn a_slower_admission_keeps_its_place_ahead_of_later_jobs() {
        let q = JobQueue::new(8, 8);
        assert_eq!(q.reserve(1).unwrap().commit(JobId(1)), 1);
        assert_eq!(q.next().await, JobId(1), "job 1 runs");
        // Job 2 was written first but its first message took longer than job 3's and 4's.
        let slow = q.reserve(2).unwrap();
        assert_eq!(q.reserve(3).unwrap().commit(JobId(3)), 1);
        assert_eq!(q.reserve(4).unwrap().commit(JobId(4)), 2);
        assert_eq!(
            slow.commit(JobId(2)),
            1,
            "ahead of the jobs asked for after it"
        );
        assert_eq!(
            q.positions(),
            vec![(JobId(2), 1), (JobId(3), 2), (JobId(4), 3)]
        );
        // A started job is not overtaken: ids only order the waiting.
        q.finish(JobId(1));
        assert_eq!(q.next().await, JobId(2));
    }

    #[test]
    fn a_full_queue_and_a_busy_user_are_refused() {
        let q = JobQueue::new(3, 2);
        let a = q.reserve(1).unwrap();
        let _b = q.reserve(1).unwrap();
        assert_eq!(q.reserve(1).err(), Some(QueueError::UserCap(2)));
        let _c = q.reserve(2).unwrap();
        assert_eq!(q.reserve(3).err(), Some(QueueError::Full(3)));
        drop(a);
        assert!(
            q.reserve(3).is_ok(),
            "a dropped reservation gives its slot back"
        );
    }

    #[tokio::test]
    async fn a_cancelled_job_leaves_the_line_and_a_running_one_is_asked_to_stop() {
        let q = JobQueue::new(4, 4);
        q.reserve(1).unwrap().commit(JobId(1));
        q.reserve(1).unwrap().commit(JobId(2));
        q.reserve(1).unwrap().commit(JobId(3));
        assert!(q.withdraw(JobId(2)));
        assert!(!q.withdraw(JobId(2)), "only once");
        assert_eq!(q.next().await, JobId(1));
        assert_eq!(q.positions(), vec![(JobId(3), 1)], "3 moved up");
        let flag = q.stop_flag(JobId(1)).expect("1 runs");
        assert!(q.stop_flag(JobId(3)).is_none());
        flag.request(StopReason::ShuttingDown);
        flag.request(StopReason::Cancelled);
        flag.request(StopReason::ShuttingDown);
        assert_eq!(
            flag.requested(),
            Some(StopReason::Cancelled),
            "a cancel is final"
        );
        q.finish(JobId(1));
        assert_eq!(q.next().await, JobId(3));
        assert_eq!(
            q.stop_flag(JobId(3)).unwrap().requested(),
            None,
            "a fresh flag"
        );
    }

    #[tokio::test]
    async fn the_running_job_counts_toward_the_user_cap_but_not_the_queue() {
        let q = JobQueue::new(1, 1);
        q.reserve(7).unwrap().commit(JobId(1));
        assert_eq!(q.next().await, JobId(1));
        assert_eq!(
            q.reserve(8).err(),
            Some(QueueError::Full(1)),
            "until the store records it as started, it holds its place"
        );
        q.started(JobId(1));
        assert_eq!(q.reserve(7).err(), Some(QueueError::UserCap(1)));
        assert!(q.reserve(8).is_ok());
    }

    #[tokio::test]
    async fn several_workers_run_as_many_jobs_at_once() {
        let q = JobQueue::new(8, 8).with_workers(2);
        for id in 1..=3 {
            q.reserve(id).unwrap().commit(JobId(id as i64));
        }
        assert_eq!(q.next().await, JobId(1));
        assert_eq!(q.next().await, JobId(2), "the second worker starts at once");
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), q.next()).await;
        assert!(third.is_err(), "two workers run two jobs, not three");
        assert_eq!(q.running(), vec![JobId(1), JobId(2)]);
        assert!(q.stop_flag(JobId(2)).is_some() && q.stop_flag(JobId(3)).is_none());
        q.finish(JobId(2));
        assert_eq!(q.next().await, JobId(3), "a finished job frees its worker");
        assert_eq!(q.running(), vec![JobId(1), JobId(3)]);
    }

    #[tokio::test]
    async fn the_wait_estimate_shares_the_line_among_the_workers() {
        let one = JobQueue::new(8, 8);
        let two = JobQueue::new(8, 8).with_workers(2);
        assert_eq!(one.wait_for(1), None, "nothing to estimate from yet");
        for q in [&one, &two] {
            q.record_job_time(Duration::from_secs(10));
            for id in 1..=5 {
                q.reserve(id).unwrap().commit(JobId(id as i64));
            }
        }
        assert_eq!(one.next().await, JobId(1));
        assert_eq!(two.next().await, JobId(1));
        assert_eq!(two.next().await, JobId(2));
        // One worker: the running job is half done, then three jobs before position 4.
        assert_eq!(one.wait_for(4), Some(Duration::from_secs(35)));
        // Two workers: both busy (half done), then one round of two before position 3.
        assert_eq!(two.wait_for(3), Some(Duration::from_secs(15)));
        assert_eq!(two.wait_for(1), Some(Duration::from_secs(5)));
        two.record_job_time(Duration::from_secs(20));
        assert_eq!(
            two.wait_for(1),
            Some(Duration::from_secs(6) + Duration::from_millis(500))
        );
    }
}
