//! Configuration building block: reads and subscriptions with ids that can
//! be cancelled by UnsubscribeConfiguration.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use weft_components::configuration::{ConfigurationStore, Items};
use weft_proto::common;
use weft_proto::runtime as pb;

use crate::context::CallContext;
use crate::error::{BlockError, Code};
use crate::telemetry::{OpMetrics, Telemetry};

/// Messages queued per subscription before the stream applies back-pressure
/// to the store's channel.
const SUBSCRIPTION_BUFFER: usize = 32;

/// A live subscription: its stream of responses.
pub type SubscriptionStream =
    mpsc::Receiver<Result<pb::SubscribeConfigurationResponse, BlockError>>;

struct ActiveSubscription {
    store: String,
    cancel: oneshot::Sender<()>,
}

/// A configuration store with its type and the metric handles of its
/// operations.
pub struct StoreHandle {
    pub store: Arc<dyn ConfigurationStore>,
    kind: String,
    get: OpMetrics,
    subscribe: OpMetrics,
}

impl StoreHandle {
    pub fn new(
        name: &str,
        kind: &str,
        store: Arc<dyn ConfigurationStore>,
        telemetry: &Telemetry,
    ) -> Self {
        Self {
            store,
            kind: kind.to_string(),
            get: telemetry.metrics.op(name, kind, "get"),
            subscribe: telemetry.metrics.op(name, kind, "subscribe"),
        }
    }
}

/// The configuration building block.
pub struct ConfigurationBlock {
    stores: BTreeMap<String, StoreHandle>,
    subscriptions: Arc<Mutex<HashMap<String, ActiveSubscription>>>,
    shutdown: watch::Receiver<bool>,
    telemetry: Arc<Telemetry>,
}

impl ConfigurationBlock {
    pub fn new(
        stores: BTreeMap<String, StoreHandle>,
        shutdown: watch::Receiver<bool>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            stores,
            subscriptions: Arc::default(),
            shutdown,
            telemetry,
        }
    }

    pub fn store_names(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }

    /// Number of open subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub async fn close(&self) {
        if let Ok(mut subs) = self.subscriptions.lock() {
            subs.clear(); // dropping the senders ends every stream
        }
        for (name, h) in &self.stores {
            tracing::debug!(component = %name, "closing configuration store");
            h.store.close().await;
        }
    }

    fn store(&self, name: &str) -> Result<&StoreHandle, BlockError> {
        BlockError::find_component(&self.stores, name, "store_name", "configuration store")
    }

    /// Reads `keys` (all when empty) from the store `h` named `name`.
    async fn read(
        &self,
        ctx: &CallContext,
        h: &StoreHandle,
        name: &str,
        keys: &[String],
    ) -> Result<Items, BlockError> {
        self.telemetry
            .component_call(ctx, "configuration get", &h.kind, &h.get, h.store.get(keys))
            .await
            .map_err(|e| BlockError::from_configuration(name, e))
    }

    pub async fn get_configuration(
        &self,
        ctx: &CallContext,
        req: pb::GetConfigurationRequest,
    ) -> Result<pb::GetConfigurationResponse, BlockError> {
        let h = self.store(&req.store_name)?;
        check_keys(&req.keys)?;
        let items = self.read(ctx, h, &req.store_name, &req.keys).await?;
        Ok(pb::GetConfigurationResponse {
            items: to_proto(items),
        })
    }

    /// Starts a subscription. The first message carries the subscription id
    /// and the current values; each later one carries the items that changed.
    pub async fn subscribe_configuration(
        &self,
        ctx: &CallContext,
        req: pb::SubscribeConfigurationRequest,
    ) -> Result<SubscriptionStream, BlockError> {
        let h = self.store(&req.store_name)?;
        check_keys(&req.keys)?;
        // Subscribe before reading so that no change between the two is missed.
        let mut updates = self
            .telemetry
            .component_call(
                ctx,
                "configuration subscribe",
                &h.kind,
                &h.subscribe,
                h.store.subscribe(&req.keys),
            )
            .await
            .map_err(|e| BlockError::from_configuration(&req.store_name, e))?;
        let current = self.read(ctx, h, &req.store_name, &req.keys).await?;

        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let (cancel_tx, mut cancel_rx) = oneshot::channel();
        self.subscriptions
            .lock()
            .map_err(|_| BlockError::new(Code::Internal, "subscription registry is poisoned"))?
            .insert(
                id.clone(),
                ActiveSubscription {
                    store: req.store_name.clone(),
                    cancel: cancel_tx,
                },
            );
        let first = pb::SubscribeConfigurationResponse {
            id: id.clone(),
            items: to_proto(current),
        };
        let registry = self.subscriptions.clone();
        let mut shutdown = self.shutdown.clone();
        let store_name = req.store_name;
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_ok() {
                loop {
                    tokio::select! {
                        _ = &mut cancel_rx => break,
                        _ = tx.closed() => break,
                        _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                        update = updates.recv() => match update {
                            Some(items) if items.is_empty() => continue,
                            Some(items) => {
                                let msg = pb::SubscribeConfigurationResponse { id: id.clone(), items: to_proto(items) };
                                if tx.send(Ok(msg)).await.is_err() {
                                    break;
                                }
                            }
                            None => {
                                let _ = tx
                                    .send(Err(BlockError::new(
                                        Code::Unavailable,
                                        format!("configuration store '{store_name}' ended the subscription"),
                                    )))
                                    .await;
                                break;
                            }
                        },
                    }
                }
            }
            if let Ok(mut reg) = registry.lock() {
                reg.remove(&id);
            }
            tracing::debug!(subscription = %id, component = %store_name, "configuration subscription ended");
        });
        Ok(rx)
    }

    pub async fn unsubscribe_configuration(
        &self,
        _ctx: &CallContext,
        req: pb::UnsubscribeConfigurationRequest,
    ) -> Result<pb::UnsubscribeConfigurationResponse, BlockError> {
        self.store(&req.store_name)?;
        if req.id.is_empty() {
            return Err(BlockError::missing_field("id"));
        }
        let mut subs = self
            .subscriptions
            .lock()
            .map_err(|_| BlockError::new(Code::Internal, "subscription registry is poisoned"))?;
        match subs.get(&req.id) {
            Some(s) if s.store == req.store_name => {
                if let Some(s) = subs.remove(&req.id) {
                    let _ = s.cancel.send(());
                }
                Ok(pb::UnsubscribeConfigurationResponse {
                    ok: true,
                    message: String::new(),
                })
            }
            _ => Ok(pb::UnsubscribeConfigurationResponse {
                ok: false,
                message: format!(
                    "no subscription with id '{}' on configuration store '{}'",
                    req.id, req.store_name
                ),
            }),
        }
    }
}

fn check_keys(keys: &[String]) -> Result<(), BlockError> {
    match keys.iter().position(|k| k.is_empty()) {
        Some(i) => Err(BlockError::invalid_argument(format!("keys[{i}] is empty"))),
        None => Ok(()),
    }
}

fn to_proto(items: Items) -> HashMap<String, common::ConfigurationItem> {
    items
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                common::ConfigurationItem {
                    value: v.value,
                    version: v.version,
                    metadata: v.metadata,
                },
            )
        })
        .collect()
}
