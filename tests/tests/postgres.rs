//! A runtime on PostgreSQL state and configuration stores: the API works,
//! a stopped server answers UNAVAILABLE without taking the runtime down,
//! and everything recovers when the server returns.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Code;
use weft_proto::common::StateItem;
use weft_proto::runtime as pb;
use weft_tests::{pg_ctl, pg_url, write_component, Weft, WeftOptions};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() % 1_000_000
    )
}

async fn psql(url: &str, sql: &str) {
    let status = tokio::process::Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .status()
        .await
        .expect("run psql");
    assert!(status.success(), "psql failed: {sql}");
}

#[cfg_attr(
    weft_no_pg,
    ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test]
async fn postgres_stores_survive_a_server_restart() {
    let url = pg_url();
    let res = tempfile::tempdir().unwrap();
    let state_table = unique("e2e_state");
    let config_table = unique("e2e_config");
    write_component(
        res.path(),
        "pgstate",
        "state.postgresql",
        &[
            ("connectionString", &url),
            ("tableName", &state_table),
            ("timeout", "5s"),
        ],
    );
    write_component(
        res.path(),
        "pgconfig",
        "configuration.postgresql",
        &[("connectionString", &url), ("table", &config_table)],
    );
    let mut weft = Weft::start(WeftOptions::new("pg-e2e").resources(res.path()))
        .await
        .unwrap();
    let mut c = weft.client().await;

    let save = |k: &str, v: &str| pb::SaveStateRequest {
        store_name: "pgstate".into(),
        states: vec![StateItem {
            key: k.into(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        }],
    };
    let get = |k: &str| pb::GetStateRequest {
        store_name: "pgstate".into(),
        key: k.into(),
        ..Default::default()
    };
    c.save_state(save("before", "1")).await.unwrap();
    assert_eq!(
        c.get_state(get("before")).await.unwrap().into_inner().data,
        b"1"
    );

    // Configuration: the table exists after first use; write a value and subscribe.
    let all = c
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "pgconfig".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(all.items.is_empty());
    psql(
        &url,
        &format!("INSERT INTO {config_table} (key, value) VALUES ('mode', 'a')"),
    )
    .await;
    let mut stream = c
        .subscribe_configuration(pb::SubscribeConfigurationRequest {
            store_name: "pgconfig".into(),
            keys: vec!["mode".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.items["mode"].value, "a");

    // Take PostgreSQL down.
    pg_ctl("stop").unwrap();
    let mut saw_unavailable = false;
    for _ in 0..20 {
        match c.get_state(get("before")).await {
            Err(e) if e.code() == Code::Unavailable => {
                assert!(e.message().contains("pgstate"), "{}", e.message());
                saw_unavailable = true;
                break;
            }
            Err(e) => panic!("expected UNAVAILABLE, got {e:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert!(
        saw_unavailable,
        "state calls kept succeeding with PostgreSQL stopped"
    );
    assert!(
        weft.is_running(),
        "runtime died with PostgreSQL down:\n{}",
        weft.logs()
    );

    // Bring it back: calls recover, and a change made after the restart reaches the subscriber.
    pg_ctl("start").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.save_state(save("after", "2")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "state did not recover within 60 s: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    assert_eq!(
        c.get_state(get("before")).await.unwrap().into_inner().data,
        b"1"
    );
    assert_eq!(
        c.get_state(get("after")).await.unwrap().into_inner().data,
        b"2"
    );

    psql(
        &url,
        &format!("UPDATE {config_table} SET value = 'b' WHERE key = 'mode'"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("no configuration update within 30 s after the restart")
            .expect("subscription ended")
            .expect("subscription error");
        if next.items.get("mode").map(|i| i.value.as_str()) == Some("b") {
            break;
        }
        assert!(Instant::now() < deadline, "never saw mode=b");
    }
    assert!(weft.is_running());
}
