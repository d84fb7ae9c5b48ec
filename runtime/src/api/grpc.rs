//! The Dapr v1 gRPC API. Each method decodes nothing itself: it fills the
//! call's context from the request metadata, hands the request to its
//! building block and converts the result.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use weft_blocks::telemetry::ApiMetrics;
use weft_blocks::{Authentication, BlockError, Blocks, CallContext, Code};
use weft_proto::appchannel as ac;
use weft_proto::appchannel::app_channel_server::{AppChannel, AppChannelServer};
use weft_proto::common as dapr_common;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_server::{Dapr, DaprServer};
use weft_proto::sequencer as seq;
use weft_proto::sequencer::sequencer_server::{Sequencer, SequencerServer};

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
    /// Metric handles by RPC name.
    metrics: Arc<HashMap<&'static str, ApiMetrics>>,
}

const DAPR: &str = common::DAPR_SERVICE;
const APP_CHANNEL: &str = common::APP_CHANNEL_SERVICE;
const SEQUENCER: &str = common::SEQUENCER_SERVICE;

impl DaprApi {
    pub fn new(blocks: Arc<Blocks>) -> Self {
        let m = &blocks.telemetry.metrics;
        let metrics = weft_shm::method::ALL
            .iter()
            .map(|x| common::rpc_of(x.name).1)
            .map(|name| (name, m.api("grpc", name)))
            .collect();
        Self {
            blocks,
            metrics: Arc::new(metrics),
        }
    }

    /// Runs one call of `method` through `f` with the call's context:
    /// its span (when traced), its metrics, and one log line when it fails.
    async fn call<Req, Resp>(
        &self,
        service: &'static str,
        method: &'static str,
        r: Request<Req>,
        f: impl AsyncFnOnce(&CallContext, Req) -> Result<Resp, BlockError>,
    ) -> Result<Resp, Status> {
        let started = Instant::now();
        let (mut ctx, req) = split(r);
        let telemetry = &self.blocks.telemetry;
        telemetry.start_call(&mut ctx, "grpc", service, method);
        let out = f(&ctx, req).await;
        let code = out.as_ref().map_or_else(|e| e.code(), |_| Code::Ok);
        if let Some(m) = self.metrics.get(method) {
            m.record(code, Some(started));
        }
        telemetry.end_call(&ctx, out.as_ref().map(|_| ()));
        if let Err(e) = &out {
            let trace_id = weft_blocks::telemetry::trace_id_of(&ctx);
            common::log_failure("grpc", method, trace_id.as_deref(), e);
        }
        out.map_err(to_status)
    }

    /// The app-facing gRPC services — the Dapr API and Weft's own
    /// `weft.runtime.v1.AppChannel` and `weft.runtime.v1.Sequencer` — each
    /// with the API-token check (when a token is set) and the request size
    /// limit.
    pub fn routes(self, tokens: TokenCheck, max_body_size: usize) -> tonic::service::Routes {
        let dapr = DaprServer::new(self.clone())
            .max_decoding_message_size(max_body_size)
            .max_encoding_message_size(usize::MAX);
        let sequencer = SequencerServer::new(self.clone())
            .max_decoding_message_size(max_body_size)
            .max_encoding_message_size(usize::MAX);
        let weft = AppChannelServer::new(self)
            .max_decoding_message_size(max_body_size)
            .max_encoding_message_size(usize::MAX);
        tonic::service::Routes::new(TokenInterceptor::wrap(dapr, tokens.clone()))
            .add_service(TokenInterceptor::wrap(sequencer, tokens.clone()))
            .add_service(TokenInterceptor::wrap(weft, tokens))
    }

    /// An RPC of a block this runtime lacks (api::common::UNIMPLEMENTED).
    async fn unimplemented<Req, T>(
        &self,
        rpc: &'static str,
        r: Request<Req>,
    ) -> Result<Response<T>, Status> {
        self.call(DAPR, rpc, r, async |_, _| Err(common::unimplemented(rpc)))
            .await
            .map(Response::new)
    }

