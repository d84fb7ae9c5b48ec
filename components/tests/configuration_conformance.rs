//! Configuration backends: the conformance suite on the file and PostgreSQL
//! stores, plus backend-specific behaviour.
//!
//! One test per check per backend (`configuration_conformance!`).
//! PostgreSQL tests use `WEFT_TEST_PG_URL` (e.g.
//! `postgres://weft@127.0.0.1:55432/weft`, from `scripts/services.sh env`).
//! When the tests are built without it they are reported as ignored with
//! the reason, unless `CI` or `WEFT_REQUIRE_SERVICES` is set: then they run
//! and fail. The restart test restarts that server with
//! `WEFT_TEST_PG_RESTART` (a shell command) or `$WEFT_TEST_PG_CTL restart`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use weft_components::configuration::conformance::{ConfigurationFixture, ConfigurationWriter};
use weft_components::configuration::file::FileStore;
use weft_components::configuration::postgres::PostgresStore;
use weft_components::configuration::{
    self, ConfigurationError, ConfigurationItem, ConfigurationStore, Items, DELETED_METADATA_KEY,
};
use weft_components::configuration_conformance;
use weft_components::{ComponentError, InitContext, Metadata};

fn ctx(dir: &Path) -> InitContext {
    InitContext {
        data_dir: dir.to_path_buf(),
        app_id: "test-app".into(),
    }
}

fn md(kind: &str, pairs: &[(&str, &str)]) -> Metadata {
    Metadata::new(
        "cfg",
        kind,
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

/// Waits for a message in which `key` has `value`, merging messages.
async fn expect_value(
    rx: &mut mpsc::Receiver<Items>,
    key: &str,
    value: &str,
    within: Duration,
) -> ConfigurationItem {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = HashMap::new();
    loop {
        if let Some(item) = seen
            .get(key)
            .filter(|i: &&ConfigurationItem| i.value == value)
        {
            return item.clone();
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(items)) => seen.extend(items),
            Ok(None) => panic!("subscription ended; seen {seen:?}"),
            Err(_) => panic!("{key}={value} not received within {within:?}; seen {seen:?}"),
        }
    }
}

/// Asserts nothing arrives for `key` within `quiet`.
async fn expect_nothing_for(rx: &mut mpsc::Receiver<Items>, key: &str, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(Some(items)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        assert!(
            !items.contains_key(key),
            "unexpected change for {key}: {items:?}"
        );
    }
}

// ---------------------------------------------------------------- file store

/// Rewrites the whole file on every write: usually atomically (temporary
/// file + rename, as editors do), every third write in place.
struct FileWriter {
    path: PathBuf,
    values: Mutex<BTreeMap<String, String>>,
    writes: AtomicUsize,
}

impl FileWriter {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            values: Mutex::new(BTreeMap::new()),
            writes: AtomicUsize::new(0),
        }
    }

    fn flush(&self, values: &BTreeMap<String, String>) {
        let text = format!(
            "# written by the conformance test\n{}",
            serde_yaml::to_string(values).unwrap()
        );
        if self.writes.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            std::fs::write(&self.path, text).unwrap();
        } else {
            let tmp = self
                .path
                .with_extension(format!("tmp{}", self.writes.load(Ordering::SeqCst)));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &self.path).unwrap();
        }
    }
}

#[async_trait]
impl ConfigurationWriter for FileWriter {
    async fn put(&self, key: &str, value: &str) {
        let mut v = self.values.lock().unwrap();
        v.insert(key.to_string(), value.to_string());
        self.flush(&v);
    }

    async fn delete(&self, key: &str) {
        let mut v = self.values.lock().unwrap();
        v.remove(key);
        self.flush(&v);
    }
}

async fn file_store(dir: &Path, file: &str, contents: &str) -> (FileStore, PathBuf) {
    let path = dir.join(file);
    std::fs::write(&path, contents).unwrap();
    let path_s = path.to_str().unwrap();
    let store = FileStore::from_metadata(&md("configuration.file", &[("path", path_s)]), &ctx(dir))
        .await
        .unwrap_or_else(|e| panic!("file store: {e}"));
    (store, path)
}

/// A file store on a file of its own, and the writer that edits the file.
struct FileFixture {
    store: FileStore,
    writer: FileWriter,
    _dir: tempfile::TempDir,
}

async fn file_fixture() -> FileFixture {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = file_store(dir.path(), "config.yaml", "{}\n").await;
    FileFixture {
        writer: FileWriter::new(&path),
        store,
        _dir: dir,
    }
}

