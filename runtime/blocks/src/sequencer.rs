//! Sequencer building block: `weft.runtime.v1.Sequencer/GetNextId` over
//! the sequencer stores, keys namespaced per app like state keys
//! (`keyPrefix`, default the app id). WEAK ids are served from segments
//! reserved in the store (`segmentSize` ids at a time, the component's
//! setting); STRONG ids take one trip to the store each. See
//! `weft_components::sequencer` for what each promises.

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_components::sequencer::{Increment, Segments, SequencerError, SequencerStore};
use weft_proto::sequencer as pb;

use crate::context::CallContext;
use crate::error::{BlockError, Code};
use crate::state::KeyPrefix;
use crate::telemetry::{OpMetrics, Telemetry};

/// A sequencer store as the block sees it.
pub struct StoreHandle {
    store: Arc<dyn SequencerStore>,
    prefix: KeyPrefix,
    kind: String,
    segments: Segments,
    reserve: OpMetrics,
}

impl StoreHandle {
    pub fn new(
        name: &str,
        kind: &str,
        store: Arc<dyn SequencerStore>,
        prefix: KeyPrefix,
        segment_size: u64,
        telemetry: &Telemetry,
    ) -> Self {
        Self {
            store,
            prefix,
            kind: kind.to_string(),
            segments: Segments::new(segment_size),
            reserve: telemetry.metrics.op(name, kind, "reserve"),
        }
    }
}

/// The sequencer building block.
pub struct SequencerBlock {
    stores: BTreeMap<String, StoreHandle>,
    telemetry: Arc<Telemetry>,
}

impl SequencerBlock {
    pub fn new(stores: BTreeMap<String, StoreHandle>, telemetry: Arc<Telemetry>) -> Self {
        Self { stores, telemetry }
    }

    pub fn store_names(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }

    pub async fn close(&self) {
        for h in self.stores.values() {
            h.store.close().await;
        }
    }

    /// GetNextId. A WEAK call served from the runtime's segment touches no
    /// store (no component span or metric); one that needs a new segment,
    /// and every STRONG call, is one `reserve` of the store.
    pub async fn get_next_id(
        &self,
        ctx: &CallContext,
        req: pb::GetNextIdRequest,
    ) -> Result<pb::GetNextIdResponse, BlockError> {
        use pb::sequencer_options::Increment as Wire;
        let h = BlockError::find_component(
            &self.stores,
            &req.store_name,
            "store_name",
            "sequencer store",
        )?;
        let key = h.prefix.apply(&req.key, "key")?;
        let raw = req.options.as_ref().map_or(0, |o| o.increment);
        let increment = match Wire::try_from(raw) {
            Ok(Wire::Weak) => Increment::Weak,
            Ok(Wire::Strong) => Increment::Strong,
            Err(_) => {
                return Err(BlockError::invalid_argument(format!(
                    "options.increment {raw} is neither WEAK (0) nor STRONG (1)"
                )))
            }
        };
        let next_id = h
            .segments
            .next(&key, increment, |count| {
                self.telemetry.component_call(
                    ctx,
                    "sequencer reserve",
                    &h.kind,
                    &h.reserve,
                    h.store.reserve(&key, count),
                )
            })
            .await
            .map_err(|e| from_sequencer(&req.store_name, e))?;
        Ok(pb::GetNextIdResponse { next_id })
    }
}

fn from_sequencer(store: &str, e: SequencerError) -> BlockError {
    let code = match &e {
        SequencerError::InvalidRequest(_) => Code::InvalidArgument,
        SequencerError::Unavailable(_) => Code::Unavailable,
        SequencerError::Internal(_) => Code::Internal,
    };
    BlockError::new(code, format!("sequencer store '{store}': {e}"))
}
