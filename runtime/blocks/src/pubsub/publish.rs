//! Publishing: PublishEvent and BulkPublishEvent, with Dapr's metadata
//! semantics (`rawPayload`, `partitionKey`, `cloudevent.*` overrides, the
//! rest as message headers).

use std::collections::HashMap;

use serde_json::{Map, Value};
use weft_components::pubsub::PublishRequest;
use weft_proto::runtime as pb;

use super::envelope::{is_cloudevent, now_rfc3339};
use super::{check_topic, Inner, PubSubBlock, CLOUDEVENTS_JSON, PARTITION_KEY, RAW_PAYLOAD};
use crate::context::{CallContext, TRACEPARENT, TRACESTATE};
use crate::error::BlockError;
use crate::telemetry::{self, Telemetry};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use std::time::Instant;

impl PubSubBlock {
    pub async fn publish_event(
        &self,
        ctx: &CallContext,
        req: pb::PublishEventRequest,
    ) -> Result<(), BlockError> {
        let ps = self.component(&req.pubsub_name)?;
        check_topic(&req.topic)?;
        let (span, trace) = self.inner.producer_span(ctx, &req.pubsub_name, &req.topic);
        let msg = self.inner.message(
            &req.pubsub_name,
            &req.topic,
            req.data,
            &req.data_content_type,
            Md {
                trace: trace.as_ref(),
                ..Md::from(&req.metadata)
            },
            None,
            &now_rfc3339(),
        )?;
        let started = ctx.timed.then(Instant::now);
        let published = ps
            .publish(msg)
            .await
            .map_err(|e| BlockError::from_pubsub(&req.pubsub_name, e));
        self.inner
            .record_publish(&req.pubsub_name, published.is_ok(), started);
        Telemetry::end(span, published.as_ref().map(|_| ()));
        published
    }

    pub async fn bulk_publish_event(
        &self,
        ctx: &CallContext,
        req: pb::BulkPublishRequest,
    ) -> Result<pb::BulkPublishResponse, BlockError> {
        let ps = self.component(&req.pubsub_name)?;
        check_topic(&req.topic)?;
        let mut ids = std::collections::HashSet::with_capacity(req.entries.len());
        for (i, e) in req.entries.iter().enumerate() {
            if e.entry_id.is_empty() {
                return Err(BlockError::missing_field(&format!("entries[{i}].entry_id")));
            }
            if !ids.insert(e.entry_id.as_str()) {
                return Err(BlockError::invalid_argument(format!(
                    "entries[{i}].entry_id '{}' is used by more than one entry; entry ids must be unique",
                    e.entry_id
                )));
            }
        }
        drop(ids);
        let now = now_rfc3339();
        let (span, trace) = self.inner.producer_span(ctx, &req.pubsub_name, &req.topic);
        let mut entry_ids = Vec::with_capacity(req.entries.len());
        let mut msgs = Vec::with_capacity(req.entries.len());
        for (i, mut e) in req.entries.into_iter().enumerate() {
            msgs.push(self.inner.message(
                &req.pubsub_name,
                &req.topic,
                std::mem::take(&mut e.event),
                &e.content_type,
                Md {
                    base: &req.metadata,
                    entry: Some(&e.metadata),
                    trace: trace.as_ref(),
                },
                Some(i),
                &now,
            )?);
            entry_ids.push(e.entry_id);
        }
        let started = ctx.timed.then(Instant::now);
        let results = ps.publish_bulk(msgs).await;
        self.inner
            .record_publish(&req.pubsub_name, results.iter().all(Result::is_ok), started);
        let failed = results.iter().filter(|r| r.is_err()).count();
        let outcome = (failed > 0).then(|| {
            BlockError::Unavailable(format!("{failed} of {} entries failed", results.len()))
        });
        Telemetry::end(span, outcome.as_ref().map_or(Ok(()), Err));
        let failed_entries = entry_ids
            .into_iter()
            .zip(results)
            .filter_map(|(entry_id, r)| {
                r.err().map(|err| pb::BulkPublishResponseFailedEntry {
                    entry_id,
                    error: BlockError::from_pubsub(&req.pubsub_name, err)
                        .message()
                        .to_string(),
                })
            })
            .collect();
        Ok(pb::BulkPublishResponse { failed_entries })
    }
}

