//! Stores for the store's own tests, on both back-ends: SQLite in memory or in a file, and
//! PostgreSQL on the real server [`imagine_tests::servers::postgres`] starts once per test
//! process (each test gets a database of its own).

use std::path::PathBuf;

use super::{PostgresUrl, Store};

/// A private SQLite database in memory.
pub(crate) async fn sqlite() -> Store {
    Store::open_in_memory().await.expect("in-memory store")
}

/// A new, empty PostgreSQL database, migrated.
#[cfg(unix)]
pub(crate) async fn postgres() -> Store {
    Reopenable::postgres().await.open().await
}

/// A database that can be opened again, as a restarted bot (or a second process) would.
pub(crate) enum Reopenable {
    SqliteFile {
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
    Postgres(PostgresUrl),
}

impl Reopenable {
    pub(crate) fn sqlite_file() -> Reopenable {
        let dir = tempfile::tempdir().unwrap();
        Reopenable::SqliteFile {
            path: dir.path().join("imagine.sqlite"),
            _dir: dir,
        }
    }

    #[cfg(unix)]
    pub(crate) async fn postgres() -> Reopenable {
        let url = tokio::task::spawn_blocking(|| {
            imagine_tests::servers::postgres::Postgres::shared().create_database()
        })
        .await
        .expect("create a test database");
        Reopenable::Postgres(PostgresUrl::parse(&url).expect("the test server's URL"))
    }

    pub(crate) async fn open(&self) -> Store {
        match self {
            Reopenable::SqliteFile { path, .. } => Store::open(path).await,
            Reopenable::Postgres(url) => Store::connect_postgres(url).await,
        }
        .expect("open the test store")
    }
}
