//! Which test services this build's tests may expect (shared by the build
//! scripts of weft-components and weft-tests).
//!
//! A test that needs PostgreSQL, Kafka, ZooKeeper or Prometheus is marked
//! `#[cfg_attr(weft_no_pg, ignore = "...")]` (or `weft_no_kafka`,
//! `weft_no_zk`, `weft_no_prometheus`): when the service's variable (from
//! `scripts/services.sh env`) is unset the test is reported as ignored with
//! its reason — unless `CI` or `WEFT_REQUIRE_SERVICES` is set, when it runs
//! and fails for want of its service. It never passes without running.

/// `(cfg, environment variable)` of each service.
const SERVICES: &[(&str, &str)] = &[
    ("weft_no_pg", "WEFT_TEST_PG_URL"),
    ("weft_no_kafka", "WEFT_TEST_KAFKA_BROKERS"),
    ("weft_no_zk", "WEFT_TEST_ZK_SERVERS"),
    ("weft_no_prometheus", "WEFT_PROMETHEUS_URL"),
];

fn set(var: &str) -> bool {
    std::env::var(var)
        .is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

/// Emits the `weft_no_*` cfgs for the services this build lacks.
pub fn emit() {
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=WEFT_REQUIRE_SERVICES");
    let required = set("CI") || set("WEFT_REQUIRE_SERVICES");
    for (cfg, var) in SERVICES {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={var}");
        if !required && !std::env::var(var).is_ok_and(|v| !v.trim().is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