impl Inner {
    /// The producer span of a publish (when the call is traced), and the
    /// trace context the event carries: that span's, else the caller's as
    /// it came.
    fn producer_span(
        &self,
        ctx: &CallContext,
        pubsub: &str,
        topic: &str,
    ) -> (
        Option<opentelemetry::Context>,
        Option<(String, Option<String>)>,
    ) {
        let span = self.telemetry.child(ctx, SpanKind::Producer, || {
            (
                format!("publish {topic}").into(),
                vec![
                    KeyValue::new(
                        "messaging.system",
                        telemetry::messaging_system(&self.kind_of(pubsub)),
                    ),
                    KeyValue::new("messaging.destination.name", topic.to_string()),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("weft.component", pubsub.to_string()),
                ],
            )
        });
        let trace = match &span {
            Some(cx) => telemetry::traceparent(cx),
            None => ctx
                .traceparent()
                .map(|tp| (tp.to_string(), ctx.header(TRACESTATE).map(str::to_string))),
        };
        (span, trace)
    }

    /// The message to publish for one event; `entry` is its index in a
    /// bulk request (named in errors); `now` the envelope's `time`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn message(
        &self,
        pubsub: &str,
        topic: &str,
        data: Vec<u8>,
        content_type: &str,
        metadata: Md<'_>,
        entry: Option<usize>,
        now: &str,
    ) -> Result<PublishRequest, BlockError> {
        let at = || entry.map(|i| format!("entries[{i}].")).unwrap_or_default();
        let raw = match metadata
            .get(RAW_PAYLOAD)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => false,
            Some(v) if v.is_empty() || v == "false" => false,
            Some(v) if v == "true" => true,
            Some(v) => {
                return Err(BlockError::invalid_argument(format!(
                    "{}metadata.{RAW_PAYLOAD} must be true or false, got '{v}'",
                    at()
                )))
            }
        };
        let key = metadata
            .get(PARTITION_KEY)
            .filter(|k| !k.is_empty())
            .cloned();
        let mut headers: HashMap<String, String> = metadata
            .iter()
            .filter(|(k, _)| {
                k.as_str() != RAW_PAYLOAD
                    && k.as_str() != PARTITION_KEY
                    && !k.starts_with("cloudevent.")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let data = if raw {
            if !content_type.is_empty() {
                headers.insert("content-type".into(), content_type.to_string());
            }
            if let Some((tp, ts)) = metadata.trace {
                headers.insert(TRACEPARENT.into(), tp.clone());
                if let Some(ts) = ts {
                    headers.insert(TRACESTATE.into(), ts.clone());
                }
            }
            data
        } else if is_cloudevent(content_type) {
            let mut ce: Map<String, Value> = serde_json::from_slice(&data).map_err(|e| {
                BlockError::invalid_argument(format!(
                    "{}data is not a CloudEvents JSON object (data_content_type is {CLOUDEVENTS_JSON}): {e}",
                    at()
                ))
            })?;
            self.fill_envelope(&mut ce, pubsub, topic, metadata, now);
            serde_json::to_vec(&ce).map_err(|e| BlockError::Internal(e.to_string()))?
        } else {
            self.envelope(pubsub, topic, data, content_type, metadata, now)
        };
        Ok(PublishRequest {
            topic: topic.to_string(),
            key,
            data,
            headers,
        })
    }
}

/// Request metadata, with a bulk entry's own metadata over the request's,
/// and the trace context the event carries (`traceparent`, `tracestate`).
#[derive(Clone, Copy)]
pub(super) struct Md<'a> {
    pub(super) base: &'a HashMap<String, String>,
    pub(super) entry: Option<&'a HashMap<String, String>>,
    pub(super) trace: Option<&'a (String, Option<String>)>,
}

impl<'a> From<&'a HashMap<String, String>> for Md<'a> {
    fn from(base: &'a HashMap<String, String>) -> Self {
        Self {
            base,
            entry: None,
            trace: None,
        }
    }
}

impl<'a> Md<'a> {
    pub(super) fn get(&self, key: &str) -> Option<&'a String> {
        self.entry
            .and_then(|e| e.get(key))
            .or_else(|| self.base.get(key))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&'a String, &'a String)> + use<'a> {
        let entry = self.entry;
        entry.into_iter().flatten().chain(
            self.base
                .iter()
                .filter(move |(k, _)| !entry.is_some_and(|e| e.contains_key(*k))),
        )
    }
}
