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

    /// A range of a snapshot listing that does not start where the last
    /// one checked here ended (ranges checked out of order, or two
    /// listings at once): nothing was done; the listing resumes from the
    /// stored cursor.
    #[error("a snapshot listing range out of order (the listing resumes from its cursor)")]
    SnapshotOutOfOrder,

    /// This node cannot serve a snapshot answer now (the requester tries
    /// another peer, or this one later).
    #[error("no snapshot from this node: {0}")]
    SnapshotUnavailable(String),

    /// Table placement forbids it: a write to a table this node may not
    /// hold, or a file that holds rows its node may not.
    #[error("placement: {0}")]
    Placement(String),

    /// A backup could not be taken or restored.
    #[error("backup: {0}")]
    Backup(String),

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

    /// A row write larger than a change may be (it could not replicate).
    #[error(
        "row write of {size} bytes to table {table:?} exceeds the limit of {limit} bytes per \
         row write (the key and the cells one write sets must fit in one replication message); \
         split large values over several rows"
    )]
    RowTooLarge {
        /// The table.
        table: String,
        /// The key and written cells, in bytes.
        size: usize,
        /// [`crate::MAX_ROW_WRITE_BYTES`].
        limit: usize,
    },

    /// A NULL primary-key value (keys identify rows across nodes).
    #[error(
        "a primary key value of replicated table {table:?} is NULL; keys identify rows across nodes and cannot be NULL"
    )]
    NullKey {
        /// The table.
        table: String,
    },

    /// A TEXT value that is not valid UTF-8 (it could not replicate as stored).
    #[error(
        "a TEXT value written to table {table:?} is not valid UTF-8: it could not be replicated \
         as stored; store such bytes as a BLOB (e.g. CAST(x AS BLOB))"
    )]
    InvalidText {
        /// The table.
        table: String,
    },

    /// A counter column written with something other than an integer.
    #[error(
        "column {column:?} of table {table:?} is a counter: it holds integers, and {value} \
         cannot be written to it (count in whole units — cents, milliseconds — or declare a \
         plain column)"
    )]
    NotACount {
        /// The table.
        table: String,
        /// The counter column.
        column: String,
        /// What was written, described.
        value: String,
    },

    /// A write that would move a max (min) register down (up).
    #[error(
        "column {column:?} of table {table:?} is a register that only moves one way: {to} would \
         move it back from {from}; write max({column}, …) (or min, for a min register) to keep \
         the larger (smaller) value"
    )]
    RegisterBackwards {
        /// The table.
        table: String,
        /// The register column.
        column: String,
        /// Its value.
        from: String,
        /// The value written.
        to: String,
    },

    /// A remote change merges a column by another rule than this node's
    /// schema declares (the schemas of the two nodes differ).
    #[error(
        "a change from a peer writes column {column:?} of table {table:?} as a {remote} column, \
         but this node's schema declares it a {local} column: the nodes' schemas differ; apply \
         the same schema on every node"
    )]
    KindMismatch {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The kind this node's schema declares.
        local: String,
        /// The kind the change carries.
        remote: String,
    },

    /// A client statement that cannot run as sent (e.g. the wrong number of
    /// parameters).
    #[error("{0}")]
    InvalidStatement(String),

    /// A client statement that the sandbox does not allow.
    #[error("{0}")]
    Refused(String),

    /// A statement was stopped before it finished.
    #[error("{0}")]
    Interrupted(Interruption),
}

impl From<litemesh_proto::WireError> for StorageError {
    fn from(e: litemesh_proto::WireError) -> Self {
        match e {
            litemesh_proto::WireError::Malformed(m) => StorageError::Decode(m),
            litemesh_proto::WireError::TooLarge { size, limit } => {
                StorageError::TooLarge { size, limit }
            }
        }
    }
}

/// Why a statement was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// It ran past its time limit.
    TimedOut(std::time::Duration),
    /// Its client went away (or cancelled it).
    Cancelled,
    /// The node is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interruption::TimedOut(d) => write!(
                f,
                "the statement ran past its time limit of {:.3} s and was stopped",
                d.as_secs_f64()
            ),
            Interruption::Cancelled => f.write_str("the statement was cancelled"),
            Interruption::ShuttingDown => f.write_str("the node is shutting down"),
        }
    }
}

impl StorageError {
    /// Whether this error comes from the node's environment rather than from
    /// what was asked: the disk is full, an I/O error, the file is locked
    /// elsewhere, read-only, unreadable or corrupt. The node cannot write
    /// until it is fixed; other nodes can.
    pub fn is_environmental(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StorageError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    C::DiskFull
                        | C::SystemIoFailure
                        | C::DatabaseBusy
                        | C::DatabaseLocked
                        | C::ReadOnly
                        | C::CannotOpen
                        | C::DatabaseCorrupt
                        | C::NotADatabase
                        | C::PermissionDenied
                        | C::OutOfMemory
                        | C::FileLockingProtocolFailed
                        | C::NoLargeFileSupport
                )
            ),
            StorageError::Corrupt(_) => true,
            _ => false,
        }
    }

    /// Whether this error comes from the data being written (a constraint, a
    /// type, a value an index expression cannot take, a malformed change),
    /// as opposed to the node's environment (disk full, I/O error, a lock held
    /// elsewhere, a read-only file, corruption). A merge failing on its data
    /// fails the same way on every retry and is quarantined; one failing on
    /// its environment is retried as a whole.
    pub fn is_data_error(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                C::ConstraintViolation
                    | C::TypeMismatch
                    | C::TooBig
                    | C::Unknown
                    | C::ParameterOutOfRange
                    | C::AuthorizationForStatementDenied
            ),
            StorageError::Sqlite(
                rusqlite::Error::UserFunctionError(_)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::ToSqlConversionFailure(_)
                | rusqlite::Error::InvalidParameterCount(..),
            ) => true,
            StorageError::Decode(_)
            | StorageError::RowTooLarge { .. }
            | StorageError::NullKey { .. }
            | StorageError::InvalidText { .. }
            | StorageError::NotACount { .. }
            | StorageError::RegisterBackwards { .. }
            | StorageError::KindMismatch { .. }
            | StorageError::UnknownTable(_) => true,
            _ => false,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
