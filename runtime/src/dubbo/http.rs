//! MOSN's registry-proxy HTTP API: `POST /pub`, `/unpub`, `/sub`, `/unsub`.
//!
//! Body: `{"registry": {"type": "zookeeper", "addr": "host:port",
//! "username", "password"}, "service": {"interface", "methods": [...],
//! "group", "version", "port", "params"}}`. Every answer is HTTP 200 with
//! `{"err_no": 0 | 1, "err_msg": "..."}`, except a missing or wrong API
//! token (401, same body). Weft's additions: `service.port`, the app's Dubbo
//! port for a published service (default `--dubbo-app-port`; MOSN's
//! examples send it too), and `registry.group`, the registry's root node
//! (Dubbo's registry `group`, default `dubbo`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use weft_dubbo::registry::{ConsumerSpec, ProviderSpec, Registry, RegistryConfig, ServiceKey};

use super::{DubboProxy, APP_ID_PARAM, MESH_PARAM};
use crate::api::common::{TokenCheck, API_TOKEN_HEADER};

#[derive(Clone)]
struct ApiState {
    proxy: Arc<DubboProxy>,
    tokens: TokenCheck,
}

/// The four routes (merged into the runtime's HTTP router).
pub fn routes(proxy: Arc<DubboProxy>, tokens: TokenCheck) -> Router {
    Router::new()
        .route("/pub", post(publish))
        .route("/unpub", post(unpublish))
        .route("/sub", post(subscribe))
        .route("/unsub", post(unsubscribe))
        .with_state(ApiState { proxy, tokens })
}

fn reply(result: Result<String, String>) -> Response {
    match result {
        Ok(msg) => Json(json!({"err_no": 0, "err_msg": msg})).into_response(),
        Err(msg) => Json(json!({"err_no": 1, "err_msg": msg})).into_response(),
    }
}

fn unauthorized(state: &ApiState, headers: &HeaderMap) -> Option<Response> {
    let given = headers.get(API_TOKEN_HEADER).map(|v| v.as_bytes());
    state.tokens.check(given).err().map(|e| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"err_no": 1, "err_msg": e.message()})),
        )
            .into_response()
    })
}

/// A request body, checked.
struct Call {
    registry: RegistryConfig,
    interface: String,
    methods: Vec<String>,
    group: String,
    version: Option<String>,
    port: Option<u16>,
    params: BTreeMap<String, String>,
}

impl Call {
    fn key(&self) -> ServiceKey {
        ServiceKey {
            interface: self.interface.clone(),
            group: self.group.clone(),
            version: self.version.clone().unwrap_or_default(),
        }
    }
}

fn text<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(format!("{field} must be a string, not {other}")),
    }
}

fn parse(body: &[u8]) -> Result<Call, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body is not JSON: {e} (expected {{\"registry\": {{...}}, \"service\": {{...}}}})"
        )
    })?;
    let Value::Object(top) = value else {
        return Err("the body must be a JSON object with \"registry\" and \"service\"".into());
    };
    let registry =
        match top.get("registry") {
            Some(Value::Object(r)) => r,
            None | Some(Value::Null) => return Err(
                "registry is missing (expected {\"type\": \"zookeeper\", \"addr\": \"host:port\"})"
                    .into(),
            ),
            Some(_) => return Err("registry must be an object".into()),
        };
    let field = |name: &str| text(registry, name).map_err(|e| format!("registry.{e}"));
    match field("type")? {
        Some(t) if t.eq_ignore_ascii_case("zookeeper") => {}
        Some(t) => {
            return Err(format!(
                "registry.type '{t}' is not supported: this runtime proxies zookeeper registries"
            ))
        }
        None => return Err("registry.type is missing (expected \"zookeeper\")".into()),
    }
    let addr = field("addr")?.ok_or("registry.addr is missing (expected host:port)")?;
    let mut cfg = RegistryConfig::new(addr).map_err(|e| e.to_string())?;
    let user = field("username")?.unwrap_or("");
    let password = field("password")?.unwrap_or("");
    cfg = cfg
        .with_credentials(user, password)
        .map_err(|e| e.to_string())?;
    if let Some(group) = field("group")?.filter(|g| !g.is_empty()) {
        cfg = cfg
            .with_root(&format!("/{}", group.trim_start_matches('/')))
            .map_err(|e| format!("registry.group: {e}"))?;
    }

    let service = match top.get("service") {
        Some(Value::Object(s)) => s,
        None | Some(Value::Null) => {
            return Err(
                "service is missing (expected {\"interface\": ..., \"methods\": [...]})".into(),
            )
        }
        Some(_) => return Err("service must be an object".into()),
    };
    let field = |name: &str| text(service, name).map_err(|e| format!("service.{e}"));
    let interface = field("interface")?
        .filter(|i| !i.trim().is_empty())
        .ok_or("service.interface is missing or empty")?
        .trim()
        .to_string();
    let methods = match service.get("methods") {
        None | Some(Value::Null) => {
            return Err("service.methods is missing (a list of method names)".into())
        }
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, m) in items.iter().enumerate() {
                match m {
                    Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                    Value::String(_) => return Err(format!("service.methods[{i}] is empty")),
                    other => {
                        return Err(format!(
                            "service.methods[{i}] must be a string, not {other}"
                        ))
                    }
                }
            }
            if out.is_empty() {
                return Err("service.methods is empty (list the service's method names)".into());
            }
            out
        }
        Some(other) => {
            return Err(format!(
                "service.methods must be a list of strings, not {other}"
            ))
        }
    };
    let port = match service.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(v) => {
            let n = match v {
                Value::String(s) => s.trim().parse::<u64>().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            };
            match n.and_then(|n| u16::try_from(n).ok()).filter(|p| *p != 0) {
                Some(p) => Some(p),
                None => return Err(format!("service.port {v} is not a port number (1-65535)")),
            }
        }
    };
    let mut params = BTreeMap::new();
    match service.get("params") {
        None | Some(Value::Null) => {}
        Some(Value::Object(p)) => {
            for (k, v) in p {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(format!(
                            "service.params.{k} must be a string, number or boolean, not {other}"
                        ))
                    }
                };
                params.insert(k.clone(), v);
            }
        }
        Some(_) => return Err("service.params must be an object of strings".into()),
    }
    Ok(Call {
        registry: cfg,
        interface,
        methods,
        group: field("group")?.unwrap_or("").trim().to_string(),
        version: field("version")?.map(|v| v.trim().to_string()),
        port,
        params,
    })
}

