//! The Dapr v1 gRPC API. Each method decodes nothing itself: it hands the
//! request to its building block and converts the result.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::appchannel as ac;
use weft_proto::appchannel::app_channel_server::{AppChannel, AppChannelServer};
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_server::{Dapr, DaprServer};

use crate::api::headers;
use crate::blocks::Blocks;
use crate::error::ApiError;

/// Header carrying the API token, as in Dapr.
pub const API_TOKEN_HEADER: &str = "dapr-api-token";

type ConfigStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeConfigurationResponse, Status>> + Send>>;
type TopicStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeTopicEventsResponseAlpha1, Status>> + Send>>;

/// The gRPC face of the building blocks.
#[derive(Clone)]
pub struct DaprApi {
    blocks: Arc<Blocks>,
}

impl DaprApi {
    pub fn new(blocks: Arc<Blocks>) -> Self {
        Self { blocks }
    }

    /// The app-facing gRPC services — the Dapr API and Weft's own
    /// `weft.runtime.v1.AppChannel` — each with the API-token check (when a
    /// token is set) and the request size limit.
    pub fn routes(self, api_token: Option<String>, max_body_size: usize) -> tonic::service::Routes {
        let dapr = DaprServer::new(self.clone())
            .max_decoding_message_size(max_body_size)
            .max_encoding_message_size(usize::MAX);
        let weft = AppChannelServer::new(self)
            .max_decoding_message_size(max_body_size)
            .max_encoding_message_size(usize::MAX);
        tonic::service::Routes::new(TokenCheck::wrap(dapr, api_token.clone()))
            .add_service(TokenCheck::wrap(weft, api_token))
    }

