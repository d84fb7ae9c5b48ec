//! A shutdown signal shared by the servers, the building blocks and the
//! signal handler.

use tokio::sync::watch;

/// Cloneable handle: any holder may trigger shutdown or wait for it.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }

    /// Starts the shutdown; idempotent.
    pub fn trigger(&self, reason: &str) {
        let first = !*self.tx.borrow();
        self.tx.send_replace(true);
        if first {
            tracing::info!(reason, "shutting down");
        }
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Resolves when the runtime starts shutting down, for a block holding a
/// receiver (never, if the signal is gone).
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
