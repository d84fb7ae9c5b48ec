//! The Apache Dubbo 3.3 test programs of tests/dubbo-java (a provider of
//! `dev.weft.test.Greeter` and a consumer, hessian2, pinned to loopback):
//! built once per test binary with Maven (dependencies cached in
//! `$WEFT_SERVICES_DIR/m2`, default `<repo>/.services/m2`), run as child
//! processes speaking a line protocol on standard input and output.
//! Without Java 17 and Maven the tests using them print SKIPPED, unless
//! `CI` or `WEFT_REQUIRE_SERVICES` is set, where they fail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{free_port, unique, WAIT};

/// The Java test programs' service interface.
pub const IFACE: &str = "dev.weft.test.Greeter";

/// Bound on a Java program's start (a cold JVM on a busy 2-core machine).
pub const START: Duration = Duration::from_secs(120);

// === building and running the Java programs ===

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The classpath of the built programs; `None` when skipped.
pub fn java(test: &str) -> Option<&'static str> {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    match BUILT.get_or_init(build_java) {
        Ok(cp) => Some(cp),
        Err(why)
            if std::env::var_os("CI").is_some()
                || std::env::var_os("WEFT_REQUIRE_SERVICES").is_some() =>
        {
            panic!("{test}: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

fn build_java() -> Result<String, String> {
    let root = repo_root();
    let project = root.join("tests/dubbo-java");
    for (tool, arg) in [("java", "-version"), ("mvn", "-v")] {
        let ok = std::process::Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!(
                "'{tool}' is not installed (Java 17 and Maven are needed)"
            ));
        }
    }
    let services = std::env::var_os("WEFT_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".services"));
    let m2 = services.join("m2");
    std::fs::create_dir_all(&m2).map_err(|e| format!("cannot create {}: {e}", m2.display()))?;
    // Other test binaries or runs may build at the same time.
    let lock = std::fs::File::create(services.join(".dubbo-java.lock"))
        .map_err(|e| format!("cannot create the build lock: {e}"))?;
    lock.lock()
        .map_err(|e| format!("cannot take the build lock: {e}"))?;
    eprintln!("building {} with Maven", project.display());
    let out = std::process::Command::new("mvn")
        .args(["-q", "-B", "package"])
        .arg(format!("-Dmaven.repo.local={}", m2.display()))
        .current_dir(&project)
        .output()
        .map_err(|e| format!("cannot run mvn: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mvn package failed in {}:\n{}{}",
            project.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let target = project.join("target");
    Ok(format!(
        "{}:{}",
        target.join("classes").display(),
        target.join("lib/*").display()
    ))
}

/// A running Java program speaking the line protocol of its main class.
pub struct JavaProc {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl JavaProc {
    pub async fn start(cp: &str, main: &str, args: &[&str], name: &str) -> JavaProc {
        let dir = std::env::temp_dir().join(unique("weft-dubbo-java"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("stderr.log");
        let mut child = tokio::process::Command::new("java")
            .args([
                "-Xss1m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                cp,
            ])
            .arg(format!("-Duser.home={}", dir.display()))
            .arg(format!("dev.weft.test.{main}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .current_dir(&dir)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start java {main}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut p = JavaProc {
            name: name.into(),
            child,
            stdin,
            lines,
            log,
            _dir: TempDir(dir),
        };
        let ready = tokio::time::timeout(START, async {
            loop {
                match p.lines.next_line().await {
                    Ok(Some(l)) if l.starts_with("READY") => return true,
                    Ok(Some(_)) => continue,
                    _ => return false,
                }
            }
        })
        .await;
        if ready != Ok(true) {
            panic!("{name} ({main}) did not start:\n{}", p.log_tail());
        }
        p
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Sends one command line, returns the answer line.
    pub async fn call(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        match tokio::time::timeout(WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!(
                "{}: no answer to '{line}' ({other:?}):\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// The value of an `OK <micros> <value>` answer.
    pub async fn ok(&mut self, line: &str) -> String {
        let a = self.call(line).await;
        match a.strip_prefix("OK ").and_then(|r| r.split_once(' ')) {
            Some((_, value)) => value.to_string(),
            None => panic!("{}: '{line}' gave '{a}'", self.name),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

pub async fn start_provider(cp: &str, name: &str, extra: &[&str]) -> (JavaProc, u16) {
    let port = free_port();
    let port_s = port.to_string();
    let mut args = vec!["--port", &port_s, "--name", name];
    args.extend_from_slice(extra);
    let p = JavaProc::start(cp, "Provider", &args, name).await;
    (p, port)
}