    async fn subscribe_config(
        &self,
        req: pb::SubscribeConfigurationRequest,
    ) -> Result<Response<ConfigStream>, Status> {
        let rx = self
            .blocks
            .configuration
            .subscribe_configuration(req)
            .await?;
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Rejects calls without the configured API token.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
}

impl TokenCheck {
    /// `server` behind the token check (a no-op without a token).
    pub fn wrap<S>(
        server: S,
        api_token: Option<String>,
    ) -> tonic::service::interceptor::InterceptedService<S, TokenCheck> {
        tonic::service::interceptor::InterceptedService::new(
            server,
            TokenCheck {
                token: api_token.map(Arc::from),
            },
        )
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(req);
        };
        match req.metadata().get(API_TOKEN_HEADER).map(|v| v.as_bytes()) {
            Some(given) if constant_time_eq(given, expected.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated(format!(
                "the {API_TOKEN_HEADER} metadata does not match the runtime's API token"
            ))),
            None => Err(Status::unauthenticated(format!(
                "this runtime requires an API token: send it in the {API_TOKEN_HEADER} metadata"
            ))),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unimplemented<T>(block: &str) -> Result<Response<T>, Status> {
    Err(ApiError::unimplemented_block(block).into())
}

#[tonic::async_trait]
impl Dapr for DaprApi {
    // === invocation ===

    async fn invoke_service(
        &self,
        r: Request<pb::InvokeServiceRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        let deadline = headers::deadline(r.metadata());
        let (md, _, req) = r.into_parts();
        let forward = headers::from_metadata(&md);
        let invoked = self
            .blocks
            .invoke
            .invoke_service(req, forward, deadline)
            .await?;
        let mut resp = Response::new(invoked.response);
        headers::extend_metadata(resp.metadata_mut(), &invoked.headers);
        Ok(resp)
    }

    // === state ===

    async fn get_state(
        &self,
        r: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateResponse>, Status> {
        Ok(Response::new(
            self.blocks.state.get_state(r.into_inner()).await?,
        ))
    }

    async fn get_bulk_state(
        &self,
        r: Request<pb::GetBulkStateRequest>,
    ) -> Result<Response<pb::GetBulkStateResponse>, Status> {
        Ok(Response::new(
            self.blocks.state.get_bulk_state(r.into_inner()).await?,
        ))
    }

    async fn save_state(&self, r: Request<pb::SaveStateRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(
            self.blocks.state.save_state(r.into_inner()).await?,
        ))
    }

    async fn query_state_alpha1(
        &self,
        _: Request<pb::QueryStateRequest>,
    ) -> Result<Response<pb::QueryStateResponse>, Status> {
        unimplemented("state query")
    }

    async fn delete_state(
        &self,
        r: Request<pb::DeleteStateRequest>,
    ) -> Result<Response<()>, Status> {
        Ok(Response::new(
            self.blocks.state.delete_state(r.into_inner()).await?,
        ))
    }

    async fn delete_bulk_state(
        &self,
        r: Request<pb::DeleteBulkStateRequest>,
    ) -> Result<Response<()>, Status> {
        Ok(Response::new(
            self.blocks.state.delete_bulk_state(r.into_inner()).await?,
        ))
    }

    async fn execute_state_transaction(
        &self,
        r: Request<pb::ExecuteStateTransactionRequest>,
    ) -> Result<Response<()>, Status> {
        Ok(Response::new(
            self.blocks
                .state
                .execute_state_transaction(r.into_inner())
                .await?,
        ))
    }

    // === pub/sub ===

    async fn publish_event(
        &self,
        r: Request<pb::PublishEventRequest>,
    ) -> Result<Response<()>, Status> {
        Ok(Response::new(
            self.blocks.pubsub.publish_event(r.into_inner()).await?,
        ))
    }

    async fn bulk_publish_event_alpha1(
        &self,
        r: Request<pb::BulkPublishRequest>,
    ) -> Result<Response<pb::BulkPublishResponse>, Status> {
        self.bulk_publish_event(r).await
    }

    async fn bulk_publish_event(
        &self,
        r: Request<pb::BulkPublishRequest>,
    ) -> Result<Response<pb::BulkPublishResponse>, Status> {
        Ok(Response::new(
            self.blocks
                .pubsub
                .bulk_publish_event(r.into_inner())
                .await?,
        ))
    }

    type SubscribeTopicEventsAlpha1Stream = TopicStream;

    async fn subscribe_topic_events_alpha1(
        &self,
        r: Request<Streaming<pb::SubscribeTopicEventsRequestAlpha1>>,
    ) -> Result<Response<Self::SubscribeTopicEventsAlpha1Stream>, Status> {
        let requests = r
            .into_inner()
            .map(|m| m.map_err(|s| ApiError::new(s.code(), s.message())));
        let rx = self.blocks.pubsub.subscribe_topic_events(requests);
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    // === bindings and secrets ===

    async fn invoke_binding(
        &self,
        _: Request<pb::InvokeBindingRequest>,
    ) -> Result<Response<pb::InvokeBindingResponse>, Status> {
        unimplemented("bindings")
    }

    async fn get_secret(
        &self,
        _: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        unimplemented("secrets")
    }

    async fn get_bulk_secret(
        &self,
        _: Request<pb::GetBulkSecretRequest>,
    ) -> Result<Response<pb::GetBulkSecretResponse>, Status> {
        unimplemented("secrets")
    }

    // === configuration ===

    async fn get_configuration_alpha1(
        &self,
        r: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::GetConfigurationResponse>, Status> {
        self.get_configuration(r).await
    }

    async fn get_configuration(
        &self,
        r: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::GetConfigurationResponse>, Status> {
        Ok(Response::new(
            self.blocks
                .configuration
                .get_configuration(r.into_inner())
                .await?,
        ))
    }

    type SubscribeConfigurationAlpha1Stream = ConfigStream;

    async fn subscribe_configuration_alpha1(
        &self,
        r: Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<Response<Self::SubscribeConfigurationAlpha1Stream>, Status> {
        self.subscribe_config(r.into_inner()).await
    }

    type SubscribeConfigurationStream = ConfigStream;

    async fn subscribe_configuration(
        &self,
        r: Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<Response<Self::SubscribeConfigurationStream>, Status> {
        self.subscribe_config(r.into_inner()).await
    }

    async fn unsubscribe_configuration_alpha1(
        &self,
        r: Request<pb::UnsubscribeConfigurationRequest>,
    ) -> Result<Response<pb::UnsubscribeConfigurationResponse>, Status> {
        self.unsubscribe_configuration(r).await
    }

    async fn unsubscribe_configuration(
        &self,
        r: Request<pb::UnsubscribeConfigurationRequest>,
    ) -> Result<Response<pb::UnsubscribeConfigurationResponse>, Status> {
        Ok(Response::new(
            self.blocks
                .configuration
                .unsubscribe_configuration(r.into_inner())
                .await?,
        ))
    }

    // === lock ===

    async fn try_lock_alpha1(
        &self,
        _: Request<pb::TryLockRequest>,
    ) -> Result<Response<pb::TryLockResponse>, Status> {
        unimplemented("distributed lock")
    }

    async fn unlock_alpha1(
        &self,
        _: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        unimplemented("distributed lock")
    }

    // === metadata and lifecycle ===

    async fn get_metadata(
        &self,
        _: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        Ok(Response::new(self.blocks.get_metadata()))
    }

    async fn set_metadata(
        &self,
        r: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<()>, Status> {
        Ok(Response::new(
            self.blocks.metadata.set_metadata(r.into_inner())?,
        ))
    }

    async fn shutdown(&self, _: Request<pb::ShutdownRequest>) -> Result<Response<()>, Status> {
        self.blocks.shutdown.trigger("Shutdown RPC");
        Ok(Response::new(()))
    }
}

type InvocationStream =
    Pin<Box<dyn Stream<Item = Result<ac::ServeInvocationsResponse, Status>> + Send>>;

#[tonic::async_trait]
/// Weft's own app-facing service (`weft.runtime.v1`), beside the Dapr API.
impl AppChannel for DaprApi {
    type ServeInvocationsStream = InvocationStream;

    async fn serve_invocations(
        &self,
        r: Request<Streaming<ac::ServeInvocationsRequest>>,
    ) -> Result<Response<Self::ServeInvocationsStream>, Status> {
        let requests = r
            .into_inner()
            .map(|m| m.map_err(|s| ApiError::new(s.code(), s.message())));
        let rx = self.blocks.invoke.serve_invocations(requests)?;
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
