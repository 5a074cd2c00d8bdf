//! Errors of the storage engine.

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error (bad SQL, constraint, I/O, …).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The schema SQL could not be parsed or run.
    #[error("invalid schema SQL: {0}")]
    SchemaSql(String),

    /// A replicated table has no primary key.
    #[error(
        "table {table:?} has no PRIMARY KEY: replicated tables need one to identify rows across nodes"
    )]
    NoPrimaryKey {
        /// The table.
        table: String,
    },

    /// A table uses AUTOINCREMENT, which would collide across nodes.
    #[error(
        "table {table:?} uses AUTOINCREMENT: counters collide between nodes writing independently; \
         use a TEXT key holding a UUID (or another globally unique value) instead"
    )]
    Autoincrement {
        /// The table.
        table: String,
    },

    /// A construct the merge cannot honour (unique constraints, NOT NULL without default, …).
    #[error("table {table:?}: {reason}")]
    Unsupported {
        /// The table.
        table: String,
        /// What is unsupported and why.
        reason: String,
    },

    /// A schema change that would destroy or reinterpret existing data.
    #[error("destructive schema change refused: {0}")]
    Destructive(String),

    /// A table or index name reserved by litemesh or SQLite.
    #[error("name {0:?} is reserved (names starting with __lm_ or sqlite_)")]
    ReservedName(String),

    /// A table exists in the file but is not managed by litemesh.
    #[error(
        "table {0:?} already exists in the database file but is not replicated; \
         litemesh only replicates tables it created"
    )]
    UnmanagedTable(String),

    /// An unknown table name was given.
    #[error("unknown replicated table {0:?}")]
    UnknownTable(String),

    /// A wire message could not be decoded or is invalid.
    #[error("malformed change batch: {0}")]
    Decode(String),

    /// A wire message is larger than allowed.
    #[error("change batch of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The file's litemesh metadata is damaged.
    #[error("corrupt litemesh metadata: {0}")]
    Corrupt(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
