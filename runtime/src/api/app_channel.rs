//! The app-side channel of the callback model: Dapr's `AppCallback` gRPC
//! service on `127.0.0.1:<--app-port>`. A transport only: the pub/sub and
//! invocation blocks decide what to call and what the answers mean.

use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use weft_proto::runtime as pb;
use weft_proto::runtime::app_callback_client::AppCallbackClient;

use crate::api::headers;
use crate::blocks::invoke::{AppInvoker, Invoked, ERROR_ORIGIN_HEADER};
use crate::blocks::pubsub::{AppChannel, AppChannelError};

/// How long connecting to the app may take before a call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `AppCallback` over gRPC. Connects lazily and reconnects on failure.
#[derive(Clone)]
pub struct GrpcAppChannel {
    client: AppCallbackClient<Channel>,
}

impl GrpcAppChannel {
    pub fn new(port: u16) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        Ok(Self {
            client: AppCallbackClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(usize::MAX),
        })
    }
}

fn channel_error(status: tonic::Status) -> AppChannelError {
    match status.code() {
        Code::Unimplemented => AppChannelError::Unimplemented,
        Code::Unavailable => AppChannelError::Unavailable(status.message().to_string()),
        code => AppChannelError::Failed(format!("{code:?}: {}", status.message())),
    }
}

impl AppChannel for GrpcAppChannel {
    fn list_topic_subscriptions(
        &self,
    ) -> BoxFuture<'_, Result<Vec<pb::TopicSubscription>, AppChannelError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            client
                .list_topic_subscriptions(())
                .await
                .map(|r| r.into_inner().subscriptions)
                .map_err(channel_error)
        })
    }

    fn on_topic_event(
        &self,
        event: pb::TopicEventRequest,
    ) -> BoxFuture<'_, Result<pb::TopicEventResponse, AppChannelError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            client
                .on_topic_event(event)
                .await
                .map(|r| r.into_inner())
                .map_err(channel_error)
        })
    }
}

impl AppInvoker for GrpcAppChannel {
    fn on_invoke(
        &self,
        req: weft_proto::common::InvokeRequest,
        forward: Vec<weft_proto::mesh::Header>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Invoked, tonic::Status>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let mut request = tonic::Request::new(req);
            headers::extend_metadata(request.metadata_mut(), &forward);
            request.set_timeout(timeout);
            match client.on_invoke(request).await {
                Ok(resp) => {
                    let (md, response, _) = resp.into_parts();
                    Ok(Invoked {
                        response,
                        headers: headers::from_metadata(&md),
                    })
                }
                Err(status) => {
                    // The app's own error, marked so that callers do not
                    // mistake it for a failing runtime.
                    let mut status = status;
                    status.metadata_mut().insert(
                        ERROR_ORIGIN_HEADER,
                        tonic::metadata::MetadataValue::from_static("app"),
                    );
                    Err(status)
                }
            }
        })
    }
}
