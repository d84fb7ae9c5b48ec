//! Building blocks: one handler per API operation, shared by every transport
//! (gRPC today; HTTP routes and shared memory call the same methods).

pub mod configuration;
pub mod invoke;
pub mod invoke_stream;
pub mod metadata;
pub mod pubsub;
pub mod state;
mod time;

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_components::nameresolution::{self as nrc, NameResolver};
use weft_components::{
    configuration as cfgc, pubsub as pubsubc, state as statec, InitContext, Metadata,
};
use weft_proto::runtime as pb;

use crate::config::resources::ComponentSpec;
use crate::config::RuntimeConfig;
use crate::shutdown::Shutdown;

pub use configuration::ConfigurationBlock;
pub use invoke::InvokeBlock;
pub use metadata::{ComponentInfo, MetadataBlock};
pub use pubsub::PubSubBlock;
pub use state::StateBlock;

/// Every building block of one runtime.
pub struct Blocks {
    pub state: StateBlock,
    pub configuration: ConfigurationBlock,
    pub pubsub: PubSubBlock,
    pub invoke: InvokeBlock,
    pub metadata: MetadataBlock,
    /// The name resolution component (`nameresolution.local` unless a
    /// component file names another).
    pub name_resolver: Arc<dyn NameResolver>,
    pub shutdown: Shutdown,
}

/// Component types by block, for "unknown type" errors.
fn known_types() -> String {
    statec::TYPES
        .iter()
        .chain(cfgc::TYPES)
        .chain(pubsubc::TYPES)
        .chain(nrc::TYPES)
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
        let mut resolver: Option<(String, Arc<dyn NameResolver>)> = None;
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
                "nameresolution" => {
                    if let Some((first, _)) = &resolver {
                        return Err(at(format!(
                            "component '{}': only one name resolution component may be defined; '{first}' is already one",
                            spec.name
                        )));
                    }
                    let r = nrc::build(&md, &ctx).await.map_err(|e| at(e.to_string()))?;
                    resolver = Some((spec.name.clone(), r));
                    Vec::new()
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
        let name_resolver = match resolver {
            Some((_, r)) => r,
            None => {
                let md = Metadata::new("nameresolution", "nameresolution.local", Vec::new());
                nrc::build(&md, &ctx).await.map_err(|e| e.to_string())?
            }
        };
        let access = match &cfg.app_config {
            Some(path) => crate::config::app_config::load(path)?.access_control,
            None => crate::security::access::AccessPolicy::allow_all(),
        };
        let blocks = Arc::new(Self {
            state: StateBlock::new(state_stores),
            configuration: ConfigurationBlock::new(config_stores, shutdown.subscribe()),
            pubsub: PubSubBlock::new(&cfg.app_id, pubsubs, shutdown.subscribe()),
            invoke: InvokeBlock::new(
                &cfg.app_id,
                &cfg.mesh_identity.namespace,
                &cfg.mesh_identity.trust_domain,
                cfg.mesh.call_timeout,
                access,
                shutdown.subscribe(),
            ),
            metadata: MetadataBlock::new(cfg, infos),
            name_resolver,
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
        self.name_resolver.close().await;
        self.state.close().await;
    }
}
