//! Runs the state conformance suite on every backend, and checks the
//! factory's configuration errors.
//!
//! One test per check per backend (`state_conformance!`). PostgreSQL: set
//! `WEFT_TEST_PG_URL` (e.g. `postgres://weft@127.0.0.1:55432/weft`, from
//! `scripts/services.sh env`) when building the tests. Without it the
//! PostgreSQL tests are reported as ignored, with the reason, except when
//! `CI` or `WEFT_REQUIRE_SERVICES` is set: then they run and fail, so a CI
//! job cannot skip them. Each test uses its own table and drops it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_components::state::{self, conformance, Consistency, StateError, StateStore};
use weft_components::{state_conformance, ComponentError, InitContext, Metadata};

fn ctx(dir: &std::path::Path) -> InitContext {
    InitContext {
        data_dir: dir.to_path_buf(),
        app_id: "state-test".to_string(),
    }
}

fn md(name: &str, kind: &str, fields: &[(&str, &str)]) -> Metadata {
    Metadata::new(
        name,
        kind,
        fields.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

async fn create(md: &Metadata, ctx: &InitContext) -> Arc<dyn StateStore> {
    match state::create(md, ctx).await {
        Ok(store) => store,
        Err(e) => panic!("creating {} failed: {e}", md.kind()),
    }
}

async fn create_err(md: &Metadata, ctx: &InitContext) -> ComponentError {
    match state::create(md, ctx).await {
        Ok(_) => panic!("creating {} should have failed", md.kind()),
        Err(e) => e,
    }
}

/// A fresh in-memory store.
async fn memory() -> Arc<dyn StateStore> {
    let dir = tempfile::tempdir().unwrap();
    create(&md("mem", "state.in-memory", &[]), &ctx(dir.path())).await
}

/// A SQLite store in a file of its own (the default path, checked once).
struct SqliteFile {
    store: Arc<dyn StateStore>,
    dir: tempfile::TempDir,
}

async fn sqlite_file() -> SqliteFile {
    let dir = tempfile::tempdir().unwrap();
    let store = create(&md("lite", "state.sqlite", &[]), &ctx(dir.path())).await;
    SqliteFile { store, dir }
}

#[async_trait::async_trait]
impl conformance::StateFixture for SqliteFile {
    fn store(&self) -> &dyn StateStore {
        self.store.as_ref()
    }

    async fn finish(self) {
        self.store.close().await;
        assert!(
            self.dir.path().join("state-lite.db").exists(),
            "the default database file is <data dir>/state-<component>.db"
        );
    }
}

/// SQLite in memory, with its own table name.
async fn sqlite_in_memory() -> Arc<dyn StateStore> {
    let dir = tempfile::tempdir().unwrap();
    let fields = [("databasePath", ":memory:"), ("tableName", "kv")];
    create(&md("litemem", "state.sqlite", &fields), &ctx(dir.path())).await
}

state_conformance!(memory, memory());
state_conformance!(sqlite_file, sqlite_file());
state_conformance!(sqlite_in_memory, sqlite_in_memory());
state_conformance!(
    #[cfg_attr(
        weft_no_pg,
        ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
    )]
    postgres,
    postgres_store()
);

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested-name.db");
    let path = path.to_str().unwrap();
    let fields = [
        ("databasePath", path),
        ("tableName", "my_state"),
        ("busyTimeout", "2s"),
    ];
    let definition = md("persist", "state.sqlite", &fields);

    let store = create(&definition, &ctx(dir.path())).await;
    store
        .set(state::SetRequest {
            key: "k".into(),
            value: vec![0, 1, 2, 255],
            ..Default::default()
        })
        .await
        .unwrap();
    let written = store.get("k", Consistency::Strong).await.unwrap().unwrap();
    store.close().await;
    drop(store);

    let store = create(&definition, &ctx(dir.path())).await;
    let read = store.get("k", Consistency::Strong).await.unwrap();
    assert_eq!(read, Some(written), "data must survive reopening the file");
    store.close().await;
}

#[tokio::test]
async fn sqlite_bad_table_name_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["state; DROP TABLE x", "1abc", "a.b", "sqlite_master"] {
        let err = create_err(
            &md("lite", "state.sqlite", &[("tableName", bad)]),
            &ctx(dir.path()),
        )
        .await;
        assert!(
            matches!(&err, ComponentError::InvalidField { field, .. } if field == "tableName"),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("'tableName'"), "{err}");
        assert!(err.to_string().contains("'lite'"), "{err}");
    }
    let err = create_err(
        &md("lite", "state.sqlite", &[("busyTimeout", "soon")]),
        &ctx(dir.path()),
    )
    .await;
    assert!(err.to_string().contains("'busyTimeout'"), "{err}");
}

#[tokio::test]
async fn sqlite_unopenable_path_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("x.db");
    let err = create_err(
        &md(
            "lite",
            "state.sqlite",
            &[("databasePath", path.to_str().unwrap())],
        ),
        &ctx(dir.path()),
    )
    .await;
    assert!(err.to_string().contains("'databasePath'"), "{err}");
}

#[tokio::test]
async fn postgres_without_connection_string_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let err = create_err(&md("pg", "state.postgresql", &[]), &ctx(dir.path())).await;
    assert!(
        matches!(&err, ComponentError::MissingField { field, .. } if field == "connectionString"),
        "{err}"
    );
    assert!(err.to_string().contains("connectionString"), "{err}");
}

