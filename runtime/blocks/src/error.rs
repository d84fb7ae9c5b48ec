//! The one place where building-block errors become API status codes.

use std::fmt;

use tonic::Code;
use weft_components::configuration::ConfigurationError;
use weft_components::pubsub::PubSubError;
use weft_components::state::StateError;

/// An error answered to an API caller: a gRPC status code and a message
/// that names what was wrong (field, store, component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// A required request field was empty.
    pub fn missing_field(field: &str) -> Self {
        Self::invalid_argument(format!("{field} is required and was empty"))
    }

    pub fn unimplemented_block(block: &str) -> Self {
        Self::new(
            Code::Unimplemented,
            format!("the {block} building block is not available in this version of weft"),
        )
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

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.code, e.message)
    }
}
