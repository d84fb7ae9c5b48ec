//! Sequencer stores: the conformance suite on every backend
//! (`sequencer_conformance!`), one test per check, each opening several
//! stores over the same data as several runtimes (or a restarted one)
//! would. PostgreSQL tests use `WEFT_TEST_PG_URL` and ZooKeeper tests
//! `WEFT_TEST_ZK_SERVERS` (from `scripts/services.sh env`); without them
//! they are reported as ignored, unless `CI` or `WEFT_REQUIRE_SERVICES` is
//! set.

use std::sync::Arc;
use std::time::Duration;

use weft_components::sequencer::conformance::Open;
use weft_components::sequencer::sqlite::SqliteSequencer;
use weft_components::{sequencer_conformance, Metadata};

/// Stores over one database file.
async fn sqlite_open() -> Open {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sequencer.db");
    // The directory must outlive the stores: leak it for the test's life.
    std::mem::forget(dir);
    Arc::new(move || Arc::new(SqliteSequencer::open_at(&path, Duration::from_secs(5)).unwrap()))
}

#[cfg(feature = "postgresql")]
async fn postgres_open() -> Open {
    use weft_components::sequencer::postgres::PostgresSequencer;
    let url = std::env::var("WEFT_TEST_PG_URL")
        .expect("WEFT_TEST_PG_URL is not set: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\"");
    let md = Metadata::new(
        "sequencer",
        "sequencer.postgresql",
        [
            ("connectionString".to_string(), url),
            (
                "tableName".to_string(),
                "weft_sequences_conformance".to_string(),
            ),
        ],
    );
    Arc::new(move || Arc::new(PostgresSequencer::from_metadata(&md).unwrap()))
}

/// Each store with its own ZooKeeper session (as each runtime).
#[cfg(feature = "zookeeper")]
async fn zookeeper_open() -> Open {
    use weft_components::sequencer::zookeeper::ZookeeperSequencer;
    let servers = std::env::var("WEFT_TEST_ZK_SERVERS")
        .expect("WEFT_TEST_ZK_SERVERS is not set: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\"");
    let md = Metadata::new(
        "sequencer",
        "sequencer.zookeeper",
        [
            ("servers".to_string(), servers),
            (
                "root".to_string(),
                "/weft-sequences-conformance".to_string(),
            ),
        ],
    );
    Arc::new(move || Arc::new(ZookeeperSequencer::from_metadata(&md).unwrap()))
}

sequencer_conformance!(sqlite, sqlite_open());
#[cfg(feature = "postgresql")]
sequencer_conformance!(
    #[cfg_attr(
        weft_no_pg,
        ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
    )]
    postgresql,
    postgres_open()
);
#[cfg(feature = "zookeeper")]
sequencer_conformance!(
    #[cfg_attr(
        weft_no_zk,
        ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
    )]
    zookeeper,
    zookeeper_open()
);

#[tokio::test]
async fn bad_settings_name_the_field() {
    let md = Metadata::new(
        "sequencer",
        "sequencer.sqlite",
        [(
            "databasePath".to_string(),
            "/proc/no/such/dir/sequencer.db".to_string(),
        )],
    );
    let e = SqliteSequencer::open(&md).unwrap_err().to_string();
    assert!(
        e.contains("databasePath") && e.contains("/proc/no/such/dir"),
        "{e}"
    );
}
