//! The shared-memory transport of a real `weft` process: every implemented
//! RPC answers as over gRPC, server streams, cancellation, liveness,
//! reconnection, stale-segment sweeping, idle CPU, and hostile peers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use weft_proto::common::StateItem;
use weft_proto::runtime as pb;
use weft_shm::method as m;
use weft_shm::{code, Client, ClientOptions, IdleConfig, Status};
use weft_tests::{write_component, Weft, WeftOptions};

struct Env {
    rt: tokio::runtime::Runtime,
    weft: Weft,
    dir: tempfile::TempDir,
    socket: PathBuf,
    seg_dir: PathBuf,
    config_file: PathBuf,
}

fn start_with(app: &str, extra: &[&str], dir: Option<tempfile::TempDir>) -> Env {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let res = dir.path().join("resources");
    let seg_dir = dir.path().join("segments");
    let config_file = dir.path().join("settings.yaml");
    if !res.exists() {
        std::fs::create_dir_all(&res).unwrap();
        std::fs::create_dir_all(&seg_dir).unwrap();
        std::fs::write(&config_file, "color: blue\nsize: 3\n").unwrap();
        write_component(&res, "statestore", "state.in-memory", &[]);
        write_component(
            &res,
            "configstore",
            "configuration.file",
            &[("path", config_file.to_str().unwrap())],
        );
    }
    let socket = dir.path().join("shm.sock");
    let mut opts = WeftOptions::new(app)
        .resources(&res)
        .arg("--shm-socket")
        .arg(socket.to_str().unwrap())
        .arg("--shm-dir")
        .arg(seg_dir.to_str().unwrap());
    for a in extra {
        opts = opts.arg(a);
    }
    let weft = rt.block_on(Weft::start(opts)).unwrap();
    Env {
        rt,
        weft,
        dir,
        socket,
        seg_dir,
        config_file,
    }
}

fn start(app: &str) -> Env {
    start_with(app, &[], None)
}

fn opts(app: &str) -> ClientOptions {
    let mut o = ClientOptions::new(app);
    o.call_timeout = Duration::from_secs(20);
    o
}

fn get(key: &str) -> pb::GetStateRequest {
    pb::GetStateRequest {
        store_name: "statestore".into(),
        key: key.into(),
        ..Default::default()
    }
}

