//! The app-side channel of the callback model: Dapr's `AppCallback` gRPC
//! service on `127.0.0.1:<--app-port>`, or on the Unix socket
//! `--app-socket`. A transport only: the pub/sub and invocation blocks
//! decide what to call and what the answers mean.

use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use weft_proto::runtime as pb;
use weft_proto::runtime::app_callback_client::AppCallbackClient;

use weft_blocks::app::{AppChannel, AppChannelError, AppInvoker, Invoked, ERROR_ORIGIN_HEADER};
use weft_blocks::context::set_header;
use weft_blocks::BlockError;

use crate::api::headers;
use crate::api::status::{deadline_fired, from_status};
use crate::coalesce::Coalesce;

/// How long connecting to the app may take before a call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `AppCallback` over gRPC. Connects lazily and reconnects on failure.
#[derive(Clone)]
pub struct GrpcAppChannel {
    client: AppCallbackClient<Channel>,
}

impl GrpcAppChannel {
    pub fn new(port: u16) -> Self {
        let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Coalesce::new(stream)))
        });
        Self::with_connector(connector)
    }

    fn with_connector<C, IO>(connector: C) -> Self
    where
        C: tower_service::Service<
                tonic::codegen::http::Uri,
                Response = hyper_util::rt::TokioIo<IO>,
                Error = std::io::Error,
            > + Send
            + 'static,
        C::Future: Send,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let channel = Endpoint::from_static("http://app.local")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector_lazy(connector);
        Self {
            client: AppCallbackClient::new(channel).max_decoding_message_size(usize::MAX),
        }
    }
}

impl GrpcAppChannel {
    /// `AppCallback` on a Unix socket (`--app-socket`).
    pub fn unix(path: &std::path::Path) -> Self {
        let path = std::sync::Arc::new(path.to_path_buf());
        let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Coalesce::new(stream)))
            }
        });
        Self::with_connector(connector)
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
    ) -> BoxFuture<'_, Result<Invoked, BlockError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let method = req.method.clone();
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
                Err(status) if deadline_fired(&status) => Err(BlockError::DeadlineExceeded(
                    format!("the app did not answer method '{method}' within {timeout:?}"),
                )),
                Err(status) => {
                    // The app's own error, marked so that callers do not
                    // mistake it for a failing runtime.
                    let mut err = from_status(&status);
                    if let BlockError::Passthrough(p) = &mut err {
                        set_header(&mut p.metadata, ERROR_ORIGIN_HEADER, "app");
                    }
                    Err(err)
                }
            }
        })
    }
}
