//! Metadata operations: what this runtime is and runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use weft_proto::runtime as pb;

use crate::error::BlockError;

/// A loaded component, as reported by the metadata API.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub name: String,
    pub kind: String,
    pub version: String,
    pub capabilities: Vec<String>,
}

/// How the runtime reaches the app's `AppCallback` service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConnection {
    /// The app's port (`--app-port`); 0 for a Unix socket.
    pub port: u16,
    /// `grpc`.
    pub protocol: String,
    /// Where the runtime connects: `127.0.0.1` or the socket path.
    pub channel_address: String,
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
    app_connection: Option<AppConnection>,
    components: Vec<ComponentInfo>,
    extended: Mutex<BTreeMap<String, String>>,
}

impl MetadataBlock {
    pub fn new(
        app_id: &str,
        app_connection: Option<AppConnection>,
        components: Vec<ComponentInfo>,
    ) -> Self {
        let mut extended = BTreeMap::new();
        extended.insert("weft.runtime".to_string(), "weft".to_string());
        Self {
            app_id: app_id.to_string(),
            app_connection,
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

    /// The runtime's description, without subscriptions (the pub/sub block
    /// adds them: see `Blocks::metadata_view`).
    pub fn view(&self) -> pb::GetMetadataResponse {
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
            app_connection_properties: self.app_connection.as_ref().map(|c| {
                pb::AppConnectionProperties {
                    port: i32::from(c.port),
                    protocol: c.protocol.clone(),
                    channel_address: c.channel_address.clone(),
                    ..Default::default()
                }
            }),
            ..Default::default()
        }
    }

    /// Sets an extended metadata entry of the runtime's own (e.g. where its
    /// shared-memory socket is).
    pub fn set_extended(&self, key: &str, value: &str) {
        if let Ok(mut m) = self.extended.lock() {
            m.insert(key.to_string(), value.to_string());
        }
    }

    pub fn set_metadata(&self, req: pb::SetMetadataRequest) -> Result<(), BlockError> {
        if req.key.is_empty() {
            return Err(BlockError::missing_field("key"));
        }
        if req.key.len() > MAX_EXTENDED_LEN || req.value.len() > MAX_EXTENDED_LEN {
            return Err(BlockError::invalid_argument(format!(
                "key and value must be at most {MAX_EXTENDED_LEN} bytes each"
            )));
        }
        let mut m = self
            .extended
            .lock()
            .map_err(|_| BlockError::Internal("metadata registry is poisoned".into()))?;
        if !m.contains_key(&req.key) && m.len() >= MAX_EXTENDED_ENTRIES {
            return Err(BlockError::ResourceExhausted(format!(
                "at most {MAX_EXTENDED_ENTRIES} extended metadata entries are kept"
            )));
        }
        m.insert(req.key, req.value);
        Ok(())
    }
}
