//! A small app that talks to a `weft run` beside it through the Dapr v1
//! gRPC API: it saves and reads state, shows optimistic concurrency, reads
//! configuration and prints configuration changes as they happen.
//!
//! Environment: `DAPR_GRPC_PORT` (default 50001), `WATCH_SECONDS` (how long
//! to print configuration changes, default 10).

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use weft_proto::common::{state_options::StateConcurrency, Etag, StateItem, StateOptions};
use weft_proto::runtime::dapr_client::DaprClient;
use weft_proto::runtime::{
    GetConfigurationRequest, GetStateRequest, SaveStateRequest, SubscribeConfigurationRequest,
};

const STATE_STORE: &str = "statestore";
const CONFIG_STORE: &str = "configstore";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("DAPR_GRPC_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(50001);
    let watch = Duration::from_secs(
        std::env::var("WATCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let mut client = connect(port).await?;
    println!("connected to weft on 127.0.0.1:{port}");

    // --- state ---
    let order = br#"{"item":"widget","qty":3}"#.to_vec();
    client
        .save_state(SaveStateRequest {
            store_name: STATE_STORE.into(),
            states: vec![StateItem {
                key: "order-1".into(),
                value: order,
                ..Default::default()
            }],
        })
        .await?;
    let got = client.get_state(get("order-1")).await?.into_inner();
    println!(
        "state: order-1 = {} (etag {})",
        String::from_utf8_lossy(&got.data),
        got.etag
    );

    // Someone else updates the order...
    client
        .save_state(SaveStateRequest {
            store_name: STATE_STORE.into(),
            states: vec![StateItem {
                key: "order-1".into(),
                value: br#"{"item":"widget","qty":5}"#.to_vec(),
                ..Default::default()
            }],
        })
        .await?;
    // ...so our write with the etag we read first is refused.
    let stale = client
        .save_state(SaveStateRequest {
            store_name: STATE_STORE.into(),
            states: vec![StateItem {
                key: "order-1".into(),
                value: br#"{"item":"widget","qty":4}"#.to_vec(),
                etag: Some(Etag { value: got.etag }),
                options: Some(StateOptions {
                    concurrency: StateConcurrency::ConcurrencyFirstWrite as i32,
                    consistency: 0,
                }),
                ..Default::default()
            }],
        })
        .await;
    match stale {
        Err(status) => println!(
            "state: write with a stale etag refused: {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(_) => println!("state: unexpected: the stale write was accepted"),
    }
    let now = client.get_state(get("order-1")).await?.into_inner();
    println!(
        "state: order-1 is now {}",
        String::from_utf8_lossy(&now.data)
    );

    // --- configuration ---
    let all = client
        .get_configuration(GetConfigurationRequest {
            store_name: CONFIG_STORE.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut keys: Vec<_> = all.items.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in keys {
        println!("configuration: {k} = {} (version {})", v.value, v.version);
    }
    let mut updates = client
        .subscribe_configuration(SubscribeConfigurationRequest {
            store_name: CONFIG_STORE.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "configuration: subscribed; edit the configuration file to see changes ({}s)",
        watch.as_secs()
    );
    let deadline = Instant::now() + watch;
    let mut first = true;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline.into(), updates.next()).await {
        let msg = msg?;
        let mut items: Vec<_> = msg.items.into_iter().collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let label = if first { "current" } else { "update" };
        first = false;
        for (k, v) in items {
            println!(
                "configuration {label}: {k} = {} (version {})",
                v.value, v.version
            );
        }
    }
    println!("done");
    Ok(())
}

fn get(key: &str) -> GetStateRequest {
    GetStateRequest {
        store_name: STATE_STORE.into(),
        key: key.into(),
        ..Default::default()
    }
}

async fn connect(port: u16) -> Result<DaprClient<Channel>, tonic::transport::Error> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match DaprClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
