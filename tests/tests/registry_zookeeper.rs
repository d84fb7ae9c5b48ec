//! The registry against the real ZooKeeper that `scripts/services.sh start
//! zookeeper` runs (address in `WEFT_TEST_ZK_SERVERS`): Dubbo's layout,
//! route updates from watches, session expiry, process death, digest auth,
//! ZooKeeper down. Built without the variable these tests are reported as
//! ignored with the reason, unless `CI` or `WEFT_REQUIRE_SERVICES` is set,
//! where they run and fail. Every test uses its own root
//! node, so runs and tests do not see each other.

use std::process::Stdio;
use std::time::Duration;

use weft_dubbo::registry::{
    ConsumerSpec, LookupError, ProviderSpec, Registries, Registry, RegistryConfig, RegistryError,
};
use weft_dubbo::url::{encode_component, DubboUrl};
use weft_tests::dubbo::{first_server, unique, wait_for, zk_servers, Relay, WAIT};
use zookeeper_client::{Acls, Client, CreateMode};

const IFACE: &str = "dev.weft.test.Greeter";

fn config(servers: &str, root: &str) -> RegistryConfig {
    let mut c = RegistryConfig::new(servers)
        .unwrap()
        .with_root(root)
        .unwrap();
    c.session_timeout = Duration::from_secs(4);
    c.request_timeout = Duration::from_secs(10);
    c
}

fn root() -> String {
    format!("/{}", unique("weft-dubbo-test"))
}

fn provider(port: u16) -> ProviderSpec {
    let mut p = ProviderSpec::new(IFACE, &["greet", "slow"], "127.0.0.1", port);
    p.application = "weft-test".into();
    p.params.insert("weft.app-id".into(), "greeter".into());
    p.params
        .insert("weft.mesh-address".into(), "127.0.0.1:50001".into());
    p
}

async fn probe(servers: &str) -> Client {
    Client::connect(servers).await.unwrap()
}

async fn children(c: &Client, path: &str) -> Vec<String> {
    match c.list_children(path).await {
        Ok(mut v) => {
            v.sort();
            v
        }
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("list {path}: {e}"),
    }
}

