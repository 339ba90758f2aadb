//! Where the store lives: a SQLite file (the default) or a PostgreSQL database named by a URL.
//!
//! The URL may carry a password, so [`PostgresUrl`] shows itself with the password masked
//! (`postgres://imagine:***@db:5432/imagine`) in logs, errors and `Debug`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use super::StoreError;

/// The longest `database_url` accepted.
const MAX_URL_LEN: usize = 2048;

/// Which database the store opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file, created if missing.
    SqliteFile(PathBuf),
    /// A PostgreSQL database (which must exist; its tables are made by the migrations).
    Postgres(PostgresUrl),
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::SqliteFile(path) => write!(f, "the SQLite file {}", path.display()),
            StoreLocation::Postgres(url) => write!(f, "the PostgreSQL database {url}"),
        }
    }
}

/// A checked `postgres://` (or `postgresql://`) URL. Never shows its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    /// The same URL with any password replaced by `***`.
    shown: String,
}

impl PostgresUrl {
    /// Checks `text` as libpq and sqlx read it: a `postgres://` or `postgresql://` URL with a
    /// host, and query parameters sqlx understands (e.g. `sslmode=require`).
    pub fn parse(text: &str) -> Result<PostgresUrl, String> {
        let text = text.trim();
        if text.len() > MAX_URL_LEN {
            return Err(format!(
                "is {} characters long; the limit is {MAX_URL_LEN}",
                text.len()
            ));
        }
        let url = reqwest::Url::parse(text).map_err(|e| format!("is not a URL ({e})"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "has the scheme {:?}; only postgres:// (or postgresql://) is supported here",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("names no host: write postgres://USER:PASSWORD@HOST:5432/DATABASE".into());
        }
        let mut shown = url.clone();
        if url.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        let shown = shown.to_string();
        PgConnectOptions::from_str(text)
            .map_err(|e| format!("is not a PostgreSQL URL sqlx accepts ({})", redact(e, &url)))?;
        Ok(PostgresUrl {
            url: text.to_string(),
            shown,
        })
    }

    pub(super) fn connect_options(&self) -> Result<PgConnectOptions, StoreError> {
        Ok(PgConnectOptions::from_str(&self.url)?)
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.url
    }
}

/// An error message from parsing `url`, with its password (if any) cut out.
fn redact(e: impl fmt::Display, url: &reqwest::Url) -> String {
    let text = e.to_string();
    match url.password() {
        Some(p) if !p.is_empty() => text.replace(p, "***"),
        _ => text,
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_never_shows_it() {
        let url = PostgresUrl::parse("postgres://imagine:s3cret@db.internal:5433/imagine").unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://imagine:***@db.internal:5433/imagine"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!StoreLocation::Postgres(url.clone())
            .to_string()
            .contains("s3cret"));
        assert!(url.expose().contains("s3cret"));
        let plain = PostgresUrl::parse("postgresql://localhost/imagine?sslmode=require").unwrap();
        assert_eq!(
            plain.to_string(),
            "postgresql://localhost/imagine?sslmode=require"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("mysql://localhost/imagine", "postgres://"),
            ("postgres:///imagine", "names no host"),
            ("not a url", "is not a URL"),
            (
                "postgres://localhost/imagine?sslmode=sometimes",
                "sqlx accepts",
            ),
        ];
        for (text, says) in cases {
            let e = PostgresUrl::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let long = format!("postgres://localhost/{}", "a".repeat(MAX_URL_LEN));
        assert!(PostgresUrl::parse(&long).unwrap_err().contains("limit"));
    }
}
