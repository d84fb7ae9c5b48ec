//! Invocations delivered over streams the app opens (`ServeInvocations`),
//! for apps with no AppCallback port: the same calls [`super`]
//! hands to an [`AppInvoker`], written as stream messages, with the app's
//! results matched back by id.
//!
//! Transport-neutral: gRPC and shared memory both feed the app's messages
//! in and write the returned messages out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use weft_proto::appchannel as ac;
use weft_proto::{common, mesh};

use crate::app::{AppInvoker, Invoked, ERROR_ORIGIN_HEADER};
use crate::context::set_header;
use crate::error::{BlockError, Code};
use crate::shutdown::stopping;

/// Messages written to one stream and not yet taken by its transport.
const STREAM_BUFFER: usize = 256;

/// What a stream's reader gets: the runtime's messages, or the error that
/// ends the stream.
pub type InvocationStream = mpsc::Receiver<Result<ac::ServeInvocationsResponse, BlockError>>;

type Waiter = oneshot::Sender<Result<Invoked, BlockError>>;

/// One open `ServeInvocations` stream.
struct Attached {
    key: u64,
    tx: mpsc::Sender<Result<ac::ServeInvocationsResponse, BlockError>>,
    /// Calls sent on this stream and not answered; `None` once the stream
    /// has ended (dropping the waiters fails their calls).
    pending: Mutex<Option<HashMap<u64, Waiter>>>,
}

impl Attached {
    /// Registers a call; `None` when the stream has ended meanwhile.
    fn expect(&self, id: u64) -> Option<oneshot::Receiver<Result<Invoked, BlockError>>> {
        let mut pending = self.pending.lock().ok()?;
        let map = pending.as_mut()?;
        let (done, answer) = oneshot::channel();
        map.insert(id, done);
        Some(answer)
    }

    fn take(&self, id: u64) -> Option<Waiter> {
        self.pending.lock().ok()?.as_mut()?.remove(&id)
    }

    fn idle(&self) -> bool {
        self.pending
            .lock()
            .map(|p| p.as_ref().is_none_or(HashMap::is_empty))
            .unwrap_or(true)
    }

    /// Ends the stream for its calls: those not answered fail.
    fn close(&self) {
        let waiters = self.pending.lock().ok().and_then(|mut p| p.take());
        drop(waiters);
    }
}

/// The app's open invocation streams.
pub struct InvocationStreams {
    streams: Mutex<Vec<Arc<Attached>>>,
    /// Whether the app ever opened one (then a moment without any is a
    /// restart: UNAVAILABLE, which callers retry, not UNIMPLEMENTED).
    ever: AtomicBool,
    next_key: AtomicU64,
    next_id: AtomicU64,
    turn: AtomicUsize,
    shutdown: watch::Receiver<bool>,
}

