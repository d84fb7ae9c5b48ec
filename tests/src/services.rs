//! Services of a test's own: a Kafka broker or a ZooKeeper server started
//! with `scripts/services.sh` in a private directory and port, which the
//! test may stop and start again without disturbing the services every
//! other test shares. Stopped when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// A private `scripts/services.sh` service.
pub struct PrivateService {
    name: &'static str,
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    port: u16,
}

impl PrivateService {
    /// A Kafka broker (KRaft, one node) on its own port, reusing the jars of
    /// the shared broker (`WEFT_KAFKA_LIB` from `scripts/services.sh env`)
    /// when set. Started before returning.
    pub fn kafka() -> anyhow::Result<Self> {
        let s = Self::kafka_unstarted()?;
        s.start()?;
        Ok(s)
    }

    /// [`PrivateService::kafka`] with its port chosen and nothing started
    /// yet (a broker that is not there, until [`PrivateService::start`]).
    pub fn kafka_unstarted() -> anyhow::Result<Self> {
        // The controller listens on the port after the broker's.
        let port = free_port_pair()?;
        let mut env = vec![("WEFT_KAFKA_PORT", port.to_string())];
        if let Ok(lib) = std::env::var("WEFT_KAFKA_LIB") {
            if !lib.is_empty() {
                env.push(("WEFT_KAFKA_LIB", lib));
            }
        }
        Self::new("kafka", port, env)
    }

    /// A standalone ZooKeeper server on its own port. Started before
    /// returning.
    pub fn zookeeper() -> anyhow::Result<Self> {
        let port = crate::free_port();
        let s = Self::new("zookeeper", port, vec![("WEFT_ZK_PORT", port.to_string())])?;
        s.start()?;
        Ok(s)
    }

    fn new(
        name: &'static str,
        port: u16,
        env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            dir: tempfile::Builder::new()
                .prefix(&format!("weft-{name}-"))
                .tempdir()?,
            env,
            port,
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the service (its data kept from before) and waits until it
    /// answers.
    pub fn start(&self) -> anyhow::Result<()> {
        self.run("start")
    }

    /// Stops the service (SIGTERM, then SIGKILL after 30 s); its data stays.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run("stop")
    }

    /// Deletes the stopped service's data (its next start is a fresh
    /// server: ZooKeeper forgets every session and node, so each client's
    /// session is expired when it reconnects).
    pub fn wipe_data(&self) -> anyhow::Result<()> {
        let data = self.dir.path().join(self.name).join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing {}", data.display()))?;
        }
        Ok(())
    }

    /// The service's log file.
    pub fn log(&self) -> String {
        let file = match self.name {
            "kafka" => "kafka/kafka.log",
            _ => "zookeeper/zookeeper.log",
        };
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    fn run(&self, action: &str) -> anyhow::Result<()> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(action)
            .arg(self.name)
            .env("WEFT_SERVICES_DIR", self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "`services.sh {action} {}` failed ({}):\n{}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivateService {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping the private {}: {e}", self.name);
        }
    }
}

/// A port `p` on 127.0.0.1 with `p + 1` free as well (bounded tries).
fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let p = crate::free_port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no two adjacent free ports on 127.0.0.1 in 50 tries")
}
