//! The configuration API of a real `weft` process with a file store.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use weft_proto::runtime as pb;
use weft_tests::{write_component, Weft, WeftOptions};

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn get_subscribe_unsubscribe() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.yaml");
    std::fs::write(&file, "color: blue\nsize: 3\n").unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir(&res).unwrap();
    write_component(
        &res,
        "configstore",
        "configuration.file",
        &[("path", file.to_str().unwrap())],
    );
    let weft = Weft::start(WeftOptions::new("config-e2e").resources(&res))
        .await
        .unwrap();
    let mut c = weft.client().await;

    let all = c
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "configstore".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.items["color"].value, "blue");
    assert_eq!(all.items["size"].value, "3");
    let some = c
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "configstore".into(),
            keys: vec!["size".into(), "absent".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(some.items.keys().collect::<Vec<_>>(), vec!["size"]);

    let mut stream = c
        .subscribe_configuration(pb::SubscribeConfigurationRequest {
            store_name: "configstore".into(),
            keys: vec!["color".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.id.is_empty());
    assert_eq!(
        first.items["color"].value, "blue",
        "first message carries current values"
    );
    let v1 = first.items["color"].version.clone();

    // A change to another key is not delivered; a change to `color` is.
    write_atomically(&file, "color: blue\nsize: 4\n");
    write_atomically(&file, "color: red\nsize: 4\n");
    let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no update within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(update.id, first.id);
    assert_eq!(update.items.keys().collect::<Vec<_>>(), vec!["color"]);
    assert_eq!(update.items["color"].value, "red");
    assert_ne!(update.items["color"].version, v1);

    let bad = c
        .unsubscribe_configuration(pb::UnsubscribeConfigurationRequest {
            store_name: "configstore".into(),
            id: "no-such-id".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!bad.ok && bad.message.contains("no-such-id"), "{bad:?}");

    let ok = c
        .unsubscribe_configuration(pb::UnsubscribeConfigurationRequest {
            store_name: "configstore".into(),
            id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.ok, "{ok:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("stream did not end");
    assert!(
        end.is_none(),
        "stream should end after unsubscribe: {end:?}"
    );
}

#[tokio::test]
async fn bad_configuration_requests() {
    let weft = Weft::start(WeftOptions::new("config-bad-e2e"))
        .await
        .unwrap();
    let mut c = weft.client().await;
    let err = c
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("'nope'") && err.message().contains("configstore"),
        "{}",
        err.message()
    );
    let err = c
        .subscribe_configuration(pb::SubscribeConfigurationRequest {
            store_name: "configstore".into(),
            keys: vec!["ok".into(), "".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("keys[1]"), "{}", err.message());
    let err = c
        .unsubscribe_configuration(pb::UnsubscribeConfigurationRequest {
            store_name: "configstore".into(),
            id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("id"), "{}", err.message());
    // The embedded default store has its example key.
    let all = c
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "configstore".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!all.items.is_empty());
}
