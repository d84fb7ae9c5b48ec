//! How the building blocks reach the local app. Implemented by the
//! runtime's transports (the app's `AppCallback` gRPC service, the
//! `ServeInvocations` streams); the blocks decide what to call and what the
//! answers mean.

use std::time::Duration;

use futures::future::BoxFuture;
use weft_proto::runtime as pb;
use weft_proto::{common, mesh};

use crate::error::BlockError;

/// Response header marking an error status as the called app's own (not a
/// runtime's), so that callers do not mistake it for a failing runtime.
pub const ERROR_ORIGIN_HEADER: &str = "weft-error-origin";

/// An invocation's answer with the response headers to forward.
#[derive(Debug)]
pub struct Invoked {
    pub response: common::InvokeResponse,
    pub headers: Vec<mesh::Header>,
}

/// Delivers service invocations to the local app (`OnInvoke`).
pub trait AppInvoker: Send + Sync + 'static {
    /// Calls the app's method with the caller's `headers`, waiting at most
    /// `timeout`. An error the app answered is a
    /// [`BlockError::Passthrough`] whose metadata holds
    /// [`ERROR_ORIGIN_HEADER`].
    fn on_invoke(
        &self,
        req: common::InvokeRequest,
        headers: Vec<mesh::Header>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Invoked, BlockError>>;
}

/// Why a callback to the app failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppChannelError {
    /// The app is not reachable (yet).
    Unavailable(String),
    /// The app does not implement the method.
    Unimplemented,
    /// The app answered with an error.
    Failed(String),
}

impl std::fmt::Display for AppChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppChannelError::Unavailable(e) => write!(f, "app unavailable: {e}"),
            AppChannelError::Unimplemented => write!(f, "not implemented by the app"),
            AppChannelError::Failed(e) => write!(f, "app error: {e}"),
        }
    }
}

/// The app side of the pub/sub callback model: the app lists its
/// subscriptions and receives each event with `OnTopicEvent`.
pub trait AppChannel: Send + Sync + 'static {
    fn list_topic_subscriptions(
        &self,
    ) -> BoxFuture<'_, Result<Vec<pb::TopicSubscription>, AppChannelError>>;
    fn on_topic_event(
        &self,
        event: pb::TopicEventRequest,
    ) -> BoxFuture<'_, Result<pb::TopicEventResponse, AppChannelError>>;
}

/// Both halves of the app's `AppCallback` service.
pub trait AppCallback: AppInvoker + AppChannel {}

impl<T: AppInvoker + AppChannel> AppCallback for T {}