    async fn subscribe_config(
        &self,
        method: &'static str,
        r: Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<Response<ConfigStream>, Status> {
        let rx = self
            .call(DAPR, method, r, async |ctx, req| {
                self.blocks
                    .configuration
                    .subscribe_configuration(ctx, req)
                    .await
            })
            .await?;
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The call context of a gRPC request: its deadline (`grpc-timeout`), its
/// forwardable metadata, and how it passed the token check.
fn context<T>(r: &Request<T>) -> CallContext {
    let mut ctx = CallContext::app();
    ctx.timed = true;
    ctx.with_timeout(headers::deadline(r.metadata()))
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

#[tonic::async_trait]
impl Dapr for DaprApi {
    // === invocation ===

    async fn invoke_service(
        &self,
        r: Request<pb::InvokeServiceRequest>,
    ) -> Result<Response<dapr_common::InvokeResponse>, Status> {
        let invoked = self
            .call(DAPR, "InvokeService", r, async |ctx, req| {
                self.blocks.invoke.invoke_service(ctx, req).await
            })
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
        self.call(DAPR, "GetState", r, async |ctx, req| {
            self.blocks.state.get_state(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    async fn get_bulk_state(
        &self,
        r: Request<pb::GetBulkStateRequest>,
    ) -> Result<Response<pb::GetBulkStateResponse>, Status> {
        self.call(DAPR, "GetBulkState", r, async |ctx, req| {
            self.blocks.state.get_bulk_state(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    async fn save_state(&self, r: Request<pb::SaveStateRequest>) -> Result<Response<()>, Status> {
        self.call(DAPR, "SaveState", r, async |ctx, req| {
            self.blocks.state.save_state(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    async fn query_state_alpha1(
        &self,
        r: Request<pb::QueryStateRequest>,
    ) -> Result<Response<pb::QueryStateResponse>, Status> {
        self.unimplemented("QueryStateAlpha1", r).await
    }

    async fn delete_state(
        &self,
        r: Request<pb::DeleteStateRequest>,
    ) -> Result<Response<()>, Status> {
        self.call(DAPR, "DeleteState", r, async |ctx, req| {
            self.blocks.state.delete_state(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    async fn delete_bulk_state(
        &self,
        r: Request<pb::DeleteBulkStateRequest>,
    ) -> Result<Response<()>, Status> {
        self.call(DAPR, "DeleteBulkState", r, async |ctx, req| {
            self.blocks.state.delete_bulk_state(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    async fn execute_state_transaction(
        &self,
        r: Request<pb::ExecuteStateTransactionRequest>,
    ) -> Result<Response<()>, Status> {
        self.call(DAPR, "ExecuteStateTransaction", r, async |ctx, req| {
            self.blocks.state.execute_state_transaction(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    // === pub/sub ===

    async fn publish_event(
        &self,
        r: Request<pb::PublishEventRequest>,
    ) -> Result<Response<()>, Status> {
        self.call(DAPR, "PublishEvent", r, async |ctx, req| {
            self.blocks.pubsub.publish_event(ctx, req).await
        })
        .await
        .map(Response::new)
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
        self.call(DAPR, "BulkPublishEvent", r, async |ctx, req| {
            self.blocks.pubsub.bulk_publish_event(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    type SubscribeTopicEventsAlpha1Stream = TopicStream;

    async fn subscribe_topic_events_alpha1(
        &self,
        r: Request<Streaming<pb::SubscribeTopicEventsRequestAlpha1>>,
    ) -> Result<Response<Self::SubscribeTopicEventsAlpha1Stream>, Status> {
        let rx = self
            .call(
                DAPR,
                "SubscribeTopicEventsAlpha1",
                r,
                async |ctx, requests| {
                    let requests = requests.map(|m| m.map_err(|s| from_status(&s)));
                    Ok(self.blocks.pubsub.subscribe_topic_events(ctx, requests))
                },
            )
            .await?;
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }

    // === bindings and secrets ===

    async fn invoke_binding(
        &self,
        r: Request<pb::InvokeBindingRequest>,
    ) -> Result<Response<pb::InvokeBindingResponse>, Status> {
        self.unimplemented("InvokeBinding", r).await
    }

    async fn get_secret(
        &self,
        r: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        self.call(DAPR, "GetSecret", r, async |ctx, req| {
            self.blocks.secrets.get_secret(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    async fn get_bulk_secret(
        &self,
        r: Request<pb::GetBulkSecretRequest>,
    ) -> Result<Response<pb::GetBulkSecretResponse>, Status> {
        self.call(DAPR, "GetBulkSecret", r, async |ctx, req| {
            self.blocks.secrets.get_bulk_secret(ctx, req).await
        })
        .await
        .map(Response::new)
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
        self.call(DAPR, "GetConfiguration", r, async |ctx, req| {
            self.blocks.configuration.get_configuration(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    type SubscribeConfigurationAlpha1Stream = ConfigStream;

    async fn subscribe_configuration_alpha1(
        &self,
        r: Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<Response<Self::SubscribeConfigurationAlpha1Stream>, Status> {
        self.subscribe_config("SubscribeConfigurationAlpha1", r)
            .await
    }

    type SubscribeConfigurationStream = ConfigStream;

    async fn subscribe_configuration(
        &self,
        r: Request<pb::SubscribeConfigurationRequest>,
    ) -> Result<Response<Self::SubscribeConfigurationStream>, Status> {
        self.subscribe_config("SubscribeConfiguration", r).await
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
        self.call(DAPR, "UnsubscribeConfiguration", r, async |ctx, req| {
            self.blocks
                .configuration
                .unsubscribe_configuration(ctx, req)
                .await
        })
        .await
        .map(Response::new)
    }

    // === lock ===

    async fn try_lock_alpha1(
        &self,
        r: Request<pb::TryLockRequest>,
    ) -> Result<Response<pb::TryLockResponse>, Status> {
        self.call(DAPR, "TryLockAlpha1", r, async |ctx, req| {
            self.blocks.lock.try_lock(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    async fn unlock_alpha1(
        &self,
        r: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        self.call(DAPR, "UnlockAlpha1", r, async |ctx, req| {
            self.blocks.lock.unlock(ctx, req).await
        })
        .await
        .map(Response::new)
    }

    // === metadata and lifecycle ===

    async fn get_metadata(
        &self,
        r: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        self.call(DAPR, "GetMetadata", r, async |_, _| {
            Ok(self.blocks.metadata_view())
        })
        .await
        .map(Response::new)
    }

    async fn set_metadata(
        &self,
        r: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<()>, Status> {
        self.call(DAPR, "SetMetadata", r, async |_, req| {
            self.blocks.metadata.set_metadata(req)
        })
        .await
        .map(Response::new)
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
        let rx = self
            .call(APP_CHANNEL, "ServeInvocations", r, async |ctx, requests| {
                let requests = requests.map(|m| m.map_err(|s| from_status(&s)));
                self.blocks.invoke.serve_invocations(ctx, requests)
            })
            .await?;
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Weft's sequencer service (`weft.runtime.v1.Sequencer`).
#[tonic::async_trait]
impl Sequencer for DaprApi {
    async fn get_next_id(
        &self,
        r: Request<seq::GetNextIdRequest>,
    ) -> Result<Response<seq::GetNextIdResponse>, Status> {
        self.call(SEQUENCER, "GetNextId", r, async |ctx, req| {
            self.blocks.sequencer.get_next_id(ctx, req).await
        })
        .await
        .map(Response::new)
    }
}
