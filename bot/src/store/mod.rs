//! The store: the single source of truth for jobs and their images, on SQLite (the default,
//! one file) or PostgreSQL (`database_url = "postgres://..."`, for several processes).
//!
//! Everything a button or a restart needs is here, so the bot holds no state worth losing in
//! memory. The schema lives in `migrations/` (SQLite) and `migrations/postgres/` (the same
//! versions, in PostgreSQL's types) at the repository root, embedded in the binary and applied
//! when the store opens.
//!
//! - [`types`]: ids, kinds, statuses and the records read and written.
//! - [`location`]: which database (a SQLite file or a PostgreSQL URL), parsed strictly.
//! - [`jobs`]: inserting jobs, moving them through their statuses, reading them back.
//! - [`outbox`]: admission and delivery: unconfirmed first replies, ended jobs not yet
//!   delivered, interaction tokens forgotten once they are of no use.
//! - [`retention`]: which finished jobs' images may be deleted, and remembering it.
//! - [`settings`]: per-user defaults (`/settings`, `/prefer suffix`).
//!
//! One SQL text serves both back-ends: `$N` placeholders (which sqlx-sqlite binds by number
//! too), `TRUE`/`FALSE` and bare boolean columns, integer types that read as `i64` on both.
//! The few statements that differ (JSON access) are written twice, side by side, and
//! [`on_pool!`] runs a body with whichever pool the store has.
//!
//! Status changes are single conditional `UPDATE`s (`... WHERE status IN (allowed sources)`),
//! so two tasks (or two processes) racing on one job cannot both win, and the legal
//! transitions are written once, in [`JobStatus::allowed_sources`].

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

/// Runs `$body` with `$pool` bound to the store's pool, a `SqlitePool` or a `PgPool`, and
/// `$dialect` to the matching [`Dialect`]: the body is compiled once per back-end.
macro_rules! on_pool {
    ($store:expr, |$pool:ident, $dialect:ident| $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $dialect = $crate::store::Dialect::Sqlite;
                $body
            }
            $crate::store::Pool::Postgres($pool) => {
                #[allow(unused_variables)]
                let $dialect = $crate::store::Dialect::Postgres;
                $body
            }
        }
    };
}

/// Turns each named `async fn NAME(store: Store)` into two tests, `sqlite::NAME` (a
/// private in-memory SQLite database) and `postgres::NAME` (a new database on the test
/// process's PostgreSQL server), so every store behaviour is checked on both back-ends.
#[cfg(test)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::store::test_stores::sqlite().await).await
                }
            )*
        }
        #[cfg(unix)]
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::store::test_stores::postgres().await).await
                }
            )*
        }
    };
}

#[cfg(test)]
pub(crate) mod test_stores;

mod jobs;
mod location;
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

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Connection;

pub use location::{PostgresUrl, StoreLocation};

pub use retention::{Purge, RetainedJob, RetentionInventory, RetentionLimits};
pub use settings::{StylizePreset, UserSettings, MAX_SUFFIX_CHARS};
pub use types::{
    Compute, Delivery, ImageRecord, Job, JobId, JobKind, JobParams, JobStatus, NewJob, Parent,
    StoreError,
};

/// How long a connection waits for another writer before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a PostgreSQL connection may take to come (connecting, or waiting for a free one)
/// before the call fails with an error rather than hanging.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL connections per process: the bot's tasks use a handful at a time.
const PG_MAX_CONNECTIONS: u32 = 8;

/// A handle on the database. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Which SQL a statement that differs between the back-ends is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The statement for this dialect, of two written side by side.
    fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }

    /// The back-end's name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}

impl Store {
    /// Opens the configured database: the SQLite file or the PostgreSQL database.
    pub async fn open_location(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::SqliteFile(path) => Store::open(path).await,
            StoreLocation::Postgres(url) => Store::connect_postgres(url).await,
        }
    }

    /// Connects to the PostgreSQL database at `url` and brings its schema up to date (under
    /// PostgreSQL's advisory lock, so processes starting together migrate once).
    pub async fn connect_postgres(url: &PostgresUrl) -> Result<Store, StoreError> {
        let options: PgConnectOptions = url.connect_options()?;
        // One connection first, outside the pool: its error says why (refused, unknown
        // database, bad password), where the pool's would only say it timed out.
        let first = tokio::time::timeout(PG_ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {PG_ACQUIRE_TIMEOUT:?}"),
                ))
            })??;
        first.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(PG_MAX_CONNECTIONS)
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Store {
            pool: Pool::Postgres(pool),
        })
    }

    /// Which back-end this store is on.
    pub fn dialect(&self) -> Dialect {
        on_pool!(self, |_pool, dialect| dialect)
    }

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
        Ok(Store {
            pool: Pool::Sqlite(pool),
        })
    }

    /// SQLite: copies the write-ahead log into the database file and empties it, so what was
    /// overwritten (interaction tokens once used) is gone from the WAL file too. Best effort:
    /// a busy reader only makes it partial. PostgreSQL: nothing (its server manages its WAL
    /// and reuses freed space through autovacuum).
    pub async fn compact_wal(&self) -> Result<(), StoreError> {
        if let Pool::Sqlite(pool) = &self.pool {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Whether the database answers a trivial query (for `/health`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool, _d| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Closes every connection, waiting for those in use. Later calls fail.
    pub async fn close(&self) {
        on_pool!(self, |pool, _d| pool.close().await)
    }

    /// Runs `sql` binding `args` in order, for tests that set up states the API never makes
    /// (corrupt rows, old timestamps). Returns the rows changed.
    #[cfg(test)]
    pub(crate) async fn execute_for_test(
        &self,
        sql: &'static str,
        args: &[i64],
    ) -> Result<u64, StoreError> {
        on_pool!(self, |pool, _d| {
            let mut query = sqlx::query(sql);
            for arg in args {
                query = query.bind(*arg);
            }
            Ok(query.execute(pool).await?.rows_affected())
        })
    }
}

/// Now, in unix milliseconds.
fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
