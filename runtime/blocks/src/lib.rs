//! Weft's building blocks: one handler per API operation, shared by every
//! transport.
//!
//! The runtime's transports (gRPC, HTTP, shared memory, the mesh) decode a
//! request, fill a [`CallContext`] and call a block method; the block
//! validates the request, calls its components and answers with the
//! response or a [`BlockError`]. Nothing here knows a transport: this crate
//! depends on the components and the protobuf message types only, so the
//! compiler keeps the dependencies pointing one way (configuration →
//! blocks → transports).
//!
//! * [`state`], [`configuration`], [`pubsub`], [`invoke`], [`lock`],
//!   [`sequencer`], [`secrets`], [`metadata`]: the blocks;
//! * [`app`]: how blocks reach the local app (callbacks, invocations);
//! * [`context`], [`error`]: what every method takes and returns;
//! * [`BlocksConfig`]: the typed settings the runtime's configuration
//!   builds for them.

pub mod app;
pub mod configuration;
pub mod context;
pub mod error;
pub mod health;
pub mod ids;
pub mod invoke;
pub mod lock;
pub mod metadata;
pub mod pubsub;
pub mod resiliency;
pub mod secrets;
pub mod sequencer;
pub mod shutdown;
pub mod state;
pub mod telemetry;
mod time;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use weft_components::nameresolution::{self as nrc, NameResolver};
use weft_components::registry::{self, Component};
use weft_components::{ComponentError, InitContext, Metadata};

pub use configuration::ConfigurationBlock;
pub use context::{Authentication, CallContext, Caller, PeerIdentity};
pub use error::{BlockError, Code};
pub use invoke::InvokeBlock;
pub use lock::LockBlock;
pub use metadata::{ComponentInfo, MetadataBlock};
pub use pubsub::PubSubBlock;
pub use secrets::SecretsBlock;
pub use sequencer::SequencerBlock;
pub use shutdown::Shutdown;
pub use state::StateBlock;

/// A component definition, as read from a resource file (or a built-in
/// default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    /// `metadata.name`: the name apps use (`store_name`, `pubsub_name`).
    pub name: String,
    /// `spec.type`, e.g. `state.sqlite`.
    pub kind: String,
    /// `spec.version`, `v1` when absent.
    pub version: String,
    /// `spec.metadata` as name → value.
    pub metadata: BTreeMap<String, String>,
    /// Where it came from: a file path, or `<built-in default>`.
    pub source: String,
    /// Fields whose values come from a secret store (`secretKeyRef`),
    /// resolved when the component is built.
    pub secret_refs: Vec<secrets::SecretRef>,
}

impl ComponentSpec {
    /// The building block this component belongs to (`state`, `configuration`, …).
    pub fn block(&self) -> &str {
        self.kind.split('.').next().unwrap_or_default()
    }
}

/// What the building blocks need to know of the runtime's configuration.
#[derive(Debug, Clone)]
pub struct BlocksConfig {
    /// This runtime's app id: prefixes state keys, is the default consumer
    /// group and the CloudEvents source.
    pub app_id: String,
    /// Where embedded components keep their files.
    pub data_dir: PathBuf,
    pub invoke: invoke::InvokeConfig,
    /// How the runtime reaches the app's `AppCallback` service, if it
    /// serves one (reported by the metadata API).
    pub app_connection: Option<metadata::AppConnection>,
    /// Traces and metrics (the runtime sets up the exporter).
    pub telemetry: Arc<telemetry::Telemetry>,
    /// Which secrets of each secret store the app may read
    /// (`spec.secrets.scopes` of `--config`); a store absent here is open.
    pub secret_scopes: HashMap<String, secrets::Scope>,
    /// Dapr resiliency policies and flow-control rules.
    pub resiliency: Arc<resiliency::Policies>,
}

/// A component that cannot be built, with the file and component named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct BuildError {
    /// The file (or `<built-in default>`) the component came from.
    pub file: String,
    pub reason: String,
}

