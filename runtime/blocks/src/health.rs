//! Whether the components can reach their backends: every few seconds the
//! runtime pings each component that has a backend outside the process
//! (a Kafka broker answering a metadata request) and keeps the result.
//! `/v1.0/healthz/outbound` answers 503 naming the components that failed
//! their last check, and metadata carries every component's state
//! ([`HEALTH_METADATA`]). The runtime itself keeps running and serving
//! while a backend is away; the component recovers on its own when the
//! backend returns, and the next check reports it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::watch;

/// Extended metadata key with each checked component's state (JSON object
/// by component name: `healthy`, `error`, `since` and `checked` in Unix
/// seconds).
pub const HEALTH_METADATA: &str = "weft.health";

/// How often the components are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One component's check: answers `Err(reason)` when its backend does not.
pub type Ping = Arc<dyn Fn(Duration) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

struct Check {
    name: String,
    kind: String,
    ping: Ping,
}

/// A component's last known state.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub healthy: bool,
    /// Why the last check failed.
    pub error: Option<String>,
    /// When the component entered this state.
    pub since: SystemTime,
    /// When it was last checked.
    pub checked: SystemTime,
}

/// The checks and their results.
#[derive(Default)]
pub struct ComponentHealth {
    checks: Vec<Check>,
    states: Mutex<BTreeMap<String, Status>>,
}

impl ComponentHealth {
    /// Adds a component to check.
    pub fn add(&mut self, name: &str, kind: &str, ping: Ping) {
        self.checks.push(Check {
            name: name.to_string(),
            kind: kind.to_string(),
            ping,
        });
    }

    /// Checks every component once (concurrently), logging changes.
    pub async fn check_all(&self) {
        let results = futures::future::join_all(self.checks.iter().map(|c| async move {
            // The component gets a little less than the bound, so its own
            // reason (which broker, what failed) usually wins the race.
            let own = CHECK_TIMEOUT.saturating_sub(Duration::from_millis(500));
            let res = match tokio::time::timeout(CHECK_TIMEOUT, (c.ping)(own)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "component '{}' ({}): its check did not answer within {CHECK_TIMEOUT:?}",
                    c.name, c.kind
                )),
            };
            (c, res)
        }))
        .await;
        let now = SystemTime::now();
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        for (c, res) in results {
            let healthy = res.is_ok();
            let previous = states.get(&c.name).map(|s| s.healthy);
            let since = match states.get(&c.name) {
                Some(s) if s.healthy == healthy => s.since,
                _ => now,
            };
            match (&res, previous) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(component = %c.name, kind = %c.kind, error = %e, "component unhealthy: its backend does not answer")
                }
                (Ok(()), Some(false)) => {
                    tracing::info!(component = %c.name, kind = %c.kind, "component healthy again")
                }
                _ => {}
            }
            states.insert(
                c.name.clone(),
                Status {
                    healthy,
                    error: res.err(),
                    since,
                    checked: now,
                },
            );
        }
    }

    /// Checks now and then every [`CHECK_INTERVAL`] until shutdown.
    pub fn spawn(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.checks.is_empty() {
            return;
        }
        tokio::spawn(async move {
            loop {
                self.check_all().await;
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                    _ = crate::shutdown::stopping(&mut shutdown) => return,
                }
            }
        });
    }

    /// `(name, reason)` of the components whose last check failed.
    pub fn unhealthy(&self) -> Vec<(String, String)> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .iter()
            .filter(|(_, s)| !s.healthy)
            .map(|(n, s)| (n.clone(), s.error.clone().unwrap_or_default()))
            .collect()
    }

    /// Every checked component's state, for metadata.
    pub fn snapshot(&self) -> serde_json::Value {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let kinds: BTreeMap<&str, &str> = self
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.kind.as_str()))
            .collect();
        serde_json::Value::Object(
            states
                .iter()
                .map(|(n, s)| {
                    (
                        n.clone(),
                        serde_json::json!({
                            "type": kinds.get(n.as_str()).copied().unwrap_or(""),
                            "healthy": s.healthy,
                            "error": s.error,
                            "since": secs(s.since),
                            "checked": secs(s.checked),
                        }),
                    )
                })
                .collect(),
        )
    }

    /// Whether there is no component to check.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_failing_check_is_reported_until_it_passes_again() {
        let up = Arc::new(AtomicBool::new(false));
        let mut h = ComponentHealth::default();
        let u = up.clone();
        h.add(
            "kafka",
            "pubsub.kafka",
            Arc::new(move |_| {
                let ok = u.load(Ordering::SeqCst);
                Box::pin(async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("broker down".into())
                    }
                })
            }),
        );
        h.add(
            "pubsub",
            "pubsub.embedded",
            Arc::new(|_| Box::pin(async { Ok(()) })),
        );
        assert!(
            h.unhealthy().is_empty(),
            "nothing known before the first check"
        );
        h.check_all().await;
        assert_eq!(
            h.unhealthy(),
            vec![("kafka".to_string(), "broker down".to_string())]
        );
        let snap = h.snapshot();
        assert_eq!(snap["kafka"]["healthy"], false);
        assert_eq!(snap["kafka"]["type"], "pubsub.kafka");
        assert_eq!(snap["kafka"]["error"], "broker down");
        assert_eq!(snap["pubsub"]["healthy"], true);
        up.store(true, Ordering::SeqCst);
        h.check_all().await;
        assert!(h.unhealthy().is_empty());
        assert_eq!(h.snapshot()["kafka"]["error"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn a_check_that_hangs_counts_as_failed() {
        let mut h = ComponentHealth::default();
        h.add(
            "slow",
            "pubsub.kafka",
            Arc::new(|_| Box::pin(std::future::pending::<Result<(), String>>())),
        );
        h.check_all().await;
        let bad = h.unhealthy();
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].1.contains("'slow'") && bad[0].1.contains("did not answer within"),
            "{bad:?}"
        );
    }
}
