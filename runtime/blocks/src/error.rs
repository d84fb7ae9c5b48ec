//! The building blocks' error type. Every block method returns
//! [`BlockError`]; the runtime's transports turn it into their own status
//! (a gRPC `Status`, a shared-memory status record, an HTTP error body) in
//! one place, keeping its code, message, details and metadata.

use weft_components::configuration::ConfigurationError;
use weft_components::pubsub::PubSubError;
use weft_components::state::StateError;
use weft_proto::mesh::Header;

/// The status codes of gRPC, which every transport of the runtime uses
/// (the shared-memory protocol carries the same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code with number `n`; numbers gRPC does not define are
    /// [`Code::Unknown`], as gRPC itself treats them.
    pub fn from_i32(n: i32) -> Self {
        use Code::*;
        const ALL: [Code; 17] = [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ];
        usize::try_from(n)
            .ok()
            .and_then(|i| ALL.get(i).copied())
            .unwrap_or(Unknown)
    }

    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// An error that another app or runtime answered, passed on as it came.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Passthrough {
    pub code: Option<Code>,
    pub message: String,
    /// The encoded `google.rpc.Status` of the error (gRPC's
    /// `grpc-status-details-bin`), empty when it had none.
    pub details: Vec<u8>,
    /// The metadata that came with the error (response headers and
    /// trailers of the answering app).
    pub metadata: Vec<Header>,
}

/// Why a building-block operation failed. The message names what was
/// wrong: the field, store, component or app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// A request field is missing or malformed, or names a store that does
    /// not exist (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// What the request names does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// An etag did not match, or a concurrent change won (ABORTED).
    #[error("{0}")]
    Aborted(String),
    /// The operation does not fit the runtime's state or configuration
    /// (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller did not prove who it is (UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// A limit was reached: size, count, capacity (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's deadline or the runtime's timeout passed
    /// (DEADLINE_EXCEEDED).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The call was cancelled (CANCELLED).
    #[error("{0}")]
    Cancelled(String),
    /// A backend, app or runtime cannot be reached right now; worth a retry
    /// (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// This runtime does not serve the operation (UNIMPLEMENTED).
    #[error("{0}")]
    Unimplemented(String),
    /// A bug or an unexpected backend answer (INTERNAL).
    #[error("{0}")]
    Internal(String),
    /// The answer of another app or runtime, with its own code, details and
    /// metadata.
    #[error("{}", .0.message)]
    Passthrough(Box<Passthrough>),
}

