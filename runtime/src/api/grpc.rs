//! The Dapr v1 gRPC API. Each method decodes nothing itself: it fills the
//! call's context from the request metadata, hands the request to its
//! building block and converts the result.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use weft_blocks::{Authentication, BlockError, Blocks, CallContext};
use weft_proto::appchannel as ac;
use weft_proto::appchannel::app_channel_server::{AppChannel, AppChannelServer};
use weft_proto::common as dapr_common;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_server::{Dapr, DaprServer};

use crate::api::common::{self, TokenCheck, API_TOKEN_HEADER};
use crate::api::headers;
use crate::api::status::{from_status, to_status};

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
    pub fn routes(self, tokens: TokenCheck, max_body_size: usize) -> tonic::service::Routes {
        let dapr = DaprServer::new(self.clone())
            .max_decoding_message_size(max_body_size)
            .max_encoding_message_size(usize::MAX);
        let weft = AppChannelServer::new(self)
            .max_decoding_message_size(max_body_size)
            .max_encoding_message_size(usize::MAX);
        tonic::service::Routes::new(TokenInterceptor::wrap(dapr, tokens.clone()))
            .add_service(TokenInterceptor::wrap(weft, tokens))
    }

    async fn subscribe_config(
        &self,
        ctx: CallContext,
        req: pb::SubscribeConfigurationRequest,
    ) -> Result<Response<ConfigStream>, Status> {
        let rx = self
            .blocks
            .configuration
            .subscribe_configuration(&ctx, req)
            .await
            .map_err(to_status)?;
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The call context of a gRPC request: its deadline (`grpc-timeout`), its
/// forwardable metadata, and how it passed the token check.
fn context<T>(r: &Request<T>) -> CallContext {
    CallContext::app()
        .with_timeout(headers::deadline(r.metadata()))
        .with_metadata(headers::from_metadata(r.metadata()))
        .with_authentication(
            r.extensions()
                .get::<Authentication>()
                .copied()
                .unwrap_or_default(),
        )
}

/// Splits a request into its context and message.
fn split<T>(r: Request<T>) -> (CallContext, T) {
    let ctx = context(&r);
    (ctx, r.into_inner())
}

/// A block's answer as a gRPC response.
fn answer<T>(r: Result<T, BlockError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(to_status)
}

/// Rejects calls without the configured API token; records the outcome in
/// the request for the call's context.
#[derive(Clone)]
pub struct TokenInterceptor {
    tokens: TokenCheck,
}

impl TokenInterceptor {
    /// `server` behind the token check (a no-op without a token).
    pub fn wrap<S>(
        server: S,
        tokens: TokenCheck,
    ) -> tonic::service::interceptor::InterceptedService<S, TokenInterceptor> {
        tonic::service::interceptor::InterceptedService::new(server, TokenInterceptor { tokens })
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let given = req.metadata().get(API_TOKEN_HEADER).map(|v| v.as_bytes());
        let auth = self.tokens.check(given).map_err(to_status)?;
        if auth != Authentication::NotRequired {
            req.extensions_mut().insert(auth);
        }
        Ok(req)
    }
}

fn unimplemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(to_status(common::unimplemented(rpc)))
}

#[tonic::async_trait]
impl Dapr for DaprApi {
    // === invocation ===

    async fn invoke_service(
        &self,
        r: Request<pb::InvokeServiceRequest>,
    ) -> Result<Response<dapr_common::InvokeResponse>, Status> {
        let (ctx, req) = split(r);
        let invoked = self
            .blocks
            .invoke
            .invoke_service(&ctx, req)
            .await
            .map_err(to_status)?;
        let mut resp = Response::new(invoked.response);
        headers::extend_metadata(resp.metadata_mut(), &invoked.headers);
        Ok(resp)
    }

    // === state ===

