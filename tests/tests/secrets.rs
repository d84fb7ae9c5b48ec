//! The secrets building block of real `weft` processes: GetSecret and
//! GetBulkSecret over gRPC and shared memory on `secretstores.local.file`
//! and `secretstores.local.env`, the app's secret scopes, bad inputs, and
//! `secretKeyRef` in component files (a PostgreSQL state store whose
//! password comes from a secret store; refusals that name the field and
//! never print a secret).

use std::path::Path;

use tonic::Code;
use weft_proto::common::StateItem;
use weft_proto::runtime as pb;
use weft_shm::{method as m, Client, ClientOptions};
use weft_tests::{free_ports, run_to_exit, write_component, Weft, WeftOptions};

const SECRETS: &str =
    r#"{"db": {"password": "pa55-w0rd"}, "token": "tok-123", "internal": "hidden-value"}"#;

fn secrets_file(dir: &Path) -> String {
    let path = dir.join("secrets.json");
    std::fs::write(&path, SECRETS).unwrap();
    path.to_string_lossy().into_owned()
}

/// A Dapr Configuration limiting `vault`: everything but `internal`.
fn scopes_config(dir: &Path) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: scoped\nspec:\n  secrets:\n    scopes:\n      - storeName: vault\n        defaultAccess: allow\n        deniedSecrets: [\"internal\"]\n",
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn get(store: &str, key: &str) -> pb::GetSecretRequest {
    pb::GetSecretRequest {
        store_name: store.into(),
        key: key.into(),
        metadata: Default::default(),
    }
}

#[tokio::test]
async fn secrets_are_served_over_grpc_and_shm_within_the_apps_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("components");
    std::fs::create_dir_all(&res).unwrap();
    write_component(
        &res,
        "vault",
        "secretstores.local.file",
        &[("secretsFile", &secrets_file(dir.path()))],
    );
    write_component(
        &res,
        "envsecrets",
        "secretstores.local.env",
        &[("prefix", "WEFT_E2E_SECRET_")],
    );
    let shm = dir.path().join("shm.sock");
    let weft = Weft::start(
        WeftOptions::new("secrets-app")
            .resources(&res)
            .arg("--shm-socket")
            .arg(&shm.to_string_lossy())
            .arg("--config")
            .arg(&scopes_config(dir.path()))
            .env("WEFT_E2E_SECRET_API_KEY", "k-789"),
    )
    .await
    .expect("start weft");
    let mut c = weft.client().await;

    // One secret; nested keys joined with ':' as Dapr's file store does.
    let r = c
        .get_secret(get("vault", "db:password"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.data.get("db:password").map(String::as_str),
        Some("pa55-w0rd")
    );
    assert_eq!(r.data.len(), 1);
    let r = c
        .get_secret(get("envsecrets", "API_KEY"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.data.get("API_KEY").map(String::as_str), Some("k-789"));

    // Bulk: every secret the scopes allow, and not the denied one.
    let bulk = c
        .get_bulk_secret(pb::GetBulkSecretRequest {
            store_name: "vault".into(),
            metadata: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<&str> = bulk.data.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["db:password", "token"]);
    assert_eq!(bulk.data["token"].secrets["token"], "tok-123");

    // Bad inputs, each naming what is wrong.
    let e = c.get_secret(get("vault", "internal")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("internal") && e.message().contains("scopes"),
        "{e:?}"
    );
    assert!(!e.message().contains("hidden-value"), "{e:?}");
    let e = c.get_secret(get("vault", "nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("'nope'") && e.message().contains("vault"),
        "{e:?}"
    );
    let e = c.get_secret(get("nostore", "token")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("nostore") && e.message().contains("envsecrets, vault"),
        "{e:?}"
    );
    let e = c.get_secret(get("", "token")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("store_name"), "{e:?}");
    let e = c.get_secret(get("vault", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("key"), "{e:?}");
    let e = c
        .get_bulk_secret(pb::GetBulkSecretRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The same answers over shared memory.
    let (r, denied, missing) = tokio::task::spawn_blocking(move || {
        let mut s = Client::connect(&shm, ClientOptions::new("secrets-app")).expect("shm session");
        let r: pb::GetSecretResponse = s.unary(m::GET_SECRET, &get("vault", "token")).unwrap();
        let denied = s
            .unary::<_, pb::GetSecretResponse>(m::GET_SECRET, &get("vault", "internal"))
            .unwrap_err();
        let missing = s
            .unary::<_, pb::GetSecretResponse>(m::GET_SECRET, &get("nostore", "x"))
            .unwrap_err();
        (r, denied, missing)
    })
    .await
    .unwrap();
    assert_eq!(r.data["token"], "tok-123");
    assert_eq!(denied.code, Code::PermissionDenied as u32, "{denied}");
    assert_eq!(missing.code, Code::InvalidArgument as u32, "{missing}");

    // Secret values never reach the runtime's log.
    let logs = weft.logs();
    for value in ["pa55-w0rd", "tok-123", "hidden-value", "k-789"] {
        assert!(!logs.contains(value), "the log shows a secret:\n{logs}");
    }
}

/// A component file whose `connectionString` comes from a secret store.
fn pg_component(dir: &Path, name: &str, table: &str, secret: &str, store: Option<&str>) {
    let auth = store
        .map(|s| format!("auth:\n  secretStore: {s}\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join(format!("{name}.yaml")),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.postgresql\n  version: v1\n  metadata:\n    - name: connectionString\n      secretKeyRef:\n        name: {secret}\n        key: {secret}\n    - name: tableName\n      value: {table}\n{auth}"
        ),
    )
    .unwrap();
}

fn pg_password_url() -> String {
    let url = weft_tests::pg_url();
    let user = std::env::var("WEFT_TEST_PG_PASSWORD_USER")
        .expect("WEFT_TEST_PG_PASSWORD_USER (scripts/services.sh env)");
    let password = std::env::var("WEFT_TEST_PG_PASSWORD")
        .expect("WEFT_TEST_PG_PASSWORD (scripts/services.sh env)");
    // postgres://weft@host:port/db → postgres://<user>:<password>@host:port/db
    let rest = url
        .split_once('@')
        .expect("user@host in WEFT_TEST_PG_URL")
        .1;
    format!("postgres://{user}:{password}@{rest}")
}

#[cfg_attr(
    weft_no_pg,
    ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test]
async fn a_postgresql_store_takes_its_password_from_a_secret_store() {
    let good = pg_password_url();
    let bad = good.replace(
        &std::env::var("WEFT_TEST_PG_PASSWORD").unwrap(),
        "not-the-password",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.json");
    std::fs::write(
        &path,
        serde_json::json!({"pg": good, "pgwrong": bad}).to_string(),
    )
    .unwrap();
    let res = dir.path().join("components");
    std::fs::create_dir_all(&res).unwrap();
    write_component(
        &res,
        "vault",
        "secretstores.local.file",
        &[("secretsFile", &path.to_string_lossy())],
    );
    let table = format!("secret_e2e_{}", std::process::id());
    pg_component(&res, "pgstate", &table, "pg", Some("vault"));
    pg_component(&res, "pgwrong", &table, "pgwrong", None);
    let weft = Weft::start(WeftOptions::new("pg-secret").resources(&res))
        .await
        .expect("start weft");
    let mut c = weft.client().await;
    c.save_state(pb::SaveStateRequest {
        store_name: "pgstate".into(),
        states: vec![StateItem {
            key: "k".into(),
            value: b"v".to_vec(),
            ..Default::default()
        }],
    })
    .await
    .expect("save through the role that needs its password");
    let got = c
        .get_state(pb::GetStateRequest {
            store_name: "pgstate".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.data, b"v");
    // The same role with a wrong password is refused by the server: the
    // password really is checked, and the one from the secret store is it.
    let e = c
        .get_state(pb::GetStateRequest {
            store_name: "pgwrong".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("pgwrong") && e.message().contains("password authentication failed"),
        "{e:?}"
    );
    let password = std::env::var("WEFT_TEST_PG_PASSWORD").unwrap();
    assert!(
        !e.message().contains(&password) && !e.message().contains("not-the-password"),
        "{e:?}"
    );
    assert!(
        !weft.logs().contains(&password),
        "the log shows the password"
    );
}

#[test]
fn bad_secret_key_refs_stop_the_runtime_naming_the_field_and_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path());
    let case = |name: &str, components: &[(&str, &str)]| {
        let res = dir.path().join(name);
        std::fs::create_dir_all(&res).unwrap();
        for (file, text) in components {
            std::fs::write(res.join(file), text).unwrap();
        }
        let data = dir.path().join(format!("{name}-data"));
        let [grpc, http] = free_ports().map(|p| p.to_string());
        let (status, out) = run_to_exit(&[
            "run",
            "--app-id",
            "bad-secrets",
            "--grpc-port",
            &grpc,
            "--http-port",
            &http,
            "--no-shm",
            "--data-dir",
            &data.to_string_lossy(),
            "--resources-path",
            &res.to_string_lossy(),
        ]);
        assert!(!status.success(), "{name}: weft started:\n{out}");
        assert!(
            !out.contains("pa55-w0rd") && !out.contains("tok-123"),
            "{name}: {out}"
        );
        out
    };
    let vault = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: vault}}\nspec:\n  type: secretstores.local.file\n  metadata: [{{name: secretsFile, value: \"{secrets}\"}}]\n"
    );
    let state = |secret: &str, key: &str, auth: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: store}}\nspec:\n  type: state.sqlite\n  metadata: [{{name: databasePath, secretKeyRef: {{name: \"{secret}\", key: \"{key}\"}}}}]\n{auth}"
        )
    };

    let out = case(
        "missing-secret",
        &[("a.yaml", &vault), ("b.yaml", &state("nope", "nope", ""))],
    );
    assert!(
        out.contains("databasePath") && out.contains("'nope'") && out.contains("store"),
        "{out}"
    );
    let out = case(
        "wrong-key",
        &[("a.yaml", &vault), ("b.yaml", &state("token", "other", ""))],
    );
    assert!(
        out.contains("databasePath") && out.contains("no value 'other'"),
        "{out}"
    );
    let out = case(
        "unknown-store",
        &[
            ("a.yaml", &vault),
            (
                "b.yaml",
                &state("token", "token", "auth: {secretStore: kms}\n"),
            ),
        ],
    );
    assert!(
        out.contains("'kms'") && out.contains("secret stores: vault"),
        "{out}"
    );
    let out = case("no-store", &[("b.yaml", &state("token", "token", ""))]);
    assert!(
        out.contains("databasePath") && out.contains("none is configured"),
        "{out}"
    );
    let bad_file = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: vault}\nspec:\n  type: secretstores.local.file\n  metadata: [{name: secretsFile, value: /no/such/secrets.json}]\n";
    let out = case("unreadable", &[("a.yaml", bad_file)]);
    assert!(
        out.contains("secretsFile") && out.contains("/no/such/secrets.json"),
        "{out}"
    );
}