impl BlockError {
    /// An error of `code` (anything without a variant of its own becomes a
    /// [`BlockError::Passthrough`] keeping the code).
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let m = message.into();
        match code {
            Code::InvalidArgument => Self::InvalidArgument(m),
            Code::NotFound => Self::NotFound(m),
            Code::Aborted => Self::Aborted(m),
            Code::FailedPrecondition => Self::FailedPrecondition(m),
            Code::PermissionDenied => Self::PermissionDenied(m),
            Code::Unauthenticated => Self::Unauthenticated(m),
            Code::ResourceExhausted => Self::ResourceExhausted(m),
            Code::DeadlineExceeded => Self::DeadlineExceeded(m),
            Code::Cancelled => Self::Cancelled(m),
            Code::Unavailable => Self::Unavailable(m),
            Code::Unimplemented => Self::Unimplemented(m),
            Code::Internal => Self::Internal(m),
            other => Self::Passthrough(Box::new(Passthrough {
                code: Some(other),
                message: m,
                ..Default::default()
            })),
        }
    }

    /// An error another app or runtime answered, kept whole.
    pub fn passthrough(
        code: Code,
        message: impl Into<String>,
        details: Vec<u8>,
        metadata: Vec<Header>,
    ) -> Self {
        Self::Passthrough(Box::new(Passthrough {
            code: Some(code),
            message: message.into(),
            details,
            metadata,
        }))
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// Looks up the component `name` (request field `field`) among the
    /// configured `components` of one kind (`"state store"`, …): an empty
    /// name is refused naming the field, an unknown one naming it and
    /// listing the configured ones.
    pub fn find_component<'a, T>(
        components: &'a std::collections::BTreeMap<String, T>,
        name: &str,
        field: &str,
        kind: &str,
    ) -> Result<&'a T, BlockError> {
        if name.is_empty() {
            return Err(Self::missing_field(field));
        }
        components.get(name).ok_or_else(|| {
            let known: Vec<&str> = components.keys().map(String::as_str).collect();
            Self::invalid_argument(if known.is_empty() {
                format!("{kind} '{name}' is not found: no {kind}s are configured")
            } else {
                format!(
                    "{kind} '{name}' is not found; configured {kind}s: {}",
                    known.join(", ")
                )
            })
        })
    }

    /// A required request field was empty.
    pub fn missing_field(field: &str) -> Self {
        Self::invalid_argument(format!("{field} is required and was empty"))
    }

    /// An operation of a building block this runtime does not have.
    pub fn unimplemented_block(block: &str) -> Self {
        Self::Unimplemented(format!(
            "the {block} building block is not available in this version of weft"
        ))
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Aborted(_) => Code::Aborted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Cancelled(_) => Code::Cancelled,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Internal(_) => Code::Internal,
            Self::Passthrough(p) => p.code.unwrap_or(Code::Unknown),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::InvalidArgument(m)
            | Self::NotFound(m)
            | Self::Aborted(m)
            | Self::FailedPrecondition(m)
            | Self::PermissionDenied(m)
            | Self::Unauthenticated(m)
            | Self::ResourceExhausted(m)
            | Self::DeadlineExceeded(m)
            | Self::Cancelled(m)
            | Self::Unavailable(m)
            | Self::Unimplemented(m)
            | Self::Internal(m) => m,
            Self::Passthrough(p) => &p.message,
        }
    }

    /// The encoded `google.rpc.Status` details of a passed-through error.
    pub fn details(&self) -> &[u8] {
        match self {
            Self::Passthrough(p) => &p.details,
            _ => &[],
        }
    }

    /// The metadata of a passed-through error.
    pub fn metadata(&self) -> &[Header] {
        match self {
            Self::Passthrough(p) => &p.metadata,
            _ => &[],
        }
    }

    /// An error from a state store, with the store's name in the message.
    pub fn from_state(store: &str, err: StateError) -> Self {
        let code = match &err {
            StateError::EtagMismatch { .. } => Code::Aborted,
            StateError::EtagInvalid { .. } | StateError::InvalidRequest(_) => Code::InvalidArgument,
            StateError::Unavailable(_) => Code::Unavailable,
            StateError::Internal(_) => Code::Internal,
        };
        Self::new(code, format!("state store '{store}': {err}"))
    }

    /// An error from a pub/sub component, with the component's name in the message.
    pub fn from_pubsub(pubsub: &str, err: PubSubError) -> Self {
        let code = match &err {
            PubSubError::InvalidRequest(_) => Code::InvalidArgument,
            PubSubError::ResourceExhausted(_) => Code::ResourceExhausted,
            PubSubError::Unavailable(_) => Code::Unavailable,
            PubSubError::Internal(_) => Code::Internal,
        };
        Self::new(code, format!("pub/sub '{pubsub}': {err}"))
    }

    /// An error from a configuration store, with the store's name in the message.
    pub fn from_configuration(store: &str, err: ConfigurationError) -> Self {
        let code = match &err {
            ConfigurationError::InvalidRequest(_) => Code::InvalidArgument,
            ConfigurationError::Unavailable(_) => Code::Unavailable,
            ConfigurationError::Internal(_) => Code::Internal,
        };
        Self::new(code, format!("configuration store '{store}': {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for n in 0..=16 {
            assert_eq!(Code::from_i32(n).as_i32(), n);
        }
        assert_eq!(Code::from_i32(17), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
    }

    #[test]
    fn new_keeps_code_and_message() {
        for n in 1..=16 {
            let code = Code::from_i32(n);
            let e = BlockError::new(code, "why");
            assert_eq!((e.code(), e.message()), (code, "why"));
            assert_eq!(e.to_string(), "why");
        }
    }
}