impl InvocationStreams {
    /// `shutdown` turns true when the runtime stops: streams then take no
    /// new calls, finish the ones in flight and end.
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self {
            streams: Mutex::new(Vec::new()),
            ever: AtomicBool::new(false),
            next_key: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            turn: AtomicUsize::new(0),
            shutdown,
        }
    }

    /// Whether at least one stream is open.
    pub fn any(&self) -> bool {
        self.streams.lock().map(|s| !s.is_empty()).unwrap_or(false)
    }

    /// Whether the app has ever opened a stream.
    pub fn ever_opened(&self) -> bool {
        self.ever.load(Ordering::Relaxed)
    }

    /// Serves one stream: `requests` are the app's messages. The first must
    /// be `initial`; `initial_response` is the first message written, and
    /// the stream takes calls from then on.
    pub fn serve<S>(self: &Arc<Self>, requests: S) -> InvocationStream
    where
        S: Stream<Item = Result<ac::ServeInvocationsRequest, BlockError>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let streams = self.clone();
        tokio::spawn(async move {
            if let Err(e) = streams.run(requests, tx.clone()).await {
                tracing::debug!(error = %e.message(), "invocation stream closed with an error");
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn run<S>(
        &self,
        mut requests: S,
        tx: mpsc::Sender<Result<ac::ServeInvocationsResponse, BlockError>>,
    ) -> Result<(), BlockError>
    where
        S: Stream<Item = Result<ac::ServeInvocationsRequest, BlockError>> + Send + Unpin + 'static,
    {
        use ac::serve_invocations_request::Kind;
        let mut shutdown = self.shutdown.clone();
        let stop = stopping(&mut shutdown);
        tokio::pin!(stop);
        let first = tokio::select! {
            r = requests.next() => r,
            _ = tx.closed() => return Ok(()),
            _ = &mut stop => return Ok(()),
        };
        match first {
            None => return Ok(()),
            Some(Err(e)) => return Err(e),
            Some(Ok(ac::ServeInvocationsRequest {
                kind: Some(Kind::Initial(_)),
            })) => {}
            Some(Ok(_)) => {
                return Err(BlockError::invalid_argument(
                    "the first ServeInvocationsRequest must be 'initial'",
                ))
            }
        }
        let attached = Arc::new(Attached {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            tx,
            pending: Mutex::new(Some(HashMap::new())),
        });
        // Whatever ends the stream, it stops taking calls, and the calls
        // it had not answered fail.
        let _detach = Detach {
            streams: self,
            attached: &attached,
        };
        {
            // The initial response goes first: written (into an empty
            // channel, so it cannot be full) before any call can pick the
            // stream.
            let mut streams = self
                .streams
                .lock()
                .map_err(|_| BlockError::Internal("invocation streams lock poisoned".into()))?;
            let initial = ac::ServeInvocationsResponse {
                kind: Some(ac::serve_invocations_response::Kind::InitialResponse(
                    ac::ServeInvocationsInitialResponse {},
                )),
            };
            if attached.tx.try_send(Ok(initial)).is_err() {
                return Ok(());
            }
            streams.push(attached.clone());
            self.ever.store(true, Ordering::Relaxed);
        }
        let mut draining = false;
        loop {
            let msg = tokio::select! {
                m = requests.next() => m,
                // The transport let go of the runtime's side: the app is gone.
                _ = attached.tx.closed() => return Ok(()),
                _ = &mut stop, if !draining => {
                    // Shutting down: no new calls; those in flight may
                    // still be answered.
                    draining = true;
                    self.detach(attached.key);
                    if attached.idle() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let Some(msg) = msg else { return Ok(()) };
            match msg?.kind {
                Some(Kind::Result(result)) => match attached.take(result.id) {
                    Some(w) => {
                        let _ = w.send(answer(result));
                    }
                    // The call timed out or its caller went away.
                    None => tracing::debug!(
                        id = result.id,
                        "invocation result for a call no longer waiting; dropped"
                    ),
                },
                Some(Kind::Initial(_)) => {
                    return Err(BlockError::invalid_argument(
                        "ServeInvocationsRequest 'initial' was sent again; only the first message may be 'initial'",
                    ))
                }
                None => {
                    return Err(BlockError::invalid_argument(
                        "ServeInvocationsRequest.kind is required and was empty",
                    ))
                }
            }
            if draining && attached.idle() {
                return Ok(());
            }
        }
    }

    /// The next open stream, round robin.
    fn pick(&self) -> Option<Arc<Attached>> {
        let streams = self.streams.lock().ok()?;
        if streams.is_empty() {
            return None;
        }
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % streams.len();
        Some(streams[i].clone())
    }

    /// Takes a stream out of the rotation.
    fn detach(&self, key: u64) {
        if let Ok(mut s) = self.streams.lock() {
            s.retain(|a| a.key != key);
        }
    }

    async fn call(
        &self,
        req: common::InvokeRequest,
        headers: Vec<mesh::Header>,
        timeout: Duration,
    ) -> Result<Invoked, BlockError> {
        let method = req.method.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A stream picked just as it ends refuses the call before anything
        // was sent: then the next one is tried.
        let mut registered = None;
        for _ in 0..4 {
            let Some(stream) = self.pick() else { break };
            if let Some(answer) = stream.expect(id) {
                registered = Some((stream, answer));
                break;
            }
        }
        let Some((stream, answer)) = registered else {
            return Err(BlockError::Unavailable(format!(
                "the app has no invocation stream open to deliver method '{method}' (ServeInvocations)"
            )));
        };
        // Forgets the call however this future ends (answer, timeout, or
        // the caller going away).
        let _forget = Forget {
            stream: &stream,
            id,
        };
        let invocation = ac::ServeInvocationsResponse {
            kind: Some(ac::serve_invocations_response::Kind::Invocation(
                ac::Invocation {
                    id,
                    request: Some(req),
                    metadata: headers
                        .into_iter()
                        .map(|h| ac::Metadata {
                            key: h.key,
                            values: h.values,
                        })
                        .collect(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
            )),
        };
        let closed = || {
            BlockError::Unavailable(format!(
                "the app's invocation stream closed before it answered method '{method}'"
            ))
        };
        let outcome = tokio::time::timeout(timeout, async {
            if stream.tx.send(Ok(invocation)).await.is_err() {
                return Err(closed());
            }
            answer.await.unwrap_or_else(|_| Err(closed()))
        })
        .await;
        outcome.unwrap_or_else(|_| {
            Err(BlockError::DeadlineExceeded(format!(
                "the app did not answer method '{method}' within {timeout:?}"
            )))
        })
    }
}

impl AppInvoker for InvocationStreams {
    fn on_invoke(
        &self,
        req: common::InvokeRequest,
        headers: Vec<mesh::Header>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Invoked, BlockError>> {
        Box::pin(self.call(req, headers, timeout))
    }
}

/// The app's result as the caller sees it.
fn answer(result: ac::InvocationResult) -> Result<Invoked, BlockError> {
    let headers = result
        .metadata
        .into_iter()
        .map(|m| mesh::Header {
            key: m.key,
            values: m.values,
        })
        .collect();
    if result.code == 0 {
        return Ok(Invoked {
            response: result.response.unwrap_or_default(),
            headers,
        });
    }
    let mut headers = headers;
    set_header(&mut headers, ERROR_ORIGIN_HEADER, "app");
    Err(BlockError::passthrough(
        Code::from_i32(result.code),
        result.message,
        result.details,
        headers,
    ))
}

struct Detach<'a> {
    streams: &'a InvocationStreams,
    attached: &'a Attached,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.streams.detach(self.attached.key);
        self.attached.close();
    }
}

struct Forget<'a> {
    stream: &'a Attached,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        drop(self.stream.take(self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ac::serve_invocations_request::Kind as In;
    use ac::serve_invocations_response::Kind as Out;

    fn initial() -> Result<ac::ServeInvocationsRequest, BlockError> {
        Ok(ac::ServeInvocationsRequest {
            kind: Some(In::Initial(ac::ServeInvocationsInitial {})),
        })
    }

    fn request(method: &str) -> common::InvokeRequest {
        common::InvokeRequest {
            method: method.into(),
            ..Default::default()
        }
    }

    /// Opens a stream; returns the app's sender and the runtime's messages,
    /// after the initial response.
    async fn open(
        streams: &Arc<InvocationStreams>,
    ) -> (
        mpsc::UnboundedSender<Result<ac::ServeInvocationsRequest, BlockError>>,
        InvocationStream,
    ) {
        let (app, rx) = mpsc::unbounded_channel();
        app.send(initial()).unwrap();
        let mut out = streams.serve(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        let first = out.recv().await.unwrap().unwrap();
        assert!(matches!(first.kind, Some(Out::InitialResponse(_))));
        (app, out)
    }

    fn invocation(msg: Result<ac::ServeInvocationsResponse, BlockError>) -> ac::Invocation {
        match msg.unwrap().kind {
            Some(Out::Invocation(i)) => i,
            other => panic!("expected an invocation, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn results_are_matched_by_id_in_any_order() {
        let streams = Arc::new(InvocationStreams::new(watch::channel(false).1));
        let (app, mut out) = open(&streams).await;
        let s = streams.clone();
        let a = tokio::spawn(async move {
            s.call(request("a"), Vec::new(), Duration::from_secs(5))
                .await
        });
        let first = invocation(out.recv().await.unwrap());
        let s = streams.clone();
        let b = tokio::spawn(async move {
            s.call(request("b"), Vec::new(), Duration::from_secs(5))
                .await
        });
        let second = invocation(out.recv().await.unwrap());
        assert_ne!(first.id, second.id);
        let reply = |id, code: i32, text: &str| {
            Ok(ac::ServeInvocationsRequest {
                kind: Some(In::Result(ac::InvocationResult {
                    id,
                    response: Some(common::InvokeResponse {
                        data: Some(prost_types::Any {
                            type_url: String::new(),
                            value: text.as_bytes().to_vec(),
                        }),
                        content_type: "text/plain".into(),
                    }),
                    code,
                    message: text.into(),
                    ..Default::default()
                })),
            })
        };
        // Answered in reverse order; the second fails.
        app.send(reply(second.id, Code::NotFound as i32, "no b"))
            .unwrap();
        app.send(reply(first.id, 0, "A")).unwrap();
        let ok = a.await.unwrap().unwrap();
        assert_eq!(ok.response.data.unwrap().value, b"A");
        let err = b.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "no b");
        assert_eq!(
            crate::context::header(err.metadata(), ERROR_ORIGIN_HEADER),
            Some("app")
        );
    }

    #[tokio::test]
    async fn a_closing_stream_fails_its_calls_and_takes_no_more() {
        let streams = Arc::new(InvocationStreams::new(watch::channel(false).1));
        let (app, mut out) = open(&streams).await;
        let s = streams.clone();
        let call = tokio::spawn(async move {
            s.call(request("m"), Vec::new(), Duration::from_secs(5))
                .await
        });
        invocation(out.recv().await.unwrap());
        drop(app);
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("'m'"), "{err:?}");
        assert!(!streams.any());
    }

    #[tokio::test]
    async fn an_unanswered_call_times_out_and_a_late_result_is_dropped() {
        let streams = Arc::new(InvocationStreams::new(watch::channel(false).1));
        let (app, mut out) = open(&streams).await;
        let err = streams
            .call(request("slow"), Vec::new(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        let late = invocation(out.recv().await.unwrap());
        assert!(late.timeout_ms <= 50);
        app.send(Ok(ac::ServeInvocationsRequest {
            kind: Some(In::Result(ac::InvocationResult {
                id: late.id,
                ..Default::default()
            })),
        }))
        .unwrap();
        // The stream is still fine.
        let s = streams.clone();
        let next = tokio::spawn(async move {
            s.call(request("next"), Vec::new(), Duration::from_secs(5))
                .await
        });
        let i = invocation(out.recv().await.unwrap());
        app.send(Ok(ac::ServeInvocationsRequest {
            kind: Some(In::Result(ac::InvocationResult {
                id: i.id,
                ..Default::default()
            })),
        }))
        .unwrap();
        assert!(next.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn on_shutdown_calls_in_flight_finish_then_the_stream_ends() {
        let (stop, shutdown) = watch::channel(false);
        let streams = Arc::new(InvocationStreams::new(shutdown));
        let (app, mut out) = open(&streams).await;
        let s = streams.clone();
        let call = tokio::spawn(async move {
            s.call(request("m"), Vec::new(), Duration::from_secs(5))
                .await
        });
        let inv = invocation(out.recv().await.unwrap());
        stop.send_replace(true);
        // No new calls once shutting down (bounded wait for the stream to
        // leave the rotation).
        for _ in 0..100 {
            if !streams.any() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!streams.any());
        let err = streams
            .call(request("late"), Vec::new(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        // The call in flight is still answered, then the stream ends.
        app.send(Ok(ac::ServeInvocationsRequest {
            kind: Some(In::Result(ac::InvocationResult {
                id: inv.id,
                ..Default::default()
            })),
        }))
        .unwrap();
        assert!(call.await.unwrap().is_ok());
        assert!(out.recv().await.is_none(), "the stream ends with OK");
    }

    #[tokio::test]
    async fn bad_streams_are_refused_with_the_reason() {
        let streams = Arc::new(InvocationStreams::new(watch::channel(false).1));
        // Not opened with 'initial'.
        let (app, rx) = mpsc::unbounded_channel();
        app.send(Ok(ac::ServeInvocationsRequest { kind: None }))
            .unwrap();
        let mut out = streams.serve(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        let err = out.recv().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("first"), "{err:?}");
        assert!(!streams.any());

        // 'initial' twice, then an empty message.
        let (app, mut out) = open(&streams).await;
        app.send(initial()).unwrap();
        let err = out.recv().await.unwrap().unwrap_err();
        assert!(err.message().contains("again"), "{err:?}");
        assert!(!streams.any());
        let (app, mut out) = open(&streams).await;
        app.send(Ok(ac::ServeInvocationsRequest { kind: None }))
            .unwrap();
        let err = out.recv().await.unwrap().unwrap_err();
        assert!(err.message().contains("kind"), "{err:?}");
    }
}
