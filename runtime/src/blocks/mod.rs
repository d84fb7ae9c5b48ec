//! Building blocks: one handler per API operation, shared by every transport
//! (gRPC today; HTTP routes and shared memory call the same methods).

pub mod configuration;
pub mod metadata;
pub mod pubsub;
pub mod state;
mod time;

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_components::{
    configuration as cfgc, pubsub as pubsubc, state as statec, InitContext, Metadata,
};
use weft_proto::runtime as pb;

use crate::config::resources::ComponentSpec;
use crate::config::RuntimeConfig;
use crate::shutdown::Shutdown;

pub use configuration::ConfigurationBlock;
pub use metadata::{ComponentInfo, MetadataBlock};
pub use pubsub::PubSubBlock;
pub use state::StateBlock;

/// Every building block of one runtime.
pub struct Blocks {
    pub state: StateBlock,
    pub configuration: ConfigurationBlock,
    pub pubsub: PubSubBlock,
    pub metadata: MetadataBlock,
    pub shutdown: Shutdown,
}

/// Component types by block, for "unknown type" errors.
fn known_types() -> String {
    statec::TYPES
        .iter()
        .chain(cfgc::TYPES)
        .chain(pubsubc::TYPES)
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

impl Blocks {
    /// Builds every component. Any error names the file and the component;
    /// the runtime refuses to start on it.
    pub async fn build(
        cfg: &RuntimeConfig,
        specs: Vec<ComponentSpec>,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, String> {
        let ctx = InitContext {
            data_dir: cfg.data_dir.clone(),
            app_id: cfg.app_id.clone(),
        };
        let mut state_stores = BTreeMap::new();
        let mut config_stores = BTreeMap::new();
        let mut pubsubs = BTreeMap::new();
        let mut infos = Vec::new();
        for spec in specs {
            let md = Metadata::new(spec.name.clone(), spec.kind.clone(), spec.metadata.clone());
            let at = |e: String| format!("{}: {e}", spec.source);
            let capabilities: Vec<String> = match spec.block() {
                "state" => {
                    let prefix = state::KeyPrefix::from_setting(md.get("keyPrefix"), &cfg.app_id, &spec.name)
                        .map_err(|e| at(format!("component '{}': field 'keyPrefix': {e}", spec.name)))?;
                    let store = statec::create(&md, &ctx).await.map_err(|e| at(e.to_string()))?;
                    let caps = store.features().iter().map(|f| f.dapr_name().to_string()).collect();
                    state_stores.insert(spec.name.clone(), state::StoreHandle { store, prefix });
                    caps
                }
                "configuration" => {
                    let store = cfgc::create(&md, &ctx).await.map_err(|e| at(e.to_string()))?;
                    let caps = store
                        .features()
                        .iter()
                        .map(|f| match f {
                            cfgc::Feature::Subscribe => "SUBSCRIBE".to_string(),
                        })
                        .collect();
                    config_stores.insert(spec.name.clone(), store);
                    caps
                }
                "pubsub" => {
                    let ps = pubsubc::create(&md, &ctx).await.map_err(|e| at(e.to_string()))?;
                    let caps = ps
                        .features()
                        .iter()
                        .map(|f| match f {
                            pubsubc::Feature::Durable => "DURABLE".to_string(),
                            pubsubc::Feature::DistributedGroups => "DISTRIBUTED_GROUPS".to_string(),
                            pubsubc::Feature::StaticMembership => "STATIC_MEMBERSHIP".to_string(),
                        })
                        .collect();
                    pubsubs.insert(spec.name.clone(), ps);
                    caps
                }
                _ => {
                    return Err(at(format!(
                        "component '{}': field 'spec.type': unknown component type '{}' (known types: {})",
                        spec.name,
                        spec.kind,
                        known_types()
                    )))
                }
            };
            tracing::info!(component = %spec.name, r#type = %spec.kind, source = %spec.source, "component ready");
            infos.push(ComponentInfo {
                name: spec.name,
                kind: spec.kind,
                version: spec.version,
                capabilities,
            });
        }
        let blocks = Arc::new(Self {
            state: StateBlock::new(state_stores),
            configuration: ConfigurationBlock::new(config_stores, shutdown.subscribe()),
            pubsub: PubSubBlock::new(&cfg.app_id, pubsubs, shutdown.subscribe()),
            metadata: MetadataBlock::new(cfg, infos),
            shutdown,
        });
        Ok(blocks)
    }

    /// GetMetadata: the runtime's description plus active subscriptions.
    pub fn get_metadata(&self) -> pb::GetMetadataResponse {
        let mut md = self.metadata.get_metadata();
        md.subscriptions = self.pubsub.subscriptions();
        md
    }

    /// Closes every component.
    pub async fn close(&self) {
        self.configuration.close().await;
        self.pubsub.close().await;
        self.state.close().await;
    }
}
