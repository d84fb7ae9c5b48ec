//! Runs the pub/sub conformance suite on the embedded broker (one test per
//! check), and checks the factory's configuration errors.

use std::sync::Arc;

use weft_components::pubsub::{self, conformance, PubSub};
use weft_components::{pubsub_conformance, ComponentError, InitContext, Metadata};

fn ctx() -> InitContext {
    InitContext {
        data_dir: std::env::temp_dir(),
        app_id: "pubsub-test".to_string(),
    }
}

fn md(name: &str, kind: &str, fields: &[(&str, &str)]) -> Metadata {
    Metadata::new(
        name,
        kind,
        fields.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

/// The embedded broker with `fields`, and the in-process settings.
async fn embedded(fields: &[(&str, &str)]) -> (Arc<dyn PubSub>, conformance::Settings) {
    let ps = pubsub::create(&md("pubsub", "pubsub.embedded", fields), &ctx())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (ps, conformance::Settings::in_process())
}

pubsub_conformance!(embedded, embedded(&[]));
pubsub_conformance!(
    embedded_single_thread_three_partitions,
    embedded(&[("partitions", "3")]),
    current_thread
);

#[tokio::test]
async fn unknown_type_and_bad_fields_are_named() {
    let err: ComponentError = match pubsub::create(&md("ps", "pubsub.nope", &[]), &ctx()).await {
        Ok(_) => panic!("unknown type accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("pubsub.embedded"), "{err}");
    let err = match pubsub::create(
        &md("ps", "pubsub.embedded", &[("partitions", "many")]),
        &ctx(),
    )
    .await
    {
        Ok(_) => panic!("bad partitions accepted"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("'partitions'") && err.to_string().contains("'ps'"),
        "{err}"
    );
}

// Keeps the trait object-safe use visible to readers.
#[allow(dead_code)]
fn _object_safe(_: &dyn PubSub) {}
