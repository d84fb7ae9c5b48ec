//! Metadata operations: what this runtime is and runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;
use weft_proto::runtime as pb;

use crate::config::RuntimeConfig;
use crate::error::ApiError;

/// A loaded component, as reported by the metadata API.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
    pub capabilities: Vec<String>,
}

/// Runtime version reported by the metadata API.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest key or value accepted by SetMetadata.
const MAX_EXTENDED_LEN: usize = 4096;
/// Most extended metadata entries kept.
const MAX_EXTENDED_ENTRIES: usize = 256;

/// Serves GetMetadata / SetMetadata and the HTTP metadata endpoint.
pub struct MetadataBlock {
    app_id: String,
    app_port: Option<u16>,
    components: Vec<ComponentInfo>,
    extended: Mutex<BTreeMap<String, String>>,
}

/// The JSON document of `GET /v1.0/metadata` (Dapr's field names).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataJson {
    pub id: String,
    pub runtime_version: String,
    pub enabled_features: Vec<String>,
    pub components: Vec<ComponentInfo>,
    pub extended: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_connection_properties: Option<AppConnectionJson>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppConnectionJson {
    pub port: u16,
    pub protocol: String,
}

impl MetadataBlock {
    pub fn new(cfg: &RuntimeConfig, components: Vec<ComponentInfo>) -> Self {
        let mut extended = BTreeMap::new();
        extended.insert("weft.runtime".to_string(), "weft".to_string());
        Self {
            app_id: cfg.app_id.clone(),
            app_port: cfg.app_port,
            components,
            extended: Mutex::new(extended),
        }
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn components(&self) -> &[ComponentInfo] {
        &self.components
    }

    fn extended(&self) -> BTreeMap<String, String> {
        self.extended.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn get_metadata(&self) -> pb::GetMetadataResponse {
        pb::GetMetadataResponse {
            id: self.app_id.clone(),
            registered_components: self
                .components
                .iter()
                .map(|c| pb::RegisteredComponents {
                    name: c.name.clone(),
                    r#type: c.kind.clone(),
                    version: c.version.clone(),
                    capabilities: c.capabilities.clone(),
                })
                .collect(),
            extended_metadata: self.extended().into_iter().collect::<HashMap<_, _>>(),
            runtime_version: RUNTIME_VERSION.to_string(),
            app_connection_properties: self.app_port.map(|port| pb::AppConnectionProperties {
                port: i32::from(port),
                protocol: "grpc".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn json(&self) -> MetadataJson {
        MetadataJson {
            id: self.app_id.clone(),
            runtime_version: RUNTIME_VERSION.to_string(),
            enabled_features: Vec::new(),
            components: self.components.clone(),
            extended: self.extended(),
            app_connection_properties: self.app_port.map(|port| AppConnectionJson {
                port,
                protocol: "grpc".to_string(),
            }),
        }
    }

    pub fn set_metadata(&self, req: pb::SetMetadataRequest) -> Result<(), ApiError> {
        if req.key.is_empty() {
            return Err(ApiError::missing_field("key"));
        }
        if req.key.len() > MAX_EXTENDED_LEN || req.value.len() > MAX_EXTENDED_LEN {
            return Err(ApiError::invalid_argument(format!(
                "key and value must be at most {MAX_EXTENDED_LEN} bytes each"
            )));
        }
        let mut m = self
            .extended
            .lock()
            .map_err(|_| ApiError::new(tonic::Code::Internal, "metadata registry is poisoned"))?;
        if !m.contains_key(&req.key) && m.len() >= MAX_EXTENDED_ENTRIES {
            return Err(ApiError::new(
                tonic::Code::ResourceExhausted,
                format!("at most {MAX_EXTENDED_ENTRIES} extended metadata entries are kept"),
            ));
        }
        m.insert(req.key, req.value);
        Ok(())
    }
}
