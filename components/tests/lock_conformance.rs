//! Lock stores: the conformance suite on every backend
//! (`lock_conformance!`), one test per check, each with two stores over
//! the same data as two runtimes would open it. PostgreSQL tests use
//! `WEFT_TEST_PG_URL` and ZooKeeper tests `WEFT_TEST_ZK_SERVERS` (from
//! `scripts/services.sh env`); without them they are reported as ignored,
//! unless `CI` or `WEFT_REQUIRE_SERVICES` is set.

use std::sync::Arc;
use std::time::Duration;

use weft_components::lock::sqlite::SqliteLockStore;
use weft_components::lock::LockStore;
use weft_components::{lock_conformance, Metadata};

type Pair = (Arc<dyn LockStore>, Arc<dyn LockStore>);

/// Two connections to one database file.
async fn sqlite_pair() -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("locks.db");
    let a = SqliteLockStore::open_at(&path, Duration::from_secs(5)).unwrap();
    let b = SqliteLockStore::open_at(&path, Duration::from_secs(5)).unwrap();
    // The directory must outlive the stores: leak it for the test's life.
    std::mem::forget(dir);
    (Arc::new(a), Arc::new(b))
}

#[cfg(feature = "postgresql")]
async fn postgres_pair() -> Pair {
    use weft_components::lock::postgres::PostgresLockStore;
    let url = std::env::var("WEFT_TEST_PG_URL")
        .expect("WEFT_TEST_PG_URL is not set: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\"");
    let md = Metadata::new(
        "lockstore",
        "lock.postgresql",
        [
            ("connectionString".to_string(), url),
            (
                "tableName".to_string(),
                "weft_locks_conformance".to_string(),
            ),
        ],
    );
    (
        Arc::new(PostgresLockStore::from_metadata(&md).unwrap()),
        Arc::new(PostgresLockStore::from_metadata(&md).unwrap()),
    )
}

/// Two stores, each with its own ZooKeeper session (as two runtimes).
#[cfg(feature = "zookeeper")]
async fn zookeeper_pair() -> Pair {
    use weft_components::lock::zookeeper::ZookeeperLockStore;
    let servers = std::env::var("WEFT_TEST_ZK_SERVERS")
        .expect("WEFT_TEST_ZK_SERVERS is not set: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\"");
    let md = Metadata::new(
        "lockstore",
        "lock.zookeeper",
        [
            ("servers".to_string(), servers),
            ("root".to_string(), "/weft-locks-conformance".to_string()),
        ],
    );
    (
        Arc::new(ZookeeperLockStore::from_metadata(&md).unwrap()),
        Arc::new(ZookeeperLockStore::from_metadata(&md).unwrap()),
    )
}

lock_conformance!(sqlite, sqlite_pair());
#[cfg(feature = "postgresql")]
lock_conformance!(
    #[cfg_attr(
        weft_no_pg,
        ignore = "needs PostgreSQL: scripts/services.sh start postgres; eval \"$(scripts/services.sh env)\""
    )]
    postgresql,
    postgres_pair()
);
#[cfg(feature = "zookeeper")]
lock_conformance!(
    #[cfg_attr(
        weft_no_zk,
        ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
    )]
    zookeeper,
    zookeeper_pair()
);

#[tokio::test]
async fn bad_settings_name_the_field() {
    let md = Metadata::new(
        "lockstore",
        "lock.sqlite",
        [(
            "databasePath".to_string(),
            "/proc/no/such/dir/locks.db".to_string(),
        )],
    );
    let e = SqliteLockStore::open(&md).unwrap_err().to_string();
    assert!(
        e.contains("databasePath") && e.contains("/proc/no/such/dir"),
        "{e}"
    );
}