/// Every building block of one runtime.
pub struct Blocks {
    pub state: StateBlock,
    pub configuration: ConfigurationBlock,
    pub pubsub: PubSubBlock,
    pub secrets: SecretsBlock,
    pub lock: LockBlock,
    pub sequencer: SequencerBlock,
    pub invoke: InvokeBlock,
    pub metadata: MetadataBlock,
    /// The name resolution component (`nameresolution.local` unless a
    /// component file names another).
    pub name_resolver: Arc<dyn NameResolver>,
    pub shutdown: Shutdown,
    pub telemetry: Arc<telemetry::Telemetry>,
    /// The resiliency policies and flow rules (their state is in metadata).
    pub resiliency: Arc<resiliency::Policies>,
    /// Whether the components reach their backends (in metadata and
    /// `/v1.0/healthz/outbound`).
    pub health: Arc<health::ComponentHealth>,
}

/// Extended metadata key with the state of the resiliency policies and
/// flow rules (JSON: breakers' states, limiters' counts).
pub const RESILIENCY_METADATA: &str = "weft.resiliency";

impl Blocks {
    /// Builds every component. Any error names the file and the component;
    /// the runtime refuses to start on it.
    pub async fn build(
        cfg: BlocksConfig,
        specs: Vec<ComponentSpec>,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, BuildError> {
        let ctx = InitContext {
            data_dir: cfg.data_dir.clone(),
            app_id: cfg.app_id.clone(),
        };
        let mut state_stores = BTreeMap::new();
        let mut config_stores = BTreeMap::new();
        let mut pubsubs = BTreeMap::new();
        let mut secret_stores = BTreeMap::new();
        let mut lock_stores = BTreeMap::new();
        let mut sequencers = BTreeMap::new();
        let mut resolver: Option<(String, Arc<dyn NameResolver>)> = None;
        let mut infos = Vec::new();
        // Secret stores first: the others' secretKeyRef fields read them.
        let mut specs = specs;
        specs.sort_by_key(|s| s.block() != "secretstores");
        for spec in specs {
            let at = |reason: String| BuildError {
                file: spec.source.clone(),
                reason,
            };
            let mut values = spec.metadata.clone();
            for r in &spec.secret_refs {
                if spec.block() == "secretstores" {
                    return Err(at(format!(
                        "component '{}': field '{}': a secret store's own fields cannot come from secretKeyRef",
                        spec.name, r.field
                    )));
                }
                let value = secrets::resolve(&secret_stores, r)
                    .await
                    .map_err(|e| at(format!("component '{}': {e}", spec.name)))?;
                values.insert(r.field.clone(), value);
            }
            let md = Metadata::new(spec.name.clone(), spec.kind.clone(), values);
            // Checked before anything is built: a bad setting opens nothing.
            let prefix = match spec.block() {
                "state" | "lock" | "sequencer" => Some(
                    state::KeyPrefix::from_setting(md.get("keyPrefix"), &cfg.app_id, &spec.name)
                        .map_err(|e| {
                            at(format!("component '{}': field 'keyPrefix': {e}", spec.name))
                        })?,
                ),
                _ => None,
            };
            let segment_size = if spec.block() == "sequencer" {
                let size = md
                    .parse::<u64>("segmentSize")
                    .map_err(|e| at(e.to_string()))?
                    .unwrap_or(weft_components::sequencer::DEFAULT_SEGMENT_SIZE);
                if size == 0 || size > 1 << 40 {
                    let e =
                        md.invalid("segmentSize", format!("must be from 1 to 2^40, got {size}"));
                    return Err(at(e.to_string()));
                }
                size
            } else {
                0
            };
            if spec.block() == "nameresolution" {
                if let Some((first, _)) = &resolver {
                    return Err(at(format!(
                        "component '{}': only one name resolution component may be defined; '{first}' is already one",
                        spec.name
                    )));
                }
            }
            let component = registry::create(&md, &ctx).await.map_err(|e| match e {
                ComponentError::UnknownType { .. } => at(format!("field 'spec.type': {e}")),
                e => at(e.to_string()),
            })?;
            let capabilities = component
                .capabilities()
                .into_iter()
                .map(str::to_string)
                .collect();
            match component {
                Component::State(store) => {
                    let prefix = prefix.unwrap_or(state::KeyPrefix::None);
                    state_stores.insert(
                        spec.name.clone(),
                        state::StoreHandle::new(
                            &spec.name,
                            &spec.kind,
                            store,
                            prefix,
                            &cfg.telemetry,
                        ),
                    );
                }
                Component::Configuration(store) => {
                    config_stores.insert(
                        spec.name.clone(),
                        configuration::StoreHandle::new(
                            &spec.name,
                            &spec.kind,
                            store,
                            &cfg.telemetry,
                        ),
                    );
                }
                Component::PubSub(ps) => {
                    pubsubs.insert(spec.name.clone(), (spec.kind.clone(), ps));
                }
                Component::NameResolution(r) => resolver = Some((spec.name.clone(), r)),
                Component::Lock(store) => {
                    let prefix = prefix.unwrap_or(state::KeyPrefix::None);
                    lock_stores.insert(
                        spec.name.clone(),
                        lock::StoreHandle::new(
                            &spec.name,
                            &spec.kind,
                            store,
                            prefix,
                            &cfg.telemetry,
                        ),
                    );
                }
                Component::Sequencer(store) => {
                    let prefix = prefix.unwrap_or(state::KeyPrefix::None);
                    sequencers.insert(
                        spec.name.clone(),
                        sequencer::StoreHandle::new(
                            &spec.name,
                            &spec.kind,
                            store,
                            prefix,
                            segment_size,
                            &cfg.telemetry,
                        ),
                    );
                }
                Component::SecretStore(store) => {
                    secret_stores.insert(
                        spec.name.clone(),
                        secrets::StoreHandle::new(&spec.name, &spec.kind, store, &cfg.telemetry),
                    );
                }
            }
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
                nrc::build(&md, &ctx).await.map_err(|e| BuildError {
                    file: "<built-in default>".to_string(),
                    reason: e.to_string(),
                })?
            }
        };
        cfg.telemetry
            .metrics
            .register_collector(Box::new(resiliency::PoliciesCollector(
                cfg.resiliency.clone(),
            )));
        let mut health = health::ComponentHealth::default();
        for (name, (kind, ps)) in &pubsubs {
            let ps = ps.clone();
            health.add(
                name,
                kind,
                Arc::new(move |timeout| {
                    let ps = ps.clone();
                    Box::pin(async move { ps.ping(timeout).await.map_err(|e| e.to_string()) })
                }),
            );
        }
        let health = Arc::new(health);
        health.clone().spawn(shutdown.subscribe());
        let blocks = Arc::new(Self {
            health,
            state: StateBlock::new(state_stores, cfg.telemetry.clone())
                .with_resiliency(cfg.resiliency.clone()),
            configuration: ConfigurationBlock::new(
                config_stores,
                shutdown.subscribe(),
                cfg.telemetry.clone(),
            ),
            pubsub: PubSubBlock::with_telemetry(
                &cfg.app_id,
                pubsubs,
                shutdown.subscribe(),
                cfg.telemetry.clone(),
            )
            .with_resiliency(cfg.resiliency.clone()),
            secrets: SecretsBlock::new(secret_stores, cfg.secret_scopes, cfg.telemetry.clone()),
            lock: LockBlock::new(lock_stores, cfg.telemetry.clone()),
            sequencer: SequencerBlock::new(sequencers, cfg.telemetry.clone()),
            invoke: InvokeBlock::new(
                &cfg.app_id,
                cfg.invoke,
                shutdown.subscribe(),
                cfg.telemetry.clone(),
            )
            .with_resiliency(cfg.resiliency.clone()),
            resiliency: cfg.resiliency.clone(),
            metadata: MetadataBlock::new(&cfg.app_id, cfg.app_connection, infos),
            name_resolver,
            shutdown,
            telemetry: cfg.telemetry,
        });
        Ok(blocks)
    }

    /// GetMetadata (gRPC, shared memory) and `GET /v1.0/metadata` (HTTP):
    /// the runtime's description plus its active subscriptions, one view
    /// for every transport.
    pub fn metadata_view(&self) -> weft_proto::runtime::GetMetadataResponse {
        let mut md = self.metadata.view();
        md.subscriptions = self.pubsub.subscriptions();
        if let Some(r) = self.resiliency.active() {
            md.extended_metadata
                .insert(RESILIENCY_METADATA.to_string(), r.snapshot().to_string());
        }
        if !self.health.is_empty() {
            md.extended_metadata.insert(
                health::HEALTH_METADATA.to_string(),
                self.health.snapshot().to_string(),
            );
        }
        md
    }

    /// Closes every component.
    pub async fn close(&self) {
        self.configuration.close().await;
        self.pubsub.close().await;
        self.name_resolver.close().await;
        self.state.close().await;
        self.lock.close().await;
        self.sequencer.close().await;
    }
}
