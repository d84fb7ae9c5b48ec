//! Runs the pub/sub conformance suite on the embedded broker, and checks
//! the factory's configuration errors.

use weft_components::pubsub::{self, conformance, PubSub};
use weft_components::{ComponentError, InitContext, Metadata};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_conformance() {
    let ps = pubsub::create(&md("pubsub", "pubsub.embedded", &[]), &ctx())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    conformance::run_all(ps.as_ref(), &conformance::Settings::in_process()).await;
    ps.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn embedded_conformance_single_thread_three_partitions() {
    let ps = pubsub::create(
        &md("pubsub", "pubsub.embedded", &[("partitions", "3")]),
        &ctx(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    conformance::run_all(ps.as_ref(), &conformance::Settings::in_process()).await;
}

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