#[async_trait]
impl ConfigurationFixture for FileFixture {
    fn store(&self) -> &dyn ConfigurationStore {
        &self.store
    }

    fn writer(&self) -> &dyn ConfigurationWriter {
        &self.writer
    }

    async fn finish(self) {
        self.store.close().await;
    }
}

configuration_conformance!(file, file_fixture());

#[tokio::test]
async fn file_store_through_factory_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.json");
    std::fs::write(
        &path,
        r#"{"a": "x", "n": 1.5, "o": {"value": true, "version": "v1", "metadata": {"m": 2}}}"#,
    )
    .unwrap();
    let store = configuration::create(
        &md("configuration.file", &[("path", path.to_str().unwrap())]),
        &ctx(dir.path()),
    )
    .await
    .unwrap();
    let items = store.get(&[]).await.unwrap();
    assert_eq!(items["a"].value, "x");
    assert_eq!(items["n"].value, "1.5");
    assert_eq!(items["o"].value, "true");
    assert_eq!(items["o"].version, "v1");
    assert_eq!(items["o"].metadata["m"], "2");
    store.close().await;
}

#[tokio::test]
async fn file_store_bad_file_at_start_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "good: 1\nbad: [unclosed\n").unwrap();
    let err = match FileStore::from_metadata(
        &md("configuration.file", &[("path", path.to_str().unwrap())]),
        &ctx(dir.path()),
    )
    .await
    {
        Ok(_) => panic!("a bad file must fail"),
        Err(e) => e,
    };
    assert!(matches!(err, ComponentError::Init { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    assert!(msg.contains("line"), "{msg}");

    // A structurally wrong item names the key.
    std::fs::write(&path, "items: [1, 2]\n").unwrap();
    let Err(err) = FileStore::from_metadata(
        &md("configuration.file", &[("path", path.to_str().unwrap())]),
        &ctx(dir.path()),
    )
    .await
    else {
        panic!("a list value must fail")
    };
    assert!(err.to_string().contains("'items'"), "{err}");

    // An explicit path must exist.
    let missing = dir.path().join("nope.yaml");
    let Err(err) = FileStore::from_metadata(
        &md("configuration.file", &[("path", missing.to_str().unwrap())]),
        &ctx(dir.path()),
    )
    .await
    else {
        panic!("a missing explicit file must fail")
    };
    assert!(err.to_string().contains("nope.yaml"), "{err}");

    // Bad format names the field.
    let Err(err) = FileStore::from_metadata(
        &md("configuration.file", &[("format", "toml")]),
        &ctx(dir.path()),
    )
    .await
    else {
        panic!("bad format must fail")
    };
    assert!(
        matches!(&err, ComponentError::InvalidField { field, .. } if field == "format"),
        "{err:?}"
    );
}

#[tokio::test]
async fn file_store_keeps_last_values_when_the_file_turns_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = file_store(dir.path(), "config.yaml", "a: one\nb: two\n").await;
    let mut rx = store.subscribe(&[]).await.unwrap();

    std::fs::write(&path, "a: [broken\n").unwrap();
    expect_nothing_for(&mut rx, "a", Duration::from_millis(700)).await;
    let items = store.get(&[]).await.unwrap();
    assert_eq!(items["a"].value, "one");
    assert_eq!(items["b"].value, "two");

    // An empty (truncated) or missing file is treated the same way.
    std::fs::write(&path, "").unwrap();
    std::fs::remove_file(&path).unwrap();
    expect_nothing_for(&mut rx, "a", Duration::from_millis(700)).await;
    assert_eq!(store.get(&[]).await.unwrap().len(), 2);

    // Still watching: a good file (recreated) is picked up.
    std::fs::write(&path, "a: three\nb: two\n").unwrap();
    let item = expect_value(&mut rx, "a", "three", Duration::from_secs(5)).await;
    assert_eq!(item.version.len(), 16);
    store.close().await;
    // close() ends subscriptions.
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "subscription did not end on close()");
}

