//! What every app-facing transport shares, written once: the API token
//! check, the operations whose building block this runtime lacks, and the
//! metadata view.

use std::sync::Arc;

use serde_json::{json, Value};
use weft_blocks::{Authentication, BlockError, Code};
use weft_proto::runtime as pb;

/// Header (gRPC metadata, HTTP header) carrying the API token, as in Dapr.
pub const API_TOKEN_HEADER: &str = "dapr-api-token";

/// The runtime's API token, if it has one (`--api-token`).
#[derive(Clone, Default)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
}

impl TokenCheck {
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(Arc::from),
        }
    }

    /// Checks the token a call presented (`None`: it sent none).
    pub fn check(&self, given: Option<&[u8]>) -> Result<Authentication, BlockError> {
        let Some(expected) = &self.token else {
            return Ok(Authentication::NotRequired);
        };
        match given {
            Some(given) if constant_time_eq(given, expected.as_bytes()) => {
                Ok(Authentication::Token)
            }
            Some(_) => Err(BlockError::Unauthenticated(format!(
                "the {API_TOKEN_HEADER} does not match the runtime's API token"
            ))),
            None => Err(BlockError::Unauthenticated(format!(
                "this runtime requires an API token: send it as {API_TOKEN_HEADER}"
            ))),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Operations of the Dapr API whose building block this runtime does not
/// have, by RPC name, with the block's name. gRPC and shared memory answer
/// them from this one list.
pub const UNIMPLEMENTED: &[(&str, &str)] = &[
    ("QueryStateAlpha1", "state query"),
    ("InvokeBinding", "bindings"),
];

/// The building block `rpc` belongs to, if this runtime lacks it.
pub fn missing_block(rpc: &str) -> Option<&'static str> {
    UNIMPLEMENTED
        .iter()
        .find(|(name, _)| *name == rpc)
        .map(|(_, block)| *block)
}

/// The answer to an RPC of [`UNIMPLEMENTED`].
pub fn unimplemented(rpc: &str) -> BlockError {
    BlockError::unimplemented_block(missing_block(rpc).unwrap_or(rpc))
}

/// The Dapr service's name in spans.
pub const DAPR_SERVICE: &str = "dapr.proto.runtime.v1.Dapr";
/// Weft's app-facing service's name in spans.
pub const APP_CHANNEL_SERVICE: &str = "weft.runtime.v1.AppChannel";
/// The sequencer service's name in spans.
pub const SEQUENCER_SERVICE: &str = "weft.runtime.v1.Sequencer";

/// The service and method of a shared-memory method table entry as the
/// gRPC API names them (`weft.ServeInvocations` is AppChannel's
/// `ServeInvocations`, `weft.GetNextId` the Sequencer's `GetNextId`), so
/// that metrics and spans of both transports match.
pub fn rpc_of(method: &'static str) -> (&'static str, &'static str) {
    match method.strip_prefix("weft.") {
        Some(m @ "GetNextId") => (SEQUENCER_SERVICE, m),
        Some(m) => (APP_CHANNEL_SERVICE, m),
        None => (DAPR_SERVICE, method),
    }
}

/// One log line for a failed API call: a warning when the runtime or a
/// component failed (the operator should look), debug when the caller's
/// request was at fault (the caller has the answer already). The line
/// carries the call's trace id when it has one, so logs and traces join.
pub fn log_failure(transport: &str, method: &str, trace_id: Option<&str>, e: &BlockError) {
    let trace_id = trace_id.unwrap_or("");
    match e.code() {
        Code::Internal | Code::Unavailable | Code::DataLoss | Code::Unknown => tracing::warn!(
            transport,
            method,
            code = weft_blocks::telemetry::code_name(e.code()),
            trace_id,
            "{}",
            e.message()
        ),
        _ => tracing::debug!(
            transport,
            method,
            code = weft_blocks::telemetry::code_name(e.code()),
            trace_id,
            "{}",
            e.message()
        ),
    }
}

/// The metadata view (`Blocks::metadata_view`) as Dapr's `GET
/// /v1.0/metadata` JSON: the same data GetMetadata answers over gRPC.
pub fn metadata_json(md: &pb::GetMetadataResponse) -> Value {
    let components: Vec<Value> = md
        .registered_components
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.r#type,
                "version": c.version,
                "capabilities": c.capabilities,
            })
        })
        .collect();
    let subscriptions: Vec<Value> = md
        .subscriptions
        .iter()
        .map(|s| {
            let kind = pb::PubsubSubscriptionType::try_from(s.r#type)
                .map(|t| t.as_str_name())
                .unwrap_or("UNKNOWN");
            let rules: Vec<Value> = s
                .rules
                .iter()
                .flat_map(|r| &r.rules)
                .map(|r| json!({ "match": r.r#match, "path": r.path }))
                .collect();
            json!({
                "pubsubname": s.pubsub_name,
                "topic": s.topic,
                "deadLetterTopic": s.dead_letter_topic,
                "metadata": s.metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
                "rules": rules,
                "type": kind,
            })
        })
        .collect();
    let mut out = json!({
        "id": md.id,
        "runtimeVersion": md.runtime_version,
        "enabledFeatures": md.enabled_features,
        "components": components,
        "extended": md.extended_metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "subscriptions": subscriptions,
    });
    if let Some(c) = &md.app_connection_properties {
        out["appConnectionProperties"] = json!({
            "port": c.port,
            "protocol": c.protocol,
            "channelAddress": c.channel_address,
        });
    }
    out
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

    #[test]
    fn token_check_outcomes() {
        let none = TokenCheck::new(None);
        assert_eq!(none.check(None).unwrap(), Authentication::NotRequired);
        assert_eq!(none.check(Some(b"x")).unwrap(), Authentication::NotRequired);
        let t = TokenCheck::new(Some("s3cret".into()));
        assert_eq!(t.check(Some(b"s3cret")).unwrap(), Authentication::Token);
        let wrong = t.check(Some(b"nope")).unwrap_err();
        assert_eq!(wrong.code(), weft_blocks::Code::Unauthenticated);
        assert!(wrong.message().contains("does not match"), "{wrong}");
        let missing = t.check(None).unwrap_err();
        assert!(
            missing.message().contains("requires an API token"),
            "{missing}"
        );
    }

    #[test]
    fn unimplemented_names_the_block() {
        assert_eq!(
            unimplemented("InvokeBinding").message(),
            "the bindings building block is not available in this version of weft"
        );
        assert_eq!(missing_block("GetState"), None);
    }
}
