//! The `weft` command line: version, help, and refusing to start on bad
//! configuration with the file, component and field named.

use weft_tests::{free_port, free_ports, run_to_exit, write_component};

#[test]
fn version_and_help() {
    let (status, out) = run_to_exit(&["--version"]);
    assert!(status.success(), "{out}");
    assert!(out.starts_with("weft "), "{out}");
    let (status, out) = run_to_exit(&["run", "--help"]);
    assert!(status.success(), "{out}");
    for flag in [
        "--app-id",
        "--resources-path",
        "--grpc-port",
        "--http-port",
        "--uds",
        "--app-port",
        "--data-dir",
        "DAPR_GRPC_PORT",
    ] {
        assert!(out.contains(flag), "help lacks {flag}:\n{out}");
    }
}

#[test]
fn missing_app_id_is_a_usage_error() {
    let (status, out) = run_to_exit(&["run"]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("--app-id"), "{out}");
}

fn start_with_resources(
    files: &[(&str, &str)],
) -> (std::process::ExitStatus, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let data = dir.path().join("data");
    let [grpc, http] = free_ports().map(|p| p.to_string());
    let (status, out) = run_to_exit(&[
        "run",
        "--app-id",
        "cli-test",
        "--resources-path",
        dir.path().to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--grpc-port",
        &grpc,
        "--http-port",
        &http,
    ]);
    (status, out, dir)
}

#[test]
fn unknown_component_type_is_refused() {
    let (status, out, _d) = start_with_resources(&[(
        "cache.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: state.redis\n  version: v1\n",
    )]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("cache.yaml") && out.contains("'cache'") && out.contains("state.redis"),
        "{out}"
    );
    assert!(
        out.contains("state.sqlite"),
        "should list the known types: {out}"
    );
}

#[test]
fn bad_yaml_is_refused_naming_the_file() {
    let (status, out, _d) = start_with_resources(&[("broken.yaml", "apiVersion: [unclosed\n")]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("broken.yaml") && out.contains("invalid YAML"),
        "{out}"
    );
}

#[test]
fn missing_required_field_is_refused_naming_it() {
    let (status, out, _d) = start_with_resources(&[(
        "pg.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pgstore\nspec:\n  type: state.postgresql\n  version: v1\n  metadata: []\n",
    )]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("pg.yaml") && out.contains("'pgstore'") && out.contains("connectionString"),
        "{out}"
    );

    let (status, out, _d) = start_with_resources(&[(
        "noname.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {}\nspec:\n  type: state.sqlite\n",
    )]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("noname.yaml") && out.contains("metadata.name"),
        "{out}"
    );
}

#[test]
fn malformed_field_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_component(
        dir.path(),
        "s",
        "state.sqlite",
        &[("tableName", "drop table; --")],
    );
    let text = std::fs::read_to_string(dir.path().join("s.yaml")).unwrap();
    let (status, out, _d) = start_with_resources(&[("s.yaml", &text)]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("s.yaml") && out.contains("tableName"), "{out}");
}

#[test]
fn port_in_use_is_named() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let data = tempfile::tempdir().unwrap();
    let http = free_port().to_string();
    let (status, out) = run_to_exit(&[
        "run",
        "--app-id",
        "cli-test",
        "--grpc-port",
        &port,
        "--http-port",
        &http,
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("--grpc-port") && out.contains(&port), "{out}");
}

#[test]
fn missing_resources_dir_is_named() {
    let data = tempfile::tempdir().unwrap();
    let [grpc, http] = free_ports().map(|p| p.to_string());
    let (status, out) = run_to_exit(&[
        "run",
        "--app-id",
        "cli-test",
        "--resources-path",
        "/nonexistent/weft-resources",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--grpc-port",
        &grpc,
        "--http-port",
        &http,
    ]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("/nonexistent/weft-resources"), "{out}");
}
