//! The SQLite store: the single source of truth for jobs and their images.
//!
//! Everything a button or a restart needs is here, so the bot holds no state worth losing in
//! memory. The schema lives in `migrations/` at the repository root, embedded in the binary and
//! applied by [`Store::open`].
//!
//! - [`types`]: ids, kinds, statuses and the records read and written.
//! - [`jobs`]: inserting jobs, moving them through their statuses, reading them back.
//! - [`outbox`]: admission and delivery: unconfirmed first replies, ended jobs not yet
//!   delivered, interaction tokens forgotten once they are of no use.
//! - [`retention`]: which finished jobs' images may be deleted, and remembering it.
//! - [`settings`]: per-user defaults (`/settings`, `/prefer suffix`).
//!
//! Status changes are single conditional `UPDATE`s (`... WHERE status IN (allowed sources)`),
//! so two tasks racing on one job cannot both win, and the legal transitions are written once,
//! in [`JobStatus::allowed_sources`].

/// `SELECT <every jobs column> FROM jobs <tail>`, as one `&'static str`.
macro_rules! select_jobs {
    ($tail:literal) => {
        concat!(
            "SELECT id, user_id, channel_id, guild_id, is_dm, interaction_token, application_id,
                    message_id, kind, parent_job, parent_index, prompt, negative_prompt,
                    params_json, model, seeds, status, error, created_at, started_at, finished_at,
                    bot_in_place, admitted, delivered_at, delivery_attempts, dm_notice_at,
                    image_url, precision, device
             FROM jobs ",
            $tail
        )
    };
}

mod jobs;
mod outbox;
mod retention;
mod settings;
mod types;

#[cfg(test)]
mod outbox_tests;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use retention::{Purge, RetainedJob, RetentionInventory, RetentionLimits};
pub use settings::{StylizePreset, UserSettings, MAX_SUFFIX_CHARS};
pub use types::{
    Compute, Delivery, ImageRecord, Job, JobId, JobKind, JobParams, JobStatus, NewJob, Parent,
    StoreError,
};

/// How long a connection waits for another writer before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on the database. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) the database file at `path` and brings its schema up to
    /// date. WAL mode, so readers never block the writer; foreign keys enforced.
    pub async fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; only a power loss can
            // drop the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Cleared interaction tokens must not linger in freed space of the file.
            .pragma("secure_delete", "ON")
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Store::migrated(pool).await
    }

    /// A private database in memory, for tests. It lives as long as the store: one connection
    /// that is never closed (every in-memory connection would be a database of its own).
    pub async fn open_in_memory() -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Store::migrated(pool).await
    }

    async fn migrated(pool: SqlitePool) -> Result<Store, StoreError> {
        sqlx::migrate!("../migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Copies the write-ahead log into the database file and empties it, so what was
    /// overwritten (interaction tokens once used) is gone from the WAL file too. Best effort:
    /// a busy reader only makes it partial.
    pub async fn compact_wal(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use. Later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Now, in unix milliseconds.
fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
