"""Fixtures for the Dapr Python SDK tests: one real `weft` process per session.

The official `dapr` SDK is used unmodified. It finds the runtime through
DAPR_RUNTIME_HOST / DAPR_GRPC_PORT / DAPR_HTTP_PORT. Older SDKs read these
when `dapr.conf` is first imported (1.19 reads them on every access), so the
ports are chosen and exported here, when pytest loads this file and before
any test module imports `dapr`; the `weft` fixture then also assigns them on
`dapr.conf.settings` to be safe either way.

Environment:
  WEFT_BIN   the runtime binary (default: <repo>/target/debug/weft, or
             $CARGO_TARGET_DIR/debug/weft)
  WEFT_LOG   log filter passed through to the runtime (default: info)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_ID = "pytest-app"
STATE_STORE = "statestore"
CONFIG_STORE = "configstore"
SECRET_STORE = "localsecrets"
LOCK_STORE = "lockstore"
# What the secret store's file holds (nested keys are read with ':').
SECRETS = {"db": {"password": "pw-1"}, "api-token": "tok-2"}

# Items the configuration file starts with (tests that rewrite the file keep
# these keys and restore the file afterwards).
BASE_CONFIG = {
    "greeting": "hello",
    "retries": "3",
    "feature-x": "on",
}

STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 15.0


def _default_bin() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    base = Path(target) if target else REPO_ROOT / "target"
    if not base.is_absolute():
        base = REPO_ROOT / base
    return base / "debug" / "weft"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pick_ports() -> tuple[int, int]:
    grpc_port = _free_port()
    http_port = _free_port()
    while http_port == grpc_port:
        http_port = _free_port()
    return grpc_port, http_port


GRPC_PORT, HTTP_PORT = _pick_ports()

# --- SDK settings: must be in the environment before `dapr` is imported. ---
for _name in ("DAPR_GRPC_ENDPOINT", "DAPR_HTTP_ENDPOINT", "DAPR_API_TOKEN"):
    os.environ.pop(_name, None)
os.environ["DAPR_RUNTIME_HOST"] = "127.0.0.1"
os.environ["DAPR_GRPC_PORT"] = str(GRPC_PORT)
os.environ["DAPR_HTTP_PORT"] = str(HTTP_PORT)
os.environ.setdefault("DAPR_HEALTH_TIMEOUT", "30")
# Loopback must never go through a proxy (urllib and gRPC both honour these).
_no_proxy = ",".join(filter(None, [os.environ.get("no_proxy", ""), "127.0.0.1,localhost"]))
os.environ["no_proxy"] = os.environ["NO_PROXY"] = _no_proxy


def write_config_file(path: Path, items: dict[str, str]) -> None:
    """Replaces the configuration file atomically (write + rename)."""
    lines = ["# written by tests/python/conftest.py"]
    for key, value in items.items():
        # Quote every value so YAML keeps it a string ("on", "3").
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{key}: "{escaped}"')
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_resources(root: Path) -> tuple[Path, Path]:
    resources = root / "resources"
    resources.mkdir()
    config_file = root / "config" / "configuration.yaml"
    config_file.parent.mkdir()
    write_config_file(config_file, BASE_CONFIG)
    (resources / "configstore.yaml").write_text(
        f"""apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {CONFIG_STORE}
spec:
  type: configuration.file
  version: v1
  metadata:
    - name: path
      value: "{config_file}"
""",
        encoding="utf-8",
    )
    (resources / "statestore.yaml").write_text(
        f"""apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {STATE_STORE}
spec:
  type: state.sqlite
  version: v1
  metadata:
    - name: databasePath
      value: "{root / 'state.db'}"
""",
        encoding="utf-8",
    )
    secrets_file = root / "secrets.json"
    secrets_file.write_text(json.dumps(SECRETS), encoding="utf-8")
    (resources / "secretstore.yaml").write_text(
        f"""apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {SECRET_STORE}
spec:
  type: secretstores.local.file
  version: v1
  metadata:
    - name: secretsFile
      value: "{secrets_file}"
""",
        encoding="utf-8",
    )
    (resources / "lockstore.yaml").write_text(
        f"""apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {LOCK_STORE}
