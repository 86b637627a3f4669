//! The database: connection pool, migrations and the queries of the server
//! core, for SQLite (embedded default) and PostgreSQL alike.
//!
//! Both dialects share one set of queries written with `$N` placeholders,
//! which SQLite also accepts. Every value is a bound parameter. Timestamps
//! are Unix seconds and ids UUID strings, so the same rows decode on both.
//! Secret columns hold ciphertext produced by [`crate::crypto::Vault`].

pub mod bots;
pub mod conversations;
pub mod kv;
pub mod mfa;
pub mod plugins;
pub mod refresh_tokens;
pub mod secrets;
pub mod tenant_keys;
pub mod tenants;
pub mod user_keys;
pub mod users;

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions as _, Executor};

pub use tenants::{Tenant, TenantId};
pub use users::{User, UserId};

/// Connections in the pool. SQLite serializes writers anyway; PostgreSQL
/// gets enough for concurrent requests without exhausting its own limit.
const MAX_CONNECTIONS: u32 = 16;

/// How long a query waits for a free connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures of the database layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database could not be opened or reached.
    #[error("failed to connect to the database")]
    Connect(#[source] sqlx::Error),
    /// The SQLite file could not be created.
    #[error("failed to create database file `{path}`")]
    CreateFile {
        /// The SQLite file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Applying migrations failed.
    #[error("failed to apply migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A unique constraint rejected the write.
    #[error("a row with the same unique value already exists")]
    Conflict,
    /// A stored row contains a value this build cannot decode.
    #[error("invalid value in column `{table}.{column}`")]
    CorruptRow {
        /// Table of the row.
        table: &'static str,
        /// Column with the bad value.
        column: &'static str,
    },
    /// Any other database error.
    #[error("database query failed")]
    Query(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict,
            _ => Self::Query(error),
        }
    }
}

/// The two supported database dialects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the data directory.
    Sqlite,
    /// A PostgreSQL server named by `DATABASE_URL`.
    Postgres,
}

/// A pool of database connections.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// Connects to PostgreSQL when `database_url` is set, otherwise opens
    /// (or creates, mode 0600) the SQLite file at `sqlite_path`.
    ///
    /// # Errors
    ///
    /// Returns [`StorageError::Connect`] or [`StorageError::CreateFile`].
    pub async fn connect(
        database_url: Option<&str>,
        sqlite_path: &Path,
    ) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        match database_url {
            Some(url) => Self::connect_postgres(url).await,
            None => Self::connect_sqlite(sqlite_path).await,
        }
    }

    /// NOTE: this build links sqlx without a TLS backend, so connections to
    /// PostgreSQL are plain TCP and a URL with `sslmode=require` fails.
    async fn connect_postgres(url: &str) -> Result<Self, StorageError> {
        let options = AnyConnectOptions::from_str(url).map_err(StorageError::Connect)?;
        let pool = pool_options()
            .connect_with(options)
            .await
            .map_err(StorageError::Connect)?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
        })
    }

    async fn connect_sqlite(path: &Path) -> Result<Self, StorageError> {
        // Create the file ourselves so it starts with mode 0600; SQLite gives
        // its WAL and shared-memory files the same mode.
        let create_error = |source| StorageError::CreateFile {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(create_error)?;
        // A file left by an older install may be readable by others.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(create_error)?;

        // Going through the SQLite options percent-encodes the path, so
        // directories with `?`, `#` or spaces in their names work.
        let url = SqliteConnectOptions::new().filename(path).to_url_lossy();
        let options = AnyConnectOptions::from_url(&url).map_err(StorageError::Connect)?;
        let pool = pool_options()
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL with FULL sync: a commit is on disk before the
                    // response that reports it, so a crash loses nothing
                    // that was acknowledged.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(StorageError::Connect)?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
        })
    }

    /// Applies the migrations of this database's dialect.
    ///
    /// # Errors
    ///
    /// Returns [`StorageError::Migrate`] when a migration fails or the
    /// applied ones differ from those built in.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("../migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("../migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// Returns the dialect.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Returns the pool for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Returns the current time in Unix seconds.
pub fn now_unix() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Converts a duration to whole seconds for arithmetic with timestamps.
pub fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Reads a UUID column.
fn uuid_column(
    row: &sqlx::any::AnyRow,
    table: &'static str,
    column: &'static str,
) -> Result<uuid::Uuid, StorageError> {
    use sqlx::Row;
    let text: String = row.try_get(column)?;
    uuid::Uuid::parse_str(&text).map_err(|_| StorageError::CorruptRow { table, column })
}