#[tokio::test]
async fn file_store_pushes_changes_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = file_store(dir.path(), "config.yaml", "a: 1\nb: 1\n").await;
    let mut rx = store
        .subscribe(&["a".to_string(), "gone".to_string()])
        .await
        .unwrap();
    for (i, atomic) in [(2, true), (3, false), (4, true)] {
        let text = format!("a: {i}\nb: {i}\ngone: here\n");
        let start = Instant::now();
        if atomic {
            let tmp = dir.path().join(".config.yaml.swp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        } else {
            std::fs::write(&path, text).unwrap();
        }
        // Watch the channel only (get() would refresh the store itself).
        expect_value(&mut rx, "a", &i.to_string(), Duration::from_secs(1)).await;
        eprintln!(
            "change {i} (atomic: {atomic}) delivered after {:?}",
            start.elapsed()
        );
    }
    std::fs::write(&path, "a: 4\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let deleted = loop {
        let items = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("deletion within 1s")
            .unwrap();
        assert!(!items.contains_key("b"), "b is not subscribed");
        if let Some(i) = items.get("gone") {
            break i.clone();
        }
    };
    assert_eq!(deleted.value, "");
    assert_eq!(deleted.metadata[DELETED_METADATA_KEY], "true");
    store.close().await;
}

#[tokio::test]
async fn file_store_creates_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = configuration::create(&md("configuration.file", &[]), &ctx(&data))
        .await
        .unwrap();
    let path = data.join("configuration.yaml");
    assert!(path.exists(), "default file not created");
    let items = store.get(&["greeting".to_string()]).await.unwrap();
    assert_eq!(items["greeting"].value, "hello");
    store.close().await;

    // An existing default file is left alone.
    std::fs::write(&path, "greeting: hi\n").unwrap();
    let store = configuration::create(&md("configuration.file", &[]), &ctx(&data))
        .await
        .unwrap();
    assert_eq!(store.get(&[]).await.unwrap()["greeting"].value, "hi");
    store.close().await;
}

#[tokio::test]
async fn slow_subscriber_does_not_block_others_and_gets_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = file_store(dir.path(), "config.yaml", "k: 0\n").await;
    let mut slow = store.subscribe(&["k".to_string()]).await.unwrap();
    let mut fast = store.subscribe(&["k".to_string()]).await.unwrap();
    // Far more changes than a channel holds, none read by `slow`.
    for i in 1..=60 {
        std::fs::write(&path, format!("k: {i}\n")).unwrap();
        store.get(&[]).await.unwrap(); // refreshes synchronously: one push per write
        expect_value(&mut fast, "k", &i.to_string(), Duration::from_secs(5)).await;
    }
    let mut last = None;
    while let Ok(Some(items)) = tokio::time::timeout(Duration::from_millis(300), slow.recv()).await
    {
        last = items.get("k").map(|i| i.value.clone()).or(last);
    }
    assert_eq!(last.as_deref(), Some("60"));
    store.close().await;
}

// ------------------------------------------------------------ postgres store

/// The server-restart test holds this exclusively, other PostgreSQL tests
/// shared, so a restart never breaks a concurrently running test.
static PG_SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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