spec:
  type: lock.sqlite
  version: v1
  metadata:
    - name: databasePath
      value: "{root / 'locks.db'}"
""",
        encoding="utf-8",
    )
    return resources, config_file


@dataclass
class Weft:
    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    root: Path
    resources: Path
    config_file: Path
    log_path: Path

    def log_text(self, max_chars: int = 20000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            return f"(cannot read {self.log_path}: {e})"
        return text if len(text) <= max_chars else "...\n" + text[-max_chars:]

    def assert_alive(self) -> None:
        rc = self.proc.poll()
        if rc is not None:
            pytest.fail(f"weft exited with code {rc}; its output:\n{self.log_text()}", pytrace=False)


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


_CURRENT: Weft | None = None
_FAILED = False
# Printed in the terminal summary (fixture teardown output is captured).
_FINAL_REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter):
    for text in _FINAL_REPORT:
        terminalreporter.write_sep("=", "weft output")
        terminalreporter.write_line(text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the runtime's output to every failing test's report."""
    global _FAILED
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _FAILED = True
        if _CURRENT is not None:
            report.sections.append(("weft output (tail)", _CURRENT.log_text(8000)))


@pytest.fixture(scope="session")
def weft() -> Weft:
    global _CURRENT
    weft_bin = Path(os.environ.get("WEFT_BIN") or _default_bin())
    if not (weft_bin.is_file() and os.access(weft_bin, os.X_OK)):
        pytest.fail(f"weft binary not found at {weft_bin} (build it with `cargo build`, or set WEFT_BIN)", pytrace=False)

    root = Path(tempfile.mkdtemp(prefix="weft-pytest-"))
    resources, config_file = _write_resources(root)
    data_dir = root / "data"
    data_dir.mkdir()
    log_path = root / "weft.log"

    env = dict(os.environ)
    env.setdefault("WEFT_LOG", "info")
    env["NO_COLOR"] = "1"  # plain log lines in the captured output
    cmd = [
        str(weft_bin), "run",
        "--app-id", APP_ID,
        "--resources-path", str(resources),
        "--grpc-port", str(GRPC_PORT),
        "--http-port", str(HTTP_PORT),
        "--data-dir", str(data_dir),
    ]
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                            env=env, cwd=root)
    log_file.close()
    w = Weft(proc, GRPC_PORT, HTTP_PORT, root, resources, config_file, log_path)
    _CURRENT = w

    # Wait (bounded) for the HTTP health endpoint.
    health = f"http://127.0.0.1:{HTTP_PORT}/v1.0/healthz"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        status = _http_status(health)
        if status in (200, 204):
            break
        time.sleep(0.1)
    if status not in (200, 204):
        _stop(proc)
        pytest.fail(
            f"weft did not become healthy: GET {health} -> {status} "
            f"(exit code {proc.returncode}; command: {' '.join(cmd)})\n{w.log_text()}",
            pytrace=False,
        )

    # Belt and braces for SDK versions that read settings at import time.
    from dapr.conf import settings

    settings.DAPR_RUNTIME_HOST = "127.0.0.1"
    settings.DAPR_GRPC_PORT = GRPC_PORT
    settings.DAPR_HTTP_PORT = HTTP_PORT

    yield w

    _CURRENT = None
    was_running = proc.poll() is None
    rc, killed = _stop(proc)
    problem = None
    if not was_running:
        problem = f"weft had already exited (code {rc}) before the end of the session"
    elif killed:
        problem = f"weft did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM; it was killed"
    elif rc != 0:
        problem = f"weft exited with code {rc} after SIGTERM (expected 0)"
    if _FAILED or problem:
        _FINAL_REPORT.append(f"(kept in {root})\n{w.log_text(200000)}")
    if problem:
        pytest.fail(problem, pytrace=False)
    if not _FAILED:
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> tuple[int | None, bool]:
    """SIGTERM, bounded wait, then SIGKILL. Returns (exit code, killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=SHUTDOWN_TIMEOUT_S), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10), True


@pytest.fixture(scope="session")
def dapr_client(weft):
    from dapr.clients import DaprClient

    client = DaprClient()  # waits on /v1.0/healthz/outbound
    yield client
    client.close()


@pytest.fixture
def client(weft, dapr_client):
    weft.assert_alive()
    yield dapr_client
