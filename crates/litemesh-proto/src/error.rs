//! Errors of decoding and encoding what nodes exchange.

/// Bytes that are not a valid message, or a message too large to send or
/// accept. Malformed input is always this error, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a valid encoding (wrong format version, bad
    /// MessagePack, or a value that breaks an invariant of its type).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The encoding is larger than allowed.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl WireError {
    pub(crate) fn malformed(e: impl std::fmt::Display) -> Self {
        WireError::Malformed(e.to_string())
    }
}

/// Fails with [`WireError::TooLarge`] when `size > limit`.
pub(crate) fn check_size(size: usize, limit: usize) -> Result<(), WireError> {
    if size > limit {
        Err(WireError::TooLarge { size, limit })
    } else {
        Ok(())
    }
}