fn unique_table() -> String {
    format!(
        "weft_conf_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

struct PgWriter {
    pool: sqlx::PgPool,
    table: String,
}

#[async_trait]
impl ConfigurationWriter for PgWriter {
    async fn put(&self, key: &str, value: &str) {
        let sql = format!(
            "INSERT INTO {} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            self.table
        );
        sqlx::query(&sql)
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn delete(&self, key: &str) {
        let sql = format!("DELETE FROM {} WHERE key = $1", self.table);
        sqlx::query(&sql)
            .bind(key)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

/// A store on a fresh table, its writer, and a cleanup guard.
async fn pg_store(url: &str) -> (Arc<dyn ConfigurationStore>, PgWriter) {
    let table = unique_table();
    let store = configuration::create(
        &md(
            "configuration.postgresql",
            &[("connectionString", url), ("table", &table)],
        ),
        &ctx(Path::new("/nonexistent")),
    )
    .await
    .unwrap();
    // The schema is created on first use.
    store.get(&[]).await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap();
    (store, PgWriter { pool, table })
}

async fn drop_table(w: &PgWriter) {
    let t = &w.table;
    let sql = format!(
        "DROP TABLE IF EXISTS {t}; DROP SEQUENCE IF EXISTS {t}_version_seq; \
         DROP FUNCTION IF EXISTS {t}_weft_version(); DROP FUNCTION IF EXISTS {t}_weft_notify();"
    );
    sqlx::raw_sql(&sql).execute(&w.pool).await.unwrap();
}

/// A store on a fresh table, its writer, and the shared hold on the server.
struct PgFixture {
    store: Arc<dyn ConfigurationStore>,
    writer: PgWriter,
    _server: tokio::sync::RwLockReadGuard<'static, ()>,
}

async fn pg_fixture() -> PgFixture {
    let url = pg_url();
    let server = PG_SERVER.read().await;
    let (store, writer) = pg_store(&url).await;
    PgFixture {
        store,
        writer,
        _server: server,
    }
}

#[async_trait]
impl ConfigurationFixture for PgFixture {
    fn store(&self) -> &dyn ConfigurationStore {
        self.store.as_ref()
    }

    fn writer(&self) -> &dyn ConfigurationWriter {
        &self.writer
    }

    async fn finish(self) {
        self.store.close().await;
        drop_table(&self.writer).await;
    }
}

configuration_conformance!(
    #[cfg_attr(
        weft_no_pg,
        ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
    )]
    postgres,
    pg_fixture()
);

#[cfg_attr(
    weft_no_pg,
    ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_metadata_versions_truncate_and_big_keys() {
    let url = pg_url();
    let _server = PG_SERVER.read().await;
    let (store, writer) = pg_store(&url).await;

    // Metadata, explicit versions and writes by SQL as documented.
    let t = &writer.table;
    sqlx::query(&format!(
        "INSERT INTO {t} (key, value, metadata) VALUES ('meta', 'v', '{{\"owner\": \"team\", \"n\": 2}}')"
    ))
    .execute(&writer.pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {t} (key, value, version) VALUES ('explicit', 'v', 'my-version')"
    ))
    .execute(&writer.pool)
    .await
    .unwrap();
    let items = store
        .get(&["meta".into(), "explicit".into()])
        .await
        .unwrap();
    assert_eq!(items["meta"].metadata["owner"], "team");
    assert_eq!(items["meta"].metadata["n"], "2");
    assert_eq!(items["explicit"].version, "my-version");

    // Same value: same version. TRUNCATE reaches subscribers as deletions.
    let mut rx = store.subscribe(&[]).await.unwrap();
    let before = store.get(&["meta".into()]).await.unwrap()["meta"]
        .version
        .clone();
    writer.put("meta", "v").await;
    assert_eq!(
        store.get(&["meta".into()]).await.unwrap()["meta"].version,
        before
    );
    sqlx::query(&format!("TRUNCATE {t}"))
        .execute(&writer.pool)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = Items::new();
    while !seen
        .get("explicit")
        .is_some_and(|i| i.metadata.contains_key(DELETED_METADATA_KEY))
    {
        let items = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("truncate delivered")
            .unwrap();
        seen.extend(items);
    }
    // A huge key (beyond NOTIFY's payload limit) still works.
    let big = "k".repeat(10_000);
    writer.put(&big, "big").await;
    expect_value(&mut rx, &big, "big", Duration::from_secs(5)).await;

    store.close().await;
    drop_table(&writer).await;
}

/// The listener's connection is killed; it reconnects and delivers a change
/// made while it was disconnected (by re-reading) and later ones.
#[cfg_attr(
    weft_no_pg,
    ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_reconnects_after_connection_loss() {
    let url = pg_url();
    let _server = PG_SERVER.read().await;
    let (store, writer) = pg_store(&url).await;
    writer.put("k", "0").await;
    let mut rx = store.subscribe(&["k".to_string()]).await.unwrap();
    writer.put("k", "1").await;
    expect_value(&mut rx, "k", "1", Duration::from_secs(5)).await;

    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()",
    )
    .bind(format!("LISTEN \"weft_config_{}\"%", writer.table))
    .fetch_all(&writer.pool)
    .await
    .unwrap();
    assert_eq!(killed.len(), 1, "listener connection not found");
    // Written while the listener is (most likely) disconnected.
    writer.put("k", "2").await;
    expect_value(&mut rx, "k", "2", Duration::from_secs(10)).await;
    writer.put("k", "3").await;
    expect_value(&mut rx, "k", "3", Duration::from_secs(10)).await;

    store.close().await;
    drop_table(&writer).await;
}

/// A second store on an existing table needs no DDL privileges: a role
/// that may only read the table works (skipped if roles cannot be created).
#[cfg_attr(
    weft_no_pg,
    ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_existing_table_needs_only_read_access() {
    let url = pg_url();
    let _server = PG_SERVER.read().await;
    let (store, writer) = pg_store(&url).await;
    writer.put("k", "0").await;
    let role = format!("{}_ro", writer.table);
    let created = sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT SELECT ON {} TO {role}; REVOKE CREATE ON SCHEMA public FROM {role}",
        writer.table
    ))
    .execute(&writer.pool)
    .await;
    if let Err(e) = created {
        panic!("cannot create a read-only role on the test server: {e}");
    }
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let ro_url = format!(
        "postgres://{role}@{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("postgres")
    );
    let ro = configuration::create(
        &md(
            "configuration.postgresql",
            &[("connectionString", &ro_url), ("table", &writer.table)],
        ),
        &ctx(Path::new("/nonexistent")),
    )
    .await
    .unwrap();
    let result = async {
        assert_eq!(ro.get(&[]).await.unwrap()["k"].value, "0");
        let mut rx = ro.subscribe(&["k".to_string()]).await.unwrap();
        writer.put("k", "1").await;
        expect_value(&mut rx, "k", "1", Duration::from_secs(5)).await;
    };
    // The test server trusts local roles (scripts/services.sh initdb).
    if let Err(e) = sqlx::PgPool::connect(&ro_url).await {
        panic!("cannot connect as {role} to the test server: {e}");
    }
    result.await;
    ro.close().await;
    store.close().await;
    drop_table(&writer).await;
    let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&writer.pool)
        .await;
}