#[tokio::test]
async fn postgres_bad_settings_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let url = ("connectionString", "postgres://weft@127.0.0.1:1/weft");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("connectionString", "nonsense")], "connectionString"),
        (
            &[("connectionString", "host=x password=hunter2 color=blue")],
            "connectionString",
        ),
        (&[url, ("tableName", "a.b.c")], "tableName"),
        (&[url, ("maxConns", "0")], "maxConns"),
        (&[url, ("timeout", "later")], "timeout"),
    ];
    for (fields, field) in cases {
        let err = create_err(&md("pg", "state.postgresql", fields), &ctx(dir.path())).await;
        assert!(err.to_string().contains(&format!("'{field}'")), "{err}");
        assert!(
            !err.to_string().contains("hunter2"),
            "leaks a password: {err}"
        );
    }
}

#[tokio::test]
async fn postgres_down_server_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let fields = [("connectionString", "postgres://weft@127.0.0.1:1/weft")];
    let started = Instant::now();
    let store = create(&md("pg", "state.postgresql", &fields), &ctx(dir.path())).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "creating the store must not wait for the server"
    );

    let bound = Duration::from_secs(30);
    let get = tokio::time::timeout(bound, store.get("k", Consistency::Strong))
        .await
        .unwrap_or_else(|_| panic!("get did not answer within {bound:?}"));
    assert!(matches!(get, Err(StateError::Unavailable(_))), "{get:?}");
    let set = tokio::time::timeout(
        bound,
        store.set(state::SetRequest {
            key: "k".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("set did not answer within {bound:?}"));
    assert!(matches!(set, Err(StateError::Unavailable(_))), "{set:?}");
    let ping = tokio::time::timeout(bound, store.ping())
        .await
        .unwrap_or_else(|_| panic!("ping did not answer within {bound:?}"));
    assert!(matches!(ping, Err(StateError::Unavailable(_))), "{ping:?}");
}

/// The test server's URL. Tests that call this are ignored when the
/// build saw no server (build/services.rs), so here it must be set.
fn pg_url() -> String {
    match std::env::var("WEFT_TEST_PG_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "WEFT_TEST_PG_URL is not set: start the test PostgreSQL (scripts/services.sh start postgres) and export its environment (scripts/services.sh env)"
        ),
    }
}

/// A PostgreSQL store on a table of its own, dropped afterwards.
struct PgStore {
    store: Arc<dyn StateStore>,
    url: String,
    table: String,
}

async fn postgres_store() -> PgStore {
    let url = pg_url();
    let dir = tempfile::tempdir().unwrap();
    let table = format!("weft_state_test_{}", uuid::Uuid::new_v4().simple());
    let fields = [
        ("connectionString", url.as_str()),
        ("tableName", table.as_str()),
        ("maxConns", "8"),
    ];
    let store = create(&md("pg", "state.postgresql", &fields), &ctx(dir.path())).await;
    store.ping().await.expect("ping the test server");
    PgStore { store, url, table }
}

#[async_trait::async_trait]
impl conformance::StateFixture for PgStore {
    fn store(&self) -> &dyn StateStore {
        self.store.as_ref()
    }

    async fn finish(self) {
        self.store.close().await;
        drop_table(&self.url, &self.table).await;
    }
}

async fn drop_table(url: &str, table: &str) {
    match sqlx::PgPool::connect(url).await {
        Ok(pool) => {
            if let Err(e) = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                .execute(&pool)
                .await
            {
                eprintln!("could not drop test table {table}: {e}");
            }
            pool.close().await;
        }
        Err(e) => eprintln!("could not drop test table {table}: {e}"),
    }
}

#[cfg_attr(
    weft_no_pg,
    ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_schema_qualified_table_and_key_value_dsn() {
    let url = pg_url();
    let dir = tempfile::tempdir().unwrap();
    let table = format!("public.weft_state_test_{}", uuid::Uuid::new_v4().simple());
    let fields = [("connectionString", url.as_str()), ("tableName", &table)];
    let store = create(&md("pg", "state.postgresql", &fields), &ctx(dir.path())).await;
    conformance::etag_first_write(store.as_ref()).await;
    conformance::transaction_is_all_or_nothing(store.as_ref()).await;
    store.close().await;

    // The same server through a key=value string, when the URL is simple
    // enough to translate here.
    if let Some(dsn) = url_to_dsn(&url) {
        let fields = [("connectionString", dsn.as_str()), ("tableName", &table)];
        let store = create(&md("pg", "state.postgresql", &fields), &ctx(dir.path())).await;
        conformance::round_trip_binary_values(store.as_ref()).await;
        store.close().await;
    }
    drop_table(&url, &table).await;
}

/// `postgres://user@host:port/db` as `host=… port=… user=… dbname=…`.
fn url_to_dsn(url: &str) -> Option<String> {
    let rest = url.strip_prefix("postgres://")?;
    let (user, rest) = rest.split_once('@')?;
    let (hostport, db) = rest.split_once('/')?;
    let (host, port) = hostport.split_once(':')?;
    if user.contains(':') || db.contains('?') {
        return None;
    }
    Some(format!("host={host} port={port} user={user} dbname={db}"))
}