    async fn get_state(
        &self,
        r: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateResponse>, Status> {
        let (ctx, req) = split(r);
        answer(self.blocks.state.get_state(&ctx, req).await)
    }

    async fn get_bulk_state(
        &self,
        r: Request<pb::GetBulkStateRequest>,
    ) -> Result<Response<pb::GetBulkStateResponse>, Status> {
        let (ctx, req) = split(r);
        answer(self.blocks.state.get_bulk_state(&ctx, req).await)
    }

    async fn save_state(&self, r: Request<pb::SaveStateRequest>) -> Result<Response<()>, Status> {
        let (ctx, req) = split(r);
        answer(self.blocks.state.save_state(&ctx, req).await)
    }

    async fn query_state_alpha1(
        &self,
        _: Request<pb::QueryStateRequest>,
    ) -> Result<Response<pb::QueryStateResponse>, Status> {
        unimplemented("QueryStateAlpha1")
    }

    async fn delete_state(
        &self,
        r: Request<pb::DeleteStateRequest>,
    ) -> Result<Response<()>, Status> {
        let (ctx, req) = split(r);
        answer(self.blocks.state.delete_state(&ctx, req).await)
    }

    async fn delete_bulk_state(
        &self,
        r: Request<pb::DeleteBulkStateRequest>,
    ) -> Result<Response<()>, Status> {
        let (ctx, req) = split(r);
        answer(self.blocks.state.delete_bulk_state(&ctx, req).await)
    }

    async fn execute_state_transaction(
        &self,
        r: Request<pb::ExecuteStateTransactionRequest>,
    ) -> Result<Response<()>, Status> {
        let (ctx, req) = split(r);
        answer(self.blocks.state.execute_state_transaction(&ctx, req).await)
    }

    // === pub/sub ===

    async fn publish_event(
        &self,
        r: Request<pb::PublishEventRequest>,
    ) -> Result<Response<()>, Status> {
        let (ctx, req) = split(r);
        answer(self.blocks.pubsub.publish_event(&ctx, req).await)
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
        let (ctx, req) = split(r);
        answer(self.blocks.pubsub.bulk_publish_event(&ctx, req).await)
    }

    type SubscribeTopicEventsAlpha1Stream = TopicStream;

    async fn subscribe_topic_events_alpha1(
        &self,
        r: Request<Streaming<pb::SubscribeTopicEventsRequestAlpha1>>,
    ) -> Result<Response<Self::SubscribeTopicEventsAlpha1Stream>, Status> {
        let (ctx, requests) = split(r);
        let requests = requests.map(|m| m.map_err(|s| from_status(&s)));
        let rx = self.blocks.pubsub.subscribe_topic_events(&ctx, requests);
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }

    // === bindings and secrets ===

    async fn invoke_binding(
        &self,
        _: Request<pb::InvokeBindingRequest>,
    ) -> Result<Response<pb::InvokeBindingResponse>, Status> {
        unimplemented("InvokeBinding")
    }

    async fn get_secret(
        &self,
        _: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        unimplemented("GetSecret")
    }

    async fn get_bulk_secret(
        &self,
        _: Request<pb::GetBulkSecretRequest>,
    ) -> Result<Response<pb::GetBulkSecretResponse>, Status> {
        unimplemented("GetBulkSecret")
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
        let (ctx, req) = split(r);
        answer(self.blocks.configuration.get_configuration(&ctx, req).await)
    }

    type SubscribeConfigurationAlpha1Stream = ConfigStream;

    async fn subscribe_configuration_alpha1(
        &self,
        r: Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<Response<Self::SubscribeConfigurationAlpha1Stream>, Status> {
        let (ctx, req) = split(r);
        self.subscribe_config(ctx, req).await
    }

    type SubscribeConfigurationStream = ConfigStream;

    async fn subscribe_configuration(
        &self,
        r: Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<Response<Self::SubscribeConfigurationStream>, Status> {
        let (ctx, req) = split(r);
        self.subscribe_config(ctx, req).await
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
        let (ctx, req) = split(r);
        answer(
            self.blocks
                .configuration
                .unsubscribe_configuration(&ctx, req)
                .await,
        )
    }

    // === lock ===

    async fn try_lock_alpha1(
        &self,
        _: Request<pb::TryLockRequest>,
    ) -> Result<Response<pb::TryLockResponse>, Status> {
        unimplemented("TryLockAlpha1")
    }

    async fn unlock_alpha1(
        &self,
        _: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        unimplemented("UnlockAlpha1")
    }

    // === metadata and lifecycle ===

    async fn get_metadata(
        &self,
        _: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        Ok(Response::new(self.blocks.metadata_view()))
    }

    async fn set_metadata(
        &self,
        r: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<()>, Status> {
        answer(self.blocks.metadata.set_metadata(r.into_inner()))
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
        let (ctx, requests) = split(r);
        let requests = requests.map(|m| m.map_err(|s| from_status(&s)));
        let rx = self
            .blocks
            .invoke
            .serve_invocations(&ctx, requests)
            .map_err(to_status)?;
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }
}
