"""The official Dapr Python SDK, unmodified, against a real `weft` process.

Fixtures (conftest.py) start one runtime for the session with a
`state.sqlite` store named `statestore` and a `configuration.file` store
named `configstore`, and point the SDK at it.
"""

from __future__ import annotations

import queue
import time
import urllib.request
import uuid
import warnings

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions
from dapr.clients.health import DaprHealth

from conftest import APP_ID, BASE_CONFIG, CONFIG_STORE, LOCK_STORE, STATE_STORE, write_config_file

FIRST_WRITE = StateOptions(concurrency=Concurrency.first_write)


def key(prefix: str) -> str:
    """A key no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def grpc_code(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


def grpc_details(excinfo) -> str:
    return excinfo.value.details() or ""


# --------------------------------------------------------------------- health


def test_http_health_endpoints(weft):
    for path in ("/v1.0/healthz", "/v1.0/healthz/outbound"):
        url = f"http://127.0.0.1:{weft.http_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 204, f"GET {path}: expected 204, got {resp.status}"


def test_sdk_waits_for_sidecar(weft, client):
    # What DaprClient() does on construction: polls /v1.0/healthz/outbound.
    DaprHealth.wait_for_sidecar()
    # The deprecated socket-level wait still works too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.wait(5)
    # A second, independent client connects as well.
    with DaprClient() as other:
        assert other.get_metadata().application_id == APP_ID


# ---------------------------------------------------------------------- state


def test_save_and_get_bytes_and_str(client):
    k_bytes, k_str = key("bytes"), key("str")
    raw = b"\x00\x01binary\xff\xfe"
    client.save_state(STATE_STORE, k_bytes, raw)
    client.save_state(STATE_STORE, k_str, "héllo wörld")

    got = client.get_state(STATE_STORE, k_bytes)
    assert got.data == raw
    assert got.etag, "get_state returned no etag for an existing key"

    got = client.get_state(STATE_STORE, k_str)
    assert got.data == "héllo wörld".encode("utf-8")
    assert got.text() == "héllo wörld"

    # Overwrite.
    client.save_state(STATE_STORE, k_str, "second")
    assert client.get_state(STATE_STORE, k_str).text() == "second"


def test_get_missing_key_is_empty(client):
    got = client.get_state(STATE_STORE, key("missing"))
    assert got.data == b""
    assert got.etag == ""


def test_etag_concurrency(client):
    k = key("etag")
    client.save_state(STATE_STORE, k, "v1")
    etag1 = client.get_state(STATE_STORE, k).etag
    assert etag1

    client.save_state(STATE_STORE, k, "v2", etag=etag1)
    got = client.get_state(STATE_STORE, k)
    assert got.text() == "v2"
    etag2 = got.etag
    assert etag2 and etag2 != etag1, "a write must give the item a new etag"

    # Stale etag, default concurrency.
    with pytest.raises(DaprGrpcError) as err:
        client.save_state(STATE_STORE, k, "stale", etag=etag1)
    assert grpc_code(err) == grpc.StatusCode.ABORTED, grpc_details(err)

    # Stale etag, first-write concurrency.
    with pytest.raises(DaprGrpcError) as err:
        client.save_state(STATE_STORE, k, "stale", etag=etag1, options=FIRST_WRITE)
    assert grpc_code(err) == grpc.StatusCode.ABORTED, grpc_details(err)

    # First-write without an etag on an existing key.
    with pytest.raises(DaprGrpcError) as err:
        client.save_state(STATE_STORE, k, "again", options=FIRST_WRITE)
    assert grpc_code(err) == grpc.StatusCode.ABORTED, grpc_details(err)

    # Stale etag on delete.
    with pytest.raises(DaprGrpcError) as err:
        client.delete_state(STATE_STORE, k, etag=etag1)
    assert grpc_code(err) == grpc.StatusCode.ABORTED, grpc_details(err)

    # None of the rejected writes changed anything.
    got = client.get_state(STATE_STORE, k)
    assert (got.text(), got.etag) == ("v2", etag2)

    # Current etag with first-write succeeds.
    client.save_state(STATE_STORE, k, "v3", etag=etag2, options=FIRST_WRITE)
    assert client.get_state(STATE_STORE, k).text() == "v3"

    # First-write of a new key without an etag succeeds.
    fresh = key("first-write")
    client.save_state(STATE_STORE, fresh, "created", options=FIRST_WRITE)
    assert client.get_state(STATE_STORE, fresh).text() == "created"


def test_bulk_save_and_get(client):
    keys = [key(f"bulk{i}") for i in range(3)]
    client.save_bulk_state(
        STATE_STORE,
        [StateItem(key=k, value=f"value-{i}") for i, k in enumerate(keys)],
    )
    missing = key("bulk-missing")
    resp = client.get_bulk_state(STATE_STORE, keys + [missing], parallelism=2)
    by_key = {item.key: item for item in resp.items}
    for i, k in enumerate(keys):
        assert k in by_key, f"get_bulk_state did not return {k}: {sorted(by_key)}"
        assert by_key[k].data == f"value-{i}".encode()
        assert by_key[k].etag
        assert not by_key[k].error
    # Dapr returns an item for every requested key; a missing one is empty.
    assert missing in by_key, f"get_bulk_state omitted the missing key: {sorted(by_key)}"
    assert by_key[missing].data == b""
    assert not by_key[missing].error


def test_delete_state(client):
    k = key("delete")
    client.save_state(STATE_STORE, k, "doomed")
    assert client.get_state(STATE_STORE, k).text() == "doomed"
    client.delete_state(STATE_STORE, k)
    assert client.get_state(STATE_STORE, k).data == b""
    # Deleting a missing key (no etag) succeeds.
    client.delete_state(STATE_STORE, k)


def test_state_transaction(client):
    a, b, gone = key("tx-a"), key("tx-b"), key("tx-gone")
    client.save_state(STATE_STORE, gone, "to delete")
    client.save_state(STATE_STORE, b, "old b")

    client.execute_state_transaction(
        STATE_STORE,
        operations=[
            TransactionalStateOperation(key=a, data="new a"),
            TransactionalStateOperation(key=b, data=b"new b"),
            TransactionalStateOperation(key=gone, operation_type=TransactionOperationType.delete),
        ],
    )
    assert client.get_state(STATE_STORE, a).text() == "new a"
    assert client.get_state(STATE_STORE, b).text() == "new b"
    assert client.get_state(STATE_STORE, gone).data == b""


def test_state_transaction_is_all_or_nothing(client):
    a, b = key("txn-a"), key("txn-b")
    client.save_state(STATE_STORE, b, "b1")
    stale = client.get_state(STATE_STORE, b).etag
    client.save_state(STATE_STORE, b, "b2")

    with pytest.raises(DaprGrpcError) as err:
        client.execute_state_transaction(
            STATE_STORE,
            operations=[
                TransactionalStateOperation(key=a, data="should not stay"),
                TransactionalStateOperation(key=b, data="b3", etag=stale),
            ],
        )
    assert grpc_code(err) == grpc.StatusCode.ABORTED, grpc_details(err)
    assert client.get_state(STATE_STORE, a).data == b"", "a failed transaction left a write behind"
    assert client.get_state(STATE_STORE, b).text() == "b2"


def test_state_ttl(client):
    k = key("ttl")
    client.save_state(STATE_STORE, k, "short-lived", state_metadata={"ttlInSeconds": "1"})
    # The value can be read before it expires (generous margin: 1 s TTL).
    keeper = key("no-ttl")
    client.save_state(STATE_STORE, keeper, "stays")

    deadline = time.monotonic() + 15
    while True:
        data = client.get_state(STATE_STORE, k).data
        if data == b"":
            break
        assert data == b"short-lived"
        assert time.monotonic() < deadline, "key with ttlInSeconds=1 still readable after 15 s"
        time.sleep(0.2)
    assert client.get_state(STATE_STORE, keeper).text() == "stays"


def test_unknown_state_store(client):
    with pytest.raises(DaprGrpcError) as err:
        client.get_state("nosuchstore", "k")
    assert grpc_code(err) == grpc.StatusCode.INVALID_ARGUMENT, grpc_details(err)
    message = grpc_details(err)
    assert "state store 'nosuchstore' is not found" in message, message
    assert STATE_STORE in message, f"message does not list the existing stores: {message}"


# -------------------------------------------------------------- configuration


def test_get_configuration_of_keys(client):
    resp = client.get_configuration(CONFIG_STORE, keys=["greeting", "retries", "no-such-key"])
    items = resp.items
    assert set(items) == {"greeting", "retries"}, f"unexpected keys: {sorted(items)}"
    assert items["greeting"].value == "hello"
    assert items["retries"].value == "3"
    assert items["greeting"].version, "configuration items carry a version"


def test_get_configuration_all_keys(client):
    resp = client.get_configuration(CONFIG_STORE, keys=[])
    got = {k: v.value for k, v in resp.items.items()}
    for k, v in BASE_CONFIG.items():
        assert got.get(k) == v, f"{k}: expected {v!r}, got {got.get(k)!r} (all: {got})"


def test_subscribe_configuration(weft, client):
    changes: queue.Queue = queue.Queue()

    def handler(sub_id, resp):
        changes.put((sub_id, {k: v.value for k, v in resp.items.items()}))

    sub_id = client.subscribe_configuration(CONFIG_STORE, ["greeting", "sub-key"], handler)
    assert sub_id, "subscribe_configuration returned no id (the runtime sent no first message within 5 s)"

    try:
        write_config_file(
            weft.config_file, {**BASE_CONFIG, "greeting": "bonjour", "retries": "4", "sub-key": "v2"}
        )
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 10
        while seen.get("greeting") != "bonjour" or seen.get("sub-key") != "v2":
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no change pushed within 10 s of rewriting the file; got {seen}"
            try:
                got_id, items = changes.get(timeout=remaining)
            except queue.Empty:
                continue
            assert got_id == sub_id
            seen.update(items)
        # A changed key that was not subscribed to is not pushed.
        assert "retries" not in seen, f"unsubscribed key pushed: {seen}"
        # And the change is visible to get_configuration.
        assert client.get_configuration(CONFIG_STORE, ["greeting"]).items["greeting"].value == "bonjour"
    finally:
        assert client.unsubscribe_configuration(CONFIG_STORE, sub_id) is True
        write_config_file(weft.config_file, BASE_CONFIG)

    # The file is back to its base items (wait for the watcher to see it).
    deadline = time.monotonic() + 10
    while client.get_configuration(CONFIG_STORE, ["greeting"]).items["greeting"].value != "hello":
        assert time.monotonic() < deadline, "restored configuration file not picked up within 10 s"
        time.sleep(0.1)


# ------------------------------------------------------------------- metadata


def test_get_metadata(client):
    md = client.get_metadata()
    assert md.application_id == APP_ID
    components = {c.name: c for c in md.registered_components}
    assert STATE_STORE in components, f"components: {md.registered_components}"
    assert CONFIG_STORE in components, f"components: {md.registered_components}"
    assert components[STATE_STORE].type == "state.sqlite"
    assert components[CONFIG_STORE].type == "configuration.file"


def test_http_metadata(weft):
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{weft.http_port}/v1.0/metadata", timeout=5) as resp:
        assert resp.status == 200
        body = json.loads(resp.read())
    assert body.get("id") == APP_ID, body


def test_get_secret(client):
    from conftest import SECRET_STORE

    resp = client.get_secret(SECRET_STORE, "db:password")
    assert resp.secret == {"db:password": "pw-1"}
    resp = client.get_secret(SECRET_STORE, "api-token")
    assert resp.secret == {"api-token": "tok-2"}


def test_get_bulk_secret(client):
    from conftest import SECRET_STORE

    resp = client.get_bulk_secret(SECRET_STORE)
    assert resp.secrets == {
        "db:password": {"db:password": "pw-1"},
        "api-token": {"api-token": "tok-2"},
    }


def test_secret_errors_name_what_is_wrong(client):
    from conftest import SECRET_STORE

    # This SDK version raises the plain gRPC error from its secrets calls.
    with pytest.raises((DaprGrpcError, grpc.RpcError)) as err:
        client.get_secret(SECRET_STORE, "no-such-secret")
    assert grpc_code(err) == grpc.StatusCode.NOT_FOUND, grpc_details(err)
    assert "no-such-secret" in grpc_details(err)
    with pytest.raises((DaprGrpcError, grpc.RpcError)) as err:
        client.get_secret("vault", "api-token")
    assert grpc_code(err) == grpc.StatusCode.INVALID_ARGUMENT, grpc_details(err)
    message = grpc_details(err)
    assert "secret store 'vault' is not found" in message and SECRET_STORE in message, message


# ----------------------------------------------------------------------- lock


LOCK_ALPHA = "ignore:The Distributed Lock API is an Alpha version"


@pytest.mark.filterwarnings(LOCK_ALPHA)
def test_try_lock_and_unlock(client):
    from dapr.clients.grpc._response import UnlockResponseStatus

    resource = f"res-{uuid.uuid4().hex[:8]}"
    # This runtime has a resources directory, so it declares its lock
    # store (conftest); without one the embedded default has the same name.
    first = client.try_lock(LOCK_STORE, resource, "owner-a", expiry_in_seconds=60)
    assert first.success
    second = client.try_lock(LOCK_STORE, resource, "owner-b", expiry_in_seconds=60)
    assert not second.success
    assert client.unlock(LOCK_STORE, resource, "owner-b").status == UnlockResponseStatus.lock_belongs_to_others
    assert client.unlock(LOCK_STORE, resource, "owner-a").status == UnlockResponseStatus.success
    assert client.unlock(LOCK_STORE, resource, "owner-a").status == UnlockResponseStatus.lock_does_not_exist


@pytest.mark.filterwarnings(LOCK_ALPHA)
def test_lock_bad_inputs(client):
    with pytest.raises((DaprGrpcError, grpc.RpcError)) as err:
        client.try_lock("no-such-lockstore", "r", "o", expiry_in_seconds=10)
    assert grpc_code(err) == grpc.StatusCode.INVALID_ARGUMENT, grpc_details(err)
    message = grpc_details(err)
    assert "no-such-lockstore" in message and LOCK_STORE in message, message