/// Restarts the server with `WEFT_TEST_PG_RESTART` while subscribed.
#[cfg_attr(
    weft_no_pg,
    ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_survives_server_restart() {
    let url = pg_url();
    let _server = PG_SERVER.write().await;
    let restart = std::env::var("WEFT_TEST_PG_RESTART").unwrap_or_else(|_| {
        let ctl = std::env::var("WEFT_TEST_PG_CTL")
            .expect("WEFT_TEST_PG_RESTART or WEFT_TEST_PG_CTL (scripts/services.sh env) names how to restart the test server");
        format!("{ctl} restart")
    });
    let (store, writer) = pg_store(&url).await;
    writer.put("k", "0").await;
    let mut rx = store.subscribe(&["k".to_string()]).await.unwrap();

    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&restart)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "restart command failed");
    // The writer's pooled connections died with the server; retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sql = format!("UPDATE {} SET value = '1' WHERE key = 'k'", writer.table);
        match sqlx::query(&sql).execute(&writer.pool).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying write after restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("server did not come back: {e}"),
        }
    }
    expect_value(&mut rx, "k", "1", Duration::from_secs(15)).await;
    writer.put("k", "2").await;
    expect_value(&mut rx, "k", "2", Duration::from_secs(5)).await;
    assert_eq!(store.get(&["k".into()]).await.unwrap()["k"].value, "2");

    store.close().await;
    drop_table(&writer).await;
}

#[tokio::test]
async fn postgres_factory_errors_name_the_field() {
    let dir = Path::new("/nonexistent");
    let kind = "configuration.postgresql";
    let err = configuration::create(&md(kind, &[]), &ctx(dir))
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(&err, ComponentError::MissingField { field, .. } if field == "connectionString"),
        "{err:?}"
    );
    assert!(err.to_string().contains("connectionString"), "{err}");

    let url = "postgres://weft@127.0.0.1:1/weft";
    for (field, value) in [
        ("table", "bad-name"),
        ("table", "x; DROP TABLE y"),
        ("table", "a.b.c"),
        ("channel", "no spaces"),
        ("maxConns", "lots"),
        ("maxConns", "0"),
    ] {
        let err = configuration::create(
            &md(kind, &[("connectionString", url), (field, value)]),
            &ctx(dir),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{field}={value} must fail"));
        assert!(
            matches!(&err, ComponentError::InvalidField { field: f, .. } if f == field),
            "{err:?}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }
    let err = configuration::create(
        &md(kind, &[("connectionString", "mysql://nope")]),
        &ctx(dir),
    )
    .await
    .err()
    .expect("a non-postgres URL must fail");
    assert!(err.to_string().contains("connectionString"), "{err}");
}

#[tokio::test]
async fn postgres_unreachable_is_unavailable() {
    let store = PostgresStore::from_metadata(
        &md(
            "configuration.postgresql",
            &[("connectionString", "postgres://weft@127.0.0.1:1/weft")],
        ),
        &ctx(Path::new("/nonexistent")),
    )
    .expect("building never connects");
    let start = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(15), store.get(&[]))
        .await
        .expect("get must give up within a bounded time")
        .unwrap_err();
    assert!(matches!(err, ConfigurationError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let err = tokio::time::timeout(Duration::from_secs(15), store.subscribe(&["k".into()]))
        .await
        .expect("subscribe must give up within a bounded time")
        .unwrap_err();
    assert!(matches!(err, ConfigurationError::Unavailable(_)), "{err:?}");
    eprintln!(
        "unreachable server reported after {:?}: {err}",
        start.elapsed()
    );
    store.close().await;
}