fn ports(providers: &[weft_dubbo::registry::Provider]) -> Vec<u16> {
    let mut p: Vec<u16> = providers.iter().filter_map(|p| p.url.port()).collect();
    p.sort();
    p
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_dubbos_layout_and_unpublish_removes_it() {
    let servers = zk_servers("publish_writes_dubbos_layout");
    let root = root();
    let reg = Registry::connect(config(&servers, &root));
    let url = reg.publish(&provider(20001)).await.unwrap();
    let zk = probe(&servers).await;
    let iface_path = format!("{root}/{}", encode_component(IFACE));
    let providers_path = format!("{iface_path}/providers");
    // Parents are persistent, the provider node ephemeral and ours.
    for p in [&root, &iface_path, &providers_path] {
        let (_, stat) = zk.get_data(p).await.unwrap();
        assert_eq!(stat.ephemeral_owner, 0, "{p} is not persistent");
    }
    let nodes = children(&zk, &providers_path).await;
    assert_eq!(nodes, vec![url.to_node_name()]);
    let (data, stat) = zk
        .get_data(&format!("{providers_path}/{}", nodes[0]))
        .await
        .unwrap();
    assert!(data.is_empty());
    assert_eq!(stat.ephemeral_owner, reg.session().unwrap().id().0);
    let read = DubboUrl::from_node_name(&nodes[0]).unwrap();
    assert_eq!(read.protocol(), "dubbo");
    assert_eq!(read.address(), "127.0.0.1:20001");
    assert_eq!(read.path(), IFACE);
    for (k, v) in [
        ("anyhost", "true"),
        ("interface", IFACE),
        ("methods", "greet,slow"),
        ("side", "provider"),
        ("application", "weft-test"),
        ("dubbo", "2.0.2"),
        ("serialization", "hessian2"),
        ("weft.app-id", "greeter"),
        ("weft.mesh-address", "127.0.0.1:50001"),
    ] {
        assert_eq!(read.param(k), Some(v), "parameter {k} of {read}");
    }
    assert_eq!(read.param("pid"), Some(&std::process::id().to_string()[..]));
    assert!(read.param("timestamp").unwrap().parse::<u64>().is_ok());
    assert_eq!(read.param("group"), None, "empty group must be left out");
    assert_eq!(
        read.param("version"),
        None,
        "empty version must be left out"
    );

    // Same spec again: nothing changes.
    let again = reg.publish(&provider(20001)).await.unwrap();
    assert_eq!(again, url);
    assert_eq!(children(&zk, &providers_path).await, nodes);
    // Group and version, when given, are written.
    let mut gv = provider(20002);
    gv.group = "blue".into();
    gv.version = "1.0.0".into();
    let gv_url = reg.publish(&gv).await.unwrap();
    assert_eq!((gv_url.group(), gv_url.version()), ("blue", "1.0.0"));
    assert_eq!(children(&zk, &providers_path).await.len(), 2);
    // A changed spec for the same key replaces the node.
    let mut moved = provider(20003);
    moved.methods.push("fail".into());
    let moved_url = reg.publish(&moved).await.unwrap();
    let now = children(&zk, &providers_path).await;
    assert!(now.contains(&moved_url.to_node_name()) && !now.contains(&url.to_node_name()));
    assert_eq!(reg.published().len(), 2);

    assert!(reg.unpublish(IFACE, "", "").await.unwrap());
    assert!(
        !reg.unpublish(IFACE, "", "").await.unwrap(),
        "second unpublish"
    );
    assert!(reg.unpublish(IFACE, "blue", "1.0.0").await.unwrap());
    assert!(children(&zk, &providers_path).await.is_empty());
    reg.close().await;
    assert!(matches!(
        reg.publish(&provider(1)).await,
        Err(RegistryError::Closed { .. })
    ));
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_routes_follow_every_provider_change() {
    let servers = zk_servers("subscription_routes_follow");
    let root = root();
    let consumer = Registry::connect(config(&servers, &root));
    let publisher = Registry::connect(config(&servers, &root));
    let zk = probe(&servers).await;
    let iface_path = format!("{root}/{}", encode_component(IFACE));

    // Not subscribed yet.
    assert!(matches!(
        consumer.lookup(IFACE, "", ""),
        Err(LookupError::NotSubscribed { .. })
    ));
    let mut sub = ConsumerSpec::new(IFACE, "127.0.0.1");
    sub.methods = vec!["greet".into()];
    consumer.subscribe(&sub).await.unwrap();
    // The consumer node.
    let nodes = children(&zk, &format!("{iface_path}/consumers")).await;
    assert_eq!(nodes.len(), 1);
    let cu = DubboUrl::from_node_name(&nodes[0]).unwrap();
    assert_eq!(cu.protocol(), "consumer");
    for (k, v) in [
        ("category", "consumers"),
        ("side", "consumer"),
        ("interface", IFACE),
        ("methods", "greet"),
        ("check", "false"),
    ] {
        assert_eq!(cu.param(k), Some(v), "parameter {k} of {cu}");
    }
    match consumer.lookup(IFACE, "", "") {
        Err(e @ LookupError::NoProvider { .. }) => {
            assert!(e.to_string().contains(IFACE), "{e}")
        }
        other => panic!("expected NoProvider, got {other:?}"),
    }

    // Providers come and go; the routes follow.
    let mut changes = consumer.changes();
    publisher.publish(&provider(21001)).await.unwrap();
    let mut second = provider(21002);
    second.version = "2.0".into();
    publisher.publish(&second).await.unwrap();
    wait_for("the new providers", || async {
        (ports(&consumer.providers(IFACE)) == vec![21001, 21002]).then_some(())
    })
    .await;
    assert_eq!(ports(&consumer.lookup(IFACE, "", "").unwrap()), vec![21001]);
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    // Version 2.0 is served to calls asking for it (the subscription has
    // no version, so it covers every version).
    assert_eq!(
        ports(&consumer.lookup(IFACE, "", "2.0").unwrap()),
        vec![21002]
    );
    assert_eq!(ports(&consumer.providers(IFACE)), vec![21001, 21002]);

    // A node written the way Java Dubbo writes it is read too.
    let java = "dubbo://127.0.0.1:21003/dev.weft.test.Greeter?anyhost=true&application=java-provider&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&interface=dev.weft.test.Greeter&methods=describe,fail,greet,slow&pid=1&release=3.3.6&side=provider&timestamp=1";
    let java_node = format!("{iface_path}/providers/{}", encode_component(java));
    zk.create(
        &java_node,
        b"127.0.0.1",
        &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
    )
    .await
    .unwrap();
    wait_for("the Java-written provider", || async {
        consumer
            .lookup(IFACE, "", "")
            .ok()
            .filter(|p| ports(p) == vec![21001, 21003])
    })
    .await;
    // Group filtering: a provider of group blue is not served to group "".
    let mut blue = provider(21004);
    blue.group = "blue".into();
    publisher.publish(&blue).await.unwrap();
    wait_for("the blue provider", || async {
        (consumer.providers(IFACE).len() == 4).then_some(())
    })
    .await;
    assert_eq!(
        ports(&consumer.lookup(IFACE, "", "").unwrap()),
        vec![21001, 21003]
    );
    // Group blue is not subscribed.
    assert!(matches!(
        consumer.lookup(IFACE, "blue", ""),
        Err(LookupError::NotSubscribed { .. })
    ));
    let mut blue_sub = ConsumerSpec::new(IFACE, "127.0.0.1");
    blue_sub.group = "blue".into();
    consumer.subscribe(&blue_sub).await.unwrap();
    assert_eq!(
        ports(&consumer.lookup(IFACE, "blue", "").unwrap()),
        vec![21004]
    );
    assert_eq!(
        children(&zk, &format!("{iface_path}/consumers"))
            .await
            .len(),
        2
    );

    // Removals.
    zk.delete(&java_node, None).await.unwrap();
    publisher.unpublish(IFACE, "", "").await.unwrap();
    match wait_for("the removals", || async {
        match consumer.lookup(IFACE, "", "") {
            Err(e @ LookupError::NoProvider { .. }) => Some(e),
            _ => None,
        }
    })
    .await
    {
        LookupError::NoProvider { others, .. } => assert_eq!(others, 2),
        _ => unreachable!(),
    }

    // Unsubscribing removes the consumer node; the last one drops the routes.
    assert!(consumer.unsubscribe(IFACE, "", None).await.unwrap());
    assert!(!consumer.unsubscribe(IFACE, "", None).await.unwrap());
    assert!(matches!(
        consumer.lookup(IFACE, "", ""),
        Err(LookupError::NotSubscribed { .. })
    ));
    assert_eq!(
        ports(&consumer.lookup(IFACE, "blue", "").unwrap()),
        vec![21004]
    );
    assert!(consumer.unsubscribe(IFACE, "blue", None).await.unwrap());
    assert!(children(&zk, &format!("{iface_path}/consumers"))
        .await
        .is_empty());
    assert!(
        consumer.providers(IFACE).is_empty(),
        "routes kept after the last unsubscribe"
    );
    assert!(matches!(
        consumer.lookup(IFACE, "blue", ""),
        Err(LookupError::NotSubscribed { .. })
    ));
    consumer.close().await;
    publisher.close().await;
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_recreates_nodes_and_rearms_watches() {
    let servers = zk_servers("session_expiry_recreates");
    let root = root();
    // `reg` reaches ZooKeeper through a relay, so that it can be kept away
    // while its session is taken over and closed.
    let relay = Relay::start(first_server(&servers)).await;
    let reg = Registry::connect(config(&relay.addr.to_string(), &root));
    let other = Registry::connect(config(&servers, &root));
    let zk = probe(&servers).await;
    let iface_path = format!("{root}/{}", encode_component(IFACE));

    let url = reg.publish(&provider(22001)).await.unwrap();
    reg.subscribe(&ConsumerSpec::new(IFACE, "127.0.0.1"))
        .await
        .unwrap();
    let provider_node = format!("{iface_path}/providers/{}", url.to_node_name());
    other
        .publish(&{
            let mut p = provider(22002);
            p.version = "2".into();
            p
        })
        .await
        .unwrap();
    wait_for("both providers", || async {
        (ports(&reg.providers(IFACE)) == vec![22001, 22002]).then_some(())
    })
    .await;

    // Cut reg off, take its session over and close it: the server ends the
    // session and deletes its ephemeral nodes at once.
    let old = reg.session().expect("no session");
    let old_id = old.id();
    relay.set_up(false);
    let mut connector = Client::connector();
    connector
        .session(old)
        .session_timeout(Duration::from_secs(4))
        .fail_eagerly();
    let taken = tokio::time::timeout(WAIT, connector.connect(&servers))
        .await
        .expect("taking the session over hung")
        .expect("cannot take the session over");
    drop(taken);
    wait_for("the provider node to go with the session", || async {
        zk.check_stat(&provider_node)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(children(&zk, &format!("{iface_path}/consumers"))
        .await
        .is_empty());
    // Routes are still served from the last read meanwhile.
    assert_eq!(ports(&reg.lookup(IFACE, "", "").unwrap()), vec![22001]);
    relay.set_up(true);

    // A new session: both nodes are back, owned by it.
    let new = wait_for("a new session", || async {
        reg.session().map(|s| s.id()).filter(|id| *id != old_id)
    })
    .await;
    let stat = wait_for("the provider node again", || async {
        zk.check_stat(&provider_node).await.unwrap()
    })
    .await;
    assert_eq!(stat.ephemeral_owner, new.0);
    wait_for("the consumer node again", || async {
        (children(&zk, &format!("{iface_path}/consumers"))
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;
    // The watch was re-armed on the new session.
    let mut third = provider(22003);
    third.group = "g".into();
    other.publish(&third).await.unwrap();
    wait_for("the provider published after the expiry", || async {
        (ports(&reg.providers(IFACE)) == vec![22001, 22002, 22003]).then_some(())
    })
    .await;
    reg.close().await;
    assert!(zk.check_stat(&provider_node).await.unwrap().is_none());
    other.close().await;
}

/// Child process of `nodes_vanish_when_the_process_dies` (not a test of
/// its own, hence ignored): publish, print the node name, wait to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of nodes_vanish_when_the_process_dies"]
async fn child_holder() {
    let spec = std::env::var("WEFT_DUBBO_CHILD")
        .expect("child_holder runs only as the child of nodes_vanish_when_the_process_dies");
    let (servers, root) = spec.split_once('|').unwrap();
    let mut cfg = config(servers, root);
    cfg.session_timeout = Duration::from_secs(2);
    let reg = Registry::connect(cfg);
    let url = reg.publish(&provider(23001)).await.unwrap();
    println!("NODE {}", url.to_node_name());
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_vanish_when_the_process_dies() {
    let servers = zk_servers("nodes_vanish_when_the_process_dies");
    use tokio::io::AsyncBufReadExt;
    let root = root();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holder",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WEFT_DUBBO_CHILD", format!("{servers}|{root}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let node = tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            // The test harness may print "test child_holder ... " first.
            if let Some(i) = l.find("NODE ") {
                return l[i + 5..].trim().to_string();
            }
        }
        panic!("the child ended without publishing");
    })
    .await
    .expect("the child did not publish in time");
    let path = format!("{root}/{}/providers/{node}", encode_component(IFACE));
    let zk = probe(&servers).await;
    assert!(zk.check_stat(&path).await.unwrap().is_some());
    child.start_kill().unwrap(); // SIGKILL: no clean close.
    child.wait().await.unwrap();
    // The server expires the dead process's session and its node goes.
    wait_for("the dead process's node to vanish", || async {
        zk.check_stat(&path).await.unwrap().is_none().then_some(())
    })
    .await;
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_credentials_protect_the_nodes() {
    let servers = zk_servers("digest_credentials");
    let root = root();
    let cfg = config(&servers, &root)
        .with_credentials("weft", "s3cret")
        .unwrap();
    let reg = Registry::connect(cfg);
    let url = reg.publish(&provider(24001)).await.unwrap();
    let providers_path = format!("{root}/{}/providers", encode_component(IFACE));
    let zk = probe(&servers).await;
    let authed = probe(&servers).await;
    authed
        .auth("digest".into(), b"weft:s3cret".to_vec())
        .await
        .unwrap();
    let (acl, _) = authed
        .get_acl(&format!("{providers_path}/{}", url.to_node_name()))
        .await
        .unwrap();
    assert_eq!(acl.len(), 1);
    assert_eq!(acl[0].scheme(), "digest");
    assert!(acl[0].id().starts_with("weft:"), "{}", acl[0].id());
    // Without the credentials the providers cannot be listed.
    match zk.list_children(&providers_path).await {
        Err(zookeeper_client::Error::NoAuth) => {}
        other => panic!("expected NoAuth, got {other:?}"),
    }
    // With them they can.
    assert_eq!(
        authed.list_children(&providers_path).await.unwrap().len(),
        1
    );
    reg.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_down_is_a_bounded_unavailable_error() {
    let port = weft_tests::free_port();
    let servers = format!("127.0.0.1:{port}");
    let mut cfg = config(&servers, "/dubbo");
    cfg.request_timeout = Duration::from_secs(2);
    let reg = Registry::connect(cfg);
    let checks = async {
        match reg.publish(&provider(25001)).await {
            Err(e @ RegistryError::Unavailable { .. }) => {
                assert!(e.to_string().contains(&servers), "{e}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(
            reg.published().is_empty(),
            "a failed publish stays registered"
        );
        match reg.subscribe(&ConsumerSpec::new(IFACE, "127.0.0.1")).await {
            Err(e @ RegistryError::Unavailable { .. }) => {
                assert!(e.to_string().contains(&servers), "{e}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            reg.lookup(IFACE, "", ""),
            Err(LookupError::NotSubscribed { .. })
        ));
        reg.close().await;
    };
    tokio::time::timeout(Duration::from_secs(60), checks)
        .await
        .expect("the registry hung while ZooKeeper was down");
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_per_address() {
    let servers = zk_servers("one_session_per_address");
    let root = root();
    let all = Registries::new();
    let a = all.get_or_connect(config(&servers, &root)).unwrap();
    let b = all.get_or_connect(config(&servers, &root)).unwrap();
    a.publish(&provider(26001)).await.unwrap();
    let mut other = provider(26002);
    other.interface = "dev.weft.test.Other".into();
    b.publish(&other).await.unwrap();
    assert_eq!(a.session().unwrap().id(), b.session().unwrap().id());
    assert_eq!(a.published().len(), 2, "both services on one registry");
    match all.get_or_connect(config(&servers, &root).with_credentials("u", "p").unwrap()) {
        Err(RegistryError::BadConfig { field, reason }) => {
            assert_eq!(field, "username", "{reason}")
        }
        other => panic!("expected a credentials mismatch, got {other:?}"),
    }
    assert!(matches!(
        all.get_or_connect(config(&servers, "/elsewhere")),
        Err(RegistryError::BadConfig { field: "root", .. })
    ));
    assert!(all.get(&servers).is_some());
    all.close_all().await;
    let zk = probe(&servers).await;
    assert!(children(
        &zk,
        &format!("{root}/{}/providers", encode_component(IFACE))
    )
    .await
    .is_empty());
}
