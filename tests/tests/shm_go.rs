//! The Go program in tests/go-shm (standard library only, no cgo) checks
//! the protocol's test vectors, then does the handshake, a SaveState and a
//! GetState over shared memory against a real `weft`. Skipped, with a
//! message, when `go` is not installed (it is on CI).

use std::path::Path;
use std::process::Command;

use weft_tests::{write_component, Weft, WeftOptions};

fn go_available() -> bool {
    Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn go_client_passes_vectors_and_reads_state_over_shm() {
    if !go_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "go is not installed under CI"
        );
        eprintln!("go is not installed: skipping the Go shared-memory client test");
        return;
    }
    let go_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("go-shm");
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/shm-vectors/v1.json");

    let fmt = Command::new("gofmt")
        .arg("-l")
        .arg(".")
        .current_dir(&go_dir)
        .output()
        .unwrap();
    assert!(
        fmt.status.success() && fmt.stdout.is_empty(),
        "gofmt: {}",
        String::from_utf8_lossy(&fmt.stdout)
    );
    let vet = Command::new("go")
        .args(["vet", "./..."])
        .current_dir(&go_dir)
        .output()
        .unwrap();
    assert!(
        vet.status.success(),
        "go vet: {}",
        String::from_utf8_lossy(&vet.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir(&res).unwrap();
    write_component(&res, "statestore", "state.in-memory", &[]);
    let socket = dir.path().join("shm.sock");
    let weft = Weft::start(
        WeftOptions::new("go-app")
            .resources(&res)
            .arg("--shm-socket")
            .arg(socket.to_str().unwrap()),
    )
    .await
    .unwrap();

    let out = tokio::task::spawn_blocking(move || {
        Command::new("go")
            .args(["run", "."])
            .arg("-socket")
            .arg(&socket)
            .args(["-app-id", "go-app"])
            .arg("-vectors")
            .arg(&vectors)
            .current_dir(&go_dir)
            .env("GOFLAGS", "-mod=mod")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("GO-SHM OK"),
        "go-shm failed:\n{stdout}\n{stderr}\nweft:\n{}",
        weft.logs()
    );
    assert!(stdout.contains("vector stream_end ok"), "{stdout}");

    // What Go wrote over shared memory, gRPC reads back.
    let mut c = weft.client().await;
    let got = c
        .get_state(weft_proto::runtime::GetStateRequest {
            store_name: "statestore".into(),
            key: "go-key".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.data, b"written by Go");
}
