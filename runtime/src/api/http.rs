//! HTTP endpoints: health (the Dapr SDKs wait on /v1.0/healthz/outbound),
//! metadata, shutdown and Prometheus metrics (`/metrics`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use weft_proto::runtime as pb;

use weft_blocks::Blocks;

use super::common::{self, TokenCheck, API_TOKEN_HEADER};

#[derive(Clone)]
struct HttpState {
    blocks: Arc<Blocks>,
    tokens: TokenCheck,
}

/// The HTTP router. Health endpoints and `/metrics` never need the API
/// token (as Dapr's metrics port: a scraper sends none).
pub fn router(blocks: Arc<Blocks>, tokens: TokenCheck, max_body_size: usize) -> Router {
    let state = HttpState { blocks, tokens };
    Router::new()
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz_outbound))
        .route("/v1.0/metadata", get(metadata))
        .route("/v1.0/metadata/{key}", put(set_metadata))
        .route("/v1.0/shutdown", post(shutdown))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_size))
        .with_state(state)
}

/// Dapr's JSON error body.
fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({ "errorCode": code, "message": message.into() })),
    )
        .into_response()
}

/// `None` when the call may proceed, else the 401 response to send.
fn check_token(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let given = headers.get(API_TOKEN_HEADER).map(|v| v.as_bytes());
    match state.tokens.check(given) {
        Ok(_) => None,
        Err(e) => Some(error_response(
            StatusCode::UNAUTHORIZED,
            "ERR_UNAUTHORIZED",
            e.message(),
        )),
    }
}

async fn healthz(State(state): State<HttpState>) -> Response {
    if state.blocks.shutdown.is_triggered() {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ERR_HEALTH_NOT_READY",
            "the runtime is shutting down",
        )
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// Ready for outbound calls: not shutting down, and every component whose
/// backend is outside the process answered its last check (503 naming
/// those that did not).
async fn healthz_outbound(State(state): State<HttpState>) -> Response {
    if state.blocks.shutdown.is_triggered() {
        return healthz(State(state)).await;
    }
    let bad = state.blocks.health.unhealthy();
    if bad.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let list: Vec<String> = bad.iter().map(|(n, why)| format!("'{n}': {why}")).collect();
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "ERR_OUTBOUND_HEALTH_NOT_READY",
        format!("components unhealthy: {}", list.join("; ")),
    )
}

async fn metadata(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(r) = check_token(&state, &headers) {
        return r;
    }
    Json(common::metadata_json(&state.blocks.metadata_view())).into_response()
}

async fn set_metadata(
    State(state): State<HttpState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(r) = check_token(&state, &headers) {
        return r;
    }
    match state
        .blocks
        .metadata
        .set_metadata(pb::SetMetadataRequest { key, value: body })
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(StatusCode::BAD_REQUEST, "ERR_METADATA_SET", e.message()),
    }
}

async fn shutdown(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(r) = check_token(&state, &headers) {
        return r;
    }
    state.blocks.shutdown.trigger("HTTP /v1.0/shutdown");
    StatusCode::NO_CONTENT.into_response()
}

/// OpenMetrics text (what prometheus-client writes: counters' TYPE lines
/// name the family, samples end in `_total`, the body ends in `# EOF`);
/// Prometheus reads it natively.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = state.blocks.telemetry.metrics.encode();
    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS_TEXT)], body).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "ERR_NOT_FOUND",
        format!("no HTTP route for {}: this runtime serves the Dapr API over gRPC; HTTP has health, metadata, shutdown and /metrics", uri.path()),
    )
}