impl DubboProxy {
    fn registry_for(&self, call: &Call) -> Result<Registry, String> {
        self.registries
            .get_or_connect(call.registry.clone())
            .map_err(|e| e.to_string())
    }

    async fn publish(&self, call: Call) -> Result<String, String> {
        let registry = self.registry_for(&call)?;
        let app_port = call.port.unwrap_or(self.app_port);
        let methods: Vec<&str> = call.methods.iter().map(String::as_str).collect();
        let mut spec = ProviderSpec::new(
            &call.interface,
            &methods,
            &self.inbound.ip().to_string(),
            self.inbound.port(),
        );
        spec.group = call.group.clone();
        spec.version = call.version.clone().unwrap_or_default();
        spec.application = self.app_id.clone();
        spec.params = call.params.clone();
        spec.params.insert(APP_ID_PARAM.into(), self.app_id.clone());
        spec.params
            .insert(MESH_PARAM.into(), self.mesh_addr.to_string());
        spec.validate().map_err(|e| e.to_string())?;
        let key = spec.key();
        // Known before the node appears, so the first call finds it.
        let before = self
            .local
            .published
            .lock()
            .unwrap()
            .insert(key.clone(), app_port);
        match registry.publish(&spec).await {
            Ok(url) => Ok(format!(
                "published {key} for the app's port {app_port} as {url}"
            )),
            Err(e) => {
                let mut published = self.local.published.lock().unwrap();
                match before {
                    Some(p) => published.insert(key, p),
                    None => published.remove(&key),
                };
                Err(e.to_string())
            }
        }
    }

    async fn unpublish(&self, call: Call) -> Result<String, String> {
        let key = call.key();
        let servers = &call.registry.servers;
        let Some(registry) = self.registries.get(servers) else {
            return Err(format!(
                "{key} is not published in registry {servers} (nothing was published there)"
            ));
        };
        let removed = registry
            .unpublish(&key.interface, &key.group, &key.version)
            .await
            .map_err(|e| e.to_string())?;
        if !removed {
            return Err(format!("{key} is not published in registry {servers}"));
        }
        let still = self
            .registries
            .all()
            .iter()
            .any(|r| r.published().iter().any(|(k, _)| *k == key));
        if !still {
            self.local.published.lock().unwrap().remove(&key);
        }
        Ok(format!("unpublished {key} from registry {servers}"))
    }

    async fn subscribe(&self, call: Call) -> Result<String, String> {
        let registry = self.registry_for(&call)?;
        let mut spec = ConsumerSpec::new(&call.interface, &self.mesh_addr.ip().to_string());
        spec.group = call.group.clone();
        spec.version = call.version.clone().filter(|v| !v.is_empty());
        spec.methods = call.methods.clone();
        spec.application = self.app_id.clone();
        spec.params = call.params.clone();
        spec.params.insert(APP_ID_PARAM.into(), self.app_id.clone());
        registry.subscribe(&spec).await.map_err(|e| e.to_string())?;
        Ok(format!(
            "subscribed to {} (group '{}') in registry {}",
            call.interface, call.group, call.registry.servers
        ))
    }

    async fn unsubscribe(&self, call: Call) -> Result<String, String> {
        let servers = &call.registry.servers;
        let version = call.version.as_deref().filter(|v| !v.is_empty());
        let what = format!("{} (group '{}')", call.interface, call.group);
        let Some(registry) = self.registries.get(servers) else {
            return Err(format!("{what} is not subscribed in registry {servers}"));
        };
        let removed = registry
            .unsubscribe(&call.interface, &call.group, version)
            .await
            .map_err(|e| e.to_string())?;
        if !removed {
            return Err(format!("{what} is not subscribed in registry {servers}"));
        }
        Ok(format!("unsubscribed from {what} in registry {servers}"))
    }
}

macro_rules! handler {
    ($name:ident, $route:literal) => {
        async fn $name(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
            if let Some(r) = unauthorized(&state, &headers) {
                return r;
            }
            let result = match parse(&body) {
                Ok(call) => state.proxy.$name(call).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::info!(route = $route, "dubbo registry proxy: {e}");
            }
            reply(result)
        }
    };
}

handler!(publish, "/pub");
handler!(unpublish, "/unpub");
handler!(subscribe, "/sub");
handler!(unsubscribe, "/unsub");