fn save(key: &str, value: &[u8]) -> pb::SaveStateRequest {
    pb::SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![StateItem {
            key: key.into(),
            value: value.to_vec(),
            ..Default::default()
        }],
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// GetState's in-place path (a plain request read where it lies, the
/// answer written from the store's bytes) answers exactly as gRPC and as
/// the ordinary path (the same request with metadata, which that path
/// leaves to the decoder): values of every shape, TTL metadata, missing
/// keys, and the errors of bad requests.
#[test]
fn get_state_in_place_answers_as_the_ordinary_path_and_grpc() {
    let env = start("shm-get-in-place");
    let mut c = Client::connect(&env.socket, opts("shm-get-in-place")).unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let items = [
        ("plain", b"hello".to_vec(), None),
        ("empty", Vec::new(), None),
        ("binary", vec![0, 255, 0xc3, 0x28, 0x80], None),
        ("big", big, None),
        ("ttl", b"expires".to_vec(), Some("300")),
    ];
    for (key, value, ttl) in &items {
        let mut item = StateItem {
            key: (*key).into(),
            value: value.clone(),
            ..Default::default()
        };
        if let Some(ttl) = ttl {
            item.metadata.insert("ttlInSeconds".into(), (*ttl).into());
        }
        c.unary::<_, ()>(
            m::SAVE_STATE,
            &pb::SaveStateRequest {
                store_name: "statestore".into(),
                states: vec![item],
            },
        )
        .unwrap();
    }
    let mut g = env.rt.block_on(env.weft.client());
    let ordinary = |key: &str| pb::GetStateRequest {
        metadata: [("contentType".to_string(), "x".to_string())].into(),
        ..get(key)
    };
    for key in ["plain", "empty", "binary", "big", "ttl", "missing"] {
        let in_place: pb::GetStateResponse = c.unary(m::GET_STATE, &get(key)).unwrap();
        let decoded: pb::GetStateResponse = c.unary(m::GET_STATE, &ordinary(key)).unwrap();
        let grpc = env.rt.block_on(g.get_state(get(key))).unwrap().into_inner();
        assert_eq!(in_place, decoded, "{key}");
        assert_eq!(in_place, grpc, "{key}");
        match items.iter().find(|i| i.0 == key) {
            Some((_, value, ttl)) => {
                assert_eq!(&in_place.data, value, "{key}");
                assert!(!in_place.etag.is_empty(), "{key}");
                assert_eq!(
                    in_place.metadata.contains_key("ttlExpireTime"),
                    ttl.is_some(),
                    "{key}: {:?}",
                    in_place.metadata
                );
            }
            None => assert_eq!(in_place, pb::GetStateResponse::default()),
        }
    }
    // Bad requests: the in-place path declines them and they get the
    // ordinary path's errors, which are gRPC's.
    for (store, key) in [
        ("nope", "k"),
        ("", "k"),
        ("statestore", ""),
        ("statestore", "a||b"),
    ] {
        let req = pb::GetStateRequest {
            store_name: store.into(),
            key: key.into(),
            ..Default::default()
        };
        let e = c
            .unary::<_, pb::GetStateResponse>(m::GET_STATE, &req)
            .unwrap_err();
        let ge = env.rt.block_on(g.get_state(req)).unwrap_err();
        assert_eq!(e.code, ge.code() as u32, "{store}/{key}: {e}");
        assert_eq!(e.message, ge.message(), "{store}/{key}");
    }
    // The session is still usable after all of that.
    let got: pb::GetStateResponse = c.unary(m::GET_STATE, &get("plain")).unwrap();
    assert_eq!(got.data, b"hello");
}

#[test]
fn every_implemented_rpc_answers_as_over_grpc() {
    let env = start("shm-rpc");
    let mut c = Client::connect(&env.socket, opts("shm-rpc")).unwrap();
    // The file is unlinked as soon as both sides have mapped it (the
    // runtime does so right after reading the acknowledgement).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !segment_files(&env.seg_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            segment_files(&env.seg_dir)
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    c.unary::<_, ()>(m::SAVE_STATE, &save("k1", b"hello"))
        .unwrap();
    let got: pb::GetStateResponse = c.unary(m::GET_STATE, &get("k1")).unwrap();
    assert_eq!(got.data, b"hello");
    // Same store, same code path: gRPC sees what shared memory wrote.
    let grpc = env.rt.block_on(async {
        let mut g = env.weft.client().await;
        g.get_state(get("k1")).await.unwrap().into_inner()
    });
    assert_eq!(grpc, got);

    let bulk: pb::GetBulkStateResponse = c
        .unary(
            m::GET_BULK_STATE,
            &pb::GetBulkStateRequest {
                store_name: "statestore".into(),
                keys: vec!["k1".into(), "none".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(bulk.items.len(), 2);
    c.unary::<_, ()>(
        m::DELETE_STATE,
        &pb::DeleteStateRequest {
            store_name: "statestore".into(),
            key: "k1".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let gone: pb::GetStateResponse = c.unary(m::GET_STATE, &get("k1")).unwrap();
    assert!(gone.data.is_empty());
    c.unary::<_, ()>(
        m::EXECUTE_STATE_TRANSACTION,
        &pb::ExecuteStateTransactionRequest {
            store_name: "statestore".into(),
            operations: vec![pb::TransactionalStateOperation {
                operation_type: "upsert".into(),
                request: Some(StateItem {
                    key: "t".into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        },
    )
    .unwrap();
    c.unary::<_, ()>(
        m::DELETE_BULK_STATE,
        &pb::DeleteBulkStateRequest {
            store_name: "statestore".into(),
            states: vec![StateItem {
                key: "t".into(),
                ..Default::default()
            }],
        },
    )
    .unwrap();

    // Errors carry the same code and message as gRPC.
    let err = c.unary::<_, pb::GetStateResponse>(
        m::GET_STATE,
        &pb::GetStateRequest {
            store_name: "nope".into(),
            key: "k".into(),
            ..Default::default()
        },
    );
    let grpc_err = env.rt.block_on(async {
        let mut g = env.weft.client().await;
        g.get_state(pb::GetStateRequest {
            store_name: "nope".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
    });
    let err = err.unwrap_err();
    assert_eq!(err.code, grpc_err.code() as u32);
    assert_eq!(err.message, grpc_err.message());
    // Invocation is served: an empty request is refused naming the field.
    let e = c.call(m::INVOKE_SERVICE, &[]).unwrap_err();
    assert_eq!(e.code, code::INVALID_ARGUMENT, "{e}");
    assert!(e.message.contains("InvokeServiceRequest.id"), "{e}");
    // Secrets are served: an empty request names the missing field.
    let e = c.call(m::GET_SECRET, &[]).unwrap_err();
    assert_eq!(e.code, code::INVALID_ARGUMENT, "{e}");
    assert!(e.message.contains("store_name"), "{e}");
    let e = c.call(m::TRY_LOCK_ALPHA1, &[]).unwrap_err();
    assert_eq!(e.code, code::INVALID_ARGUMENT, "{e}");
    assert!(e.message.contains("store_name"), "{e}");
    let e = c.call(m::INVOKE_BINDING, &[]).unwrap_err();
    assert_eq!(e.code, code::UNIMPLEMENTED, "{e}");
    assert!(e.message.contains("bindings"), "{e}");

    let md: pb::GetMetadataResponse = c
        .unary(m::GET_METADATA, &pb::GetMetadataRequest::default())
        .unwrap();
    assert_eq!(md.id, "shm-rpc");
    c.unary::<_, ()>(
        m::SET_METADATA,
        &pb::SetMetadataRequest {
            key: "k".into(),
            value: "v".into(),
        },
    )
    .unwrap();

    let conf: pb::GetConfigurationResponse = c
        .unary(
            m::GET_CONFIGURATION,
            &pb::GetConfigurationRequest {
                store_name: "configstore".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(conf.items["color"].value, "blue");

    // A server stream: first item, a change, then unsubscribe ends it.
    let sub = pb::SubscribeConfigurationRequest {
        store_name: "configstore".into(),
        keys: vec!["color".into()],
        ..Default::default()
    };
    let stream = c
        .open_stream(m::SUBSCRIBE_CONFIGURATION, &sub.encode_to_vec())
        .unwrap();
    let first = pb::SubscribeConfigurationResponse::decode(
        &c.next_item(stream, Duration::from_secs(10))
            .unwrap()
            .unwrap()[..],
    )
    .unwrap();
    assert!(!first.id.is_empty());
    assert_eq!(first.items["color"].value, "blue");
    let tmp = env.config_file.with_extension("tmp");
    std::fs::write(&tmp, "color: red\nsize: 3\n").unwrap();
    std::fs::rename(&tmp, &env.config_file).unwrap();
    let changed = loop {
        let item = c
            .next_item(stream, Duration::from_secs(15))
            .unwrap()
            .unwrap();
        let r = pb::SubscribeConfigurationResponse::decode(&item[..]).unwrap();
        if r.items.get("color").is_some_and(|i| i.value == "red") {
            break r;
        }
    };
    assert_eq!(changed.id, first.id);
    let un: pb::UnsubscribeConfigurationResponse = c
        .unary(
            m::UNSUBSCRIBE_CONFIGURATION,
            &pb::UnsubscribeConfigurationRequest {
                store_name: "configstore".into(),
                id: first.id.clone(),
            },
        )
        .unwrap();
    assert!(un.ok, "{}", un.message);
    assert_eq!(
        c.next_item(stream, Duration::from_secs(10)).unwrap(),
        None,
        "END marker after unsubscribe"
    );

    // Cancelling a stream ends the subscription in the runtime.
    let stream = c
        .open_stream(m::SUBSCRIBE_CONFIGURATION_ALPHA1, &sub.encode_to_vec())
        .unwrap();
    let first = pb::SubscribeConfigurationResponse::decode(
        &c.next_item(stream, Duration::from_secs(10))
            .unwrap()
            .unwrap()[..],
    )
    .unwrap();
    c.cancel(stream).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let un: pb::UnsubscribeConfigurationResponse = c
            .unary(
                m::UNSUBSCRIBE_CONFIGURATION,
                &pb::UnsubscribeConfigurationRequest {
                    store_name: "configstore".into(),
                    id: first.id.clone(),
                },
            )
            .unwrap();
        if !un.ok {
            break; // already gone: the cancel ended it
        }
        assert!(
            Instant::now() < deadline,
            "cancel did not end the subscription"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Echo, large messages refused with a clear error.
    assert_eq!(c.call(m::WEFT_ECHO, b"ping").unwrap(), b"ping");
    let big = vec![7u8; c.max_request_body() + 1];
    let e = c.call(m::WEFT_ECHO, &big).unwrap_err();
    assert_eq!(e.code, code::RESOURCE_EXHAUSTED, "{e}");
    let ok = vec![7u8; 100_000];
    assert_eq!(c.call(m::WEFT_ECHO, &ok).unwrap(), ok);
    // Many calls: the rings wrap many times.
    for i in 0..20_000u32 {
        let body = vec![(i % 256) as u8; (i as usize * 13) % 3000];
        assert_eq!(c.call(m::WEFT_ECHO, &body).unwrap(), body);
    }
}

#[test]
fn handshake_checks_app_id_token_and_ring_sizes() {
    let env = start_with("shm-auth", &["--api-token", "s3cret"], None);
    let e = Client::connect(&env.socket, opts("shm-auth"))
        .err()
        .unwrap();
    assert_eq!(e.code, code::UNAUTHENTICATED, "{e}");
    let e = Client::connect(&env.socket, opts("someone-else"))
        .err()
        .unwrap();
    assert_eq!(e.code, code::PERMISSION_DENIED, "{e}");
    assert!(e.message.contains("someone-else"), "{e}");
    let mut o = opts("shm-auth");
    o.api_token = Some("s3cret".into());
    o.request_ring = 3000;
    let e = Client::connect(&env.socket, o.clone()).err().unwrap();
    assert_eq!(e.code, code::INVALID_ARGUMENT, "{e}");
    o.request_ring = 1 << 16;
    let mut c = Client::connect(&env.socket, o).unwrap();
    assert_eq!(c.call(m::WEFT_ECHO, b"x").unwrap(), b"x");
}

/// A test helper run as a child process: connects and waits to be killed.
#[test]
fn child_helper_connects_and_waits() {
    let Ok(path) = std::env::var("WEFT_SHM_TEST_CHILD_SOCKET") else {
        return; // only runs as a child of peer_killed_is_detected
    };
    let mut c = Client::connect(&path, opts("shm-live")).unwrap();
    c.call(m::WEFT_ECHO, b"hi").unwrap();
    println!("CONNECTED");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn peer_killed_is_detected_and_cleaned_up() {
    let env = start("shm-live");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_helper_connects_and_waits",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WEFT_SHM_TEST_CHILD_SOCKET", &env.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.weft.logs().contains("shared-memory session opened") {
        assert!(
            Instant::now() < deadline,
            "child did not connect:\n{}",
            env.weft.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    while !env.weft.logs().contains("app closed the connection") {
        assert!(
            Instant::now() < killed + Duration::from_secs(20),
            "kill not detected:\n{}",
            env.weft.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("peer death detected after {:?}", killed.elapsed());
    assert!(segment_files(&env.seg_dir).is_empty());
    // The runtime serves others afterwards.
    let mut c = Client::connect(&env.socket, opts("shm-live")).unwrap();
    assert_eq!(c.call(m::WEFT_ECHO, b"x").unwrap(), b"x");
}

#[test]
fn restart_makes_clients_reconnect_and_stale_segments_are_swept() {
    let env = start("shm-restart");
    let mut c = Client::connect(&env.socket, opts("shm-restart")).unwrap();
    let mut strict_opts = opts("shm-restart");
    strict_opts.reconnect = false;
    let mut strict = Client::connect(&env.socket, strict_opts).unwrap();
    c.unary::<_, ()>(m::SAVE_STATE, &save("a", b"1")).unwrap();
    let Env {
        rt,
        mut weft,
        dir,
        seg_dir,
        ..
    } = env;
    weft.signal("KILL");
    rt.block_on(weft.wait_exit(Duration::from_secs(10)))
        .unwrap();
    drop(weft);
    // A segment left by a dead runtime (a pid that cannot exist).
    let stale = seg_dir.join("weft-4000000000-1-deadbeef");
    std::fs::write(&stale, b"junk").unwrap();
    drop(rt);
    let env = start_with("shm-restart", &[], Some(dir));
    assert!(!stale.exists(), "stale segment not swept");
    // Transparent reconnect; the in-memory store starts empty again.
    let got: pb::GetStateResponse = c.unary(m::GET_STATE, &get("a")).unwrap();
    assert!(got.data.is_empty());
    // Without reconnect: a clear error, then nothing more.
    let e = strict.call(m::WEFT_ECHO, b"x").unwrap_err();
    assert_eq!(e.code, code::UNAVAILABLE, "{e}");
    // Depending on timing the old socket reads as closed or as reset.
    assert!(
        e.message.contains("session") || e.message.contains("socket"),
        "{e}"
    );
    drop(env);
    // Runtime gone for good: a clear error.
    let e = c.call(m::WEFT_ECHO, b"x").unwrap_err();
    assert_eq!(e.code, code::UNAVAILABLE, "{e}");
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn idle_session_uses_no_cpu() {
    let env = start("shm-idle");
    let mut c = Client::connect(&env.socket, opts("shm-idle")).unwrap();
    c.call(m::WEFT_ECHO, b"x").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(env.weft.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(env.weft.pid()) - before;
    eprintln!("idle runtime with an idle client used {used} clock ticks in 2 s");
    // A session spinning forever would use ~200 ticks (100 Hz).
    assert!(used < 40, "idle runtime used {used} ticks in 2 s");
    assert_eq!(c.call(m::WEFT_ECHO, b"y").unwrap(), b"y");
}

// === hostile peers ===

/// Runs `attack` on a fresh session and checks that only that session
/// ends, with a readable reason, while another keeps working.
fn hostile(env: &Env, name: &str, attack: impl FnOnce(&mut Client), expect: &str) {
    let mut o = opts(&env.weft_app());
    o.reconnect = false;
    o.idle = IdleConfig::SLEEP;
    let mut victim = Client::connect(&env.socket, o.clone()).unwrap();
    let mut bystander = Client::connect(&env.socket, o).unwrap();
    assert_eq!(victim.call(m::WEFT_ECHO, b"warm").unwrap(), b"warm");
    attack(&mut victim);
    let reason: Status = victim
        .wait_for_goodbye(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{name}: session not closed"));
    assert!(
        reason.message.contains(expect),
        "{name}: reason {reason} does not mention {expect:?}"
    );
    assert!(
        victim.call(m::WEFT_ECHO, b"x").is_err(),
        "{name}: victim still served"
    );
    assert_eq!(
        bystander.call(m::WEFT_ECHO, b"still").unwrap(),
        b"still",
        "{name}"
    );
    let got: pb::GetStateResponse = bystander.unary(m::GET_STATE, &get("x")).unwrap();
    assert!(got.data.is_empty());
}

impl Env {
    fn weft_app(&self) -> String {
        "shm-hostile".into()
    }
}

fn raw_record(length: i32, kind: i32, payload: &[u8]) -> Vec<u8> {
    let mut v = length.to_le_bytes().to_vec();
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn envelope(method: u32, corr: u64, body: &[u8]) -> Vec<u8> {
    let mut v = weft_shm::record::Envelope {
        method,
        flags: 0,
        correlation: corr,
        status: 0,
    }
    .encode()
    .to_vec();
    v.extend_from_slice(body);
    v
}

fn publish(c: &mut Client, bytes: &[u8], advance: u64) {
    let (tx, sock) = c.hostile_request_ring().unwrap();
    tx.hostile_publish_raw(bytes, advance);
    let _ = weft_shm::control::send_wake(sock);
}

#[test]
fn hostile_input_closes_only_that_session() {
    let env = start("shm-hostile");
    hostile(
        &env,
        "bad length",
        |c| publish(c, &raw_record(1 << 30, 1, &[0; 24]), 64),
        "length",
    );
    hostile(
        &env,
        "unknown method",
        |c| {
            let body = envelope(999_999, 77, b"");
            publish(c, &raw_record(8 + body.len() as i32, 1, &body), 32)
        },
        "unknown method id 999999",
    );
    hostile(
        &env,
        "undecodable protobuf",
        |c| {
            let body = envelope(m::GET_STATE, 78, &[0xff, 0xff, 0xff, 0xff]);
            publish(c, &raw_record(8 + body.len() as i32, 1, &body), 40)
        },
        "cannot decode the GetState request",
    );
    hostile(
        &env,
        "unknown record type",
        |c| publish(c, &raw_record(16, 42, &[0; 8]), 16),
        "unknown type 42",
    );
    hostile(
        &env,
        "tail moved backwards",
        |c| {
            let (tx, sock) = c.hostile_request_ring().unwrap();
            tx.hostile_set_tail(0);
            let _ = weft_shm::control::send_wake(sock);
        },
        "tail counter",
    );
    hostile(
        &env,
        "tail beyond the ring",
        |c| {
            let (tx, sock) = c.hostile_request_ring().unwrap();
            let far = tx.position() + (64 << 20);
            tx.hostile_set_tail(far);
            let _ = weft_shm::control::send_wake(sock);
        },
        "tail counter",
    );
    // Random bytes over the whole live segment (header, counters, data).
    for seed in 1..=5u64 {
        let mut o = opts("shm-hostile");
        o.reconnect = false;
        o.idle = IdleConfig::SLEEP;
        let mut bystander = Client::connect(&env.socket, o.clone()).unwrap();
        let mut victim = Client::connect(&env.socket, o).unwrap();
        victim.call(m::WEFT_ECHO, b"warm").unwrap();
        let seg = victim.hostile_segment().unwrap();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut junk = vec![0u8; seg.len()];
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        seg.write_bytes(0, &junk);
        let (_, sock) = victim.hostile_request_ring().unwrap();
        // The runtime may already have closed the session: ignore errors.
        let _ = weft_shm::control::send_wake(sock);
        let _ = victim.call(m::WEFT_ECHO, b"x");
        let reason = victim.wait_for_goodbye(Duration::from_secs(10));
        assert!(
            reason.is_some(),
            "seed {seed}: random bytes did not end the session"
        );
        assert_eq!(
            bystander.call(m::WEFT_ECHO, b"ok").unwrap(),
            b"ok",
            "seed {seed}"
        );
    }
    assert!(
        env.weft.logs().contains("protocol error"),
        "{}",
        env.weft.logs()
    );
    let _ = &env.dir;
}

/// GetMetadata over gRPC names the shared-memory socket, so an app that
/// knows only the gRPC address finds the fast path.
#[test]
fn grpc_metadata_names_the_shm_socket() {
    let env = start("shm-meta");
    let md = env.rt.block_on(async {
        let mut c = env.weft.client().await;
        c.get_metadata(pb::GetMetadataRequest {})
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(
        md.extended_metadata
            .get("weft.shm.socket")
            .map(String::as_str),
        Some(env.socket.to_str().unwrap()),
        "{md:?}"
    );
}
