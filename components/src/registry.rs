//! Every backend this build has, by component type: one line each in
//! [`BACKENDS`]. A backend file declares its [`Backend`] (type name and
//! constructor) next to its code; heavy backends sit behind cargo features
//! (`kafka`, `postgresql`, `zookeeper`, all on by default), and a type whose
//! feature is off is refused with the feature named.
//!
//! Adding a backend: its file with a `BACKEND` constant, one line here, and
//! its block's conformance suite in the tests.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::configuration::ConfigurationStore;
use crate::lock::LockStore;
use crate::nameresolution::NameResolver;
use crate::pubsub::PubSub;
use crate::secretstores::SecretStore;
use crate::sequencer::SequencerStore;
use crate::state::StateStore;
use crate::{ComponentError, InitContext, Metadata};

/// A built component, of whichever block its type belongs to.
#[derive(Clone)]
pub enum Component {
    State(Arc<dyn StateStore>),
    Configuration(Arc<dyn ConfigurationStore>),
    PubSub(Arc<dyn PubSub>),
    NameResolution(Arc<dyn NameResolver>),
    SecretStore(Arc<dyn SecretStore>),
    Lock(Arc<dyn LockStore>),
    Sequencer(Arc<dyn SequencerStore>),
}

impl Component {
    /// The capabilities the component advertises, as Dapr names them in
    /// its metadata API (`ETAG`, `TRANSACTIONAL`, `SUBSCRIBE`, …).
    pub fn capabilities(&self) -> Vec<&'static str> {
        match self {
            Component::State(s) => s.features().iter().map(|f| f.dapr_name()).collect(),
            Component::Configuration(c) => c.features().iter().map(|f| f.dapr_name()).collect(),
            Component::PubSub(p) => p.features().iter().map(|f| f.dapr_name()).collect(),
            Component::NameResolution(_)
            | Component::SecretStore(_)
            | Component::Lock(_)
            | Component::Sequencer(_) => Vec::new(),
        }
    }
}

/// Builds a backend from its component definition.
pub type Build =
    for<'a> fn(&'a Metadata, &'a InitContext) -> BoxFuture<'a, Result<Component, ComponentError>>;

/// One backend: the component type it serves and how to build it.
pub struct Backend {
    /// `<block>.<backend>`, e.g. `state.sqlite`.
    pub kind: &'static str,
    pub build: Build,
}

/// The backends of this build.
pub const BACKENDS: &[Backend] = &[
    crate::state::memory::BACKEND,
    crate::state::sqlite::BACKEND,
    #[cfg(feature = "postgresql")]
    crate::state::postgres::BACKEND,
    crate::configuration::file::BACKEND,
    #[cfg(feature = "postgresql")]
    crate::configuration::postgres::BACKEND,
    crate::pubsub::embedded::BACKEND,
    #[cfg(feature = "kafka")]
    crate::pubsub::kafka::BACKEND,
    crate::nameresolution::local::BACKEND,
    crate::nameresolution::static_::BACKEND,
    #[cfg(feature = "zookeeper")]
    crate::nameresolution::zookeeper::BACKEND,
    crate::lock::sqlite::BACKEND,
    #[cfg(feature = "postgresql")]
    crate::lock::postgres::BACKEND,
    #[cfg(feature = "zookeeper")]
    crate::lock::zookeeper::BACKEND,
    crate::sequencer::sqlite::BACKEND,
    #[cfg(feature = "postgresql")]
    crate::sequencer::postgres::BACKEND,
    #[cfg(feature = "zookeeper")]
    crate::sequencer::zookeeper::BACKEND,
    crate::secretstores::file::BACKEND,
    crate::secretstores::env::BACKEND,
];

/// Types left out of this build, with the cargo feature that brings them.
const LEFT_OUT: &[(&str, &str)] = &[
    #[cfg(not(feature = "postgresql"))]
    ("state.postgresql", "postgresql"),
    #[cfg(not(feature = "postgresql"))]
    ("configuration.postgresql", "postgresql"),
    #[cfg(not(feature = "postgresql"))]
    ("lock.postgresql", "postgresql"),
    #[cfg(not(feature = "kafka"))]
    ("pubsub.kafka", "kafka"),
    #[cfg(not(feature = "zookeeper"))]
    ("nameresolution.zookeeper", "zookeeper"),
    #[cfg(not(feature = "zookeeper"))]
    ("lock.zookeeper", "zookeeper"),
    #[cfg(not(feature = "postgresql"))]
    ("sequencer.postgresql", "postgresql"),
    #[cfg(not(feature = "zookeeper"))]
    ("sequencer.zookeeper", "zookeeper"),
];

/// The component types of this build whose block is `block` (`state`,
/// `pubsub`, …), or all of them for `None`.
pub fn types(block: Option<&str>) -> Vec<&'static str> {
    BACKENDS
        .iter()
        .map(|b| b.kind)
        .filter(|k| block.is_none_or(|blk| k.split('.').next() == Some(blk)))
        .collect()
}

/// Builds the component `md` defines. An unknown type names the types of
/// this build; a type whose cargo feature is off says which feature.
pub async fn create(md: &Metadata, ctx: &InitContext) -> Result<Component, ComponentError> {
    match BACKENDS.iter().find(|b| b.kind == md.kind()) {
        Some(b) => (b.build)(md, ctx).await,
        None => Err(unknown_type(md, None)),
    }
}

/// The error for a type this build cannot create; `block` narrows the list
/// of known types to one block.
pub fn unknown_type(md: &Metadata, block: Option<&str>) -> ComponentError {
    if let Some((_, feature)) = LEFT_OUT.iter().find(|(k, _)| *k == md.kind()) {
        return ComponentError::Init {
            component: md.component().to_string(),
            kind: md.kind().to_string(),
            reason: format!(
                "this build of weft was compiled without it: rebuild with the cargo feature '{feature}' (on by default)"
            ),
        };
    }
    ComponentError::UnknownType {
        component: md.component().to_string(),
        kind: md.kind().to_string(),
        known: types(block).join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_registered_once() {
        let mut kinds = types(None);
        let n = kinds.len();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), n, "a type is registered twice");
        for k in &kinds {
            let (block, backend) = k.split_once('.').expect("<block>.<backend>");
            assert!(!block.is_empty() && !backend.is_empty(), "{k}");
        }
        assert!(types(Some("state")).contains(&"state.sqlite"));
        assert!(!types(Some("state")).contains(&"pubsub.embedded"));
    }

    #[tokio::test]
    async fn unknown_types_name_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = InitContext {
            data_dir: dir.path().into(),
            app_id: "a".into(),
        };
        let md = Metadata::new("s", "state.nosuch", Vec::new());
        let err = create(&md, &ctx).await.err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("state.nosuch") && text.contains("state.sqlite"),
            "{text}"
        );
    }
}
