//! What a database operation can fail with, and how sqlx's errors map onto it.

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or no connection could be had in time.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A uniqueness rule rejected the write (a concurrent writer got there first).
    #[error("conflicting write: {0}")]
    Conflict(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The database is reached in a way these settings do not allow.
    #[error("{0}")]
    Setup(String),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(error),
            _ => StoreError::Database(error),
        }
    }
}

impl StoreError {
    /// Whether the database refused the statement for what it holds (a
    /// constraint, a value it cannot store, a trigger), as opposed to not
    /// being reachable: the same write on a healthy connection fails again,
    /// and other writes may well succeed.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::Conflict(_) => true,
            StoreError::Database(error) => matches!(error, sqlx::Error::Database(_)),
            StoreError::Unavailable(_)
            | StoreError::Corrupt(_)
            | StoreError::Migrate(_)
            | StoreError::Setup(_) => false,
        }
    }
}
