//! The simulator's clock: real elapsed time plus an offset that tests move forward.
//!
//! Discord's deadlines (3 s to answer an interaction, 15 min for its token) are judged against
//! this clock, so a test can jump past them with `advance_clock` instead of sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) struct SimClock {
    started: Instant,
    offset: Mutex<Duration>,
}

impl SimClock {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Time since the simulator started, as the simulator sees it.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed() + *self.offset.lock().unwrap()
    }

    pub(crate) fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }

    /// Wall-clock milliseconds since the Unix epoch, shifted by the offset.
    pub(crate) fn unix_millis(&self) -> u64 {
        let now = SystemTime::now() + *self.offset.lock().unwrap();
        now.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// An ISO 8601 timestamp, as Discord writes them.
    pub(crate) fn timestamp(&self) -> String {
        let millis = self.unix_millis() as i64;
        serenity::model::Timestamp::from_millis(millis)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| "2025-01-01T00:00:00.000Z".to_owned())
    }
}
