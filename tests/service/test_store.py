"""The snapshot store: one contract suite run on FileStore and on S3Store (against a moto
server on loopback), plus what only one backend has and ``open_store``'s URL handling."""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from service.store import (
    LEASE_TABLE_SETTING,
    STORE_SETTING,
    CorruptRecord,
    DynamoLeases,
    FileLeases,
    FileStore,
    InvalidKey,
    S3Store,
    SnapshotMeta,
    SnapshotStore,
    SnapshotTooLarge,
    StaleToken,
    StoreUnavailable,
    open_store,
    trim_names,
)
from service.store import factory as store_factory
from tests.service.fake_aws import REGION, free_port

MAX_BLOB = 1024 * 1024
A = "a" * 64  # owners are key hashes: lower-case hex
B = "b1" * 32


# -- a moto server on loopback ------------------------------------------------------------


def _s3(endpoint: str, **config: Any) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, config=Config(**config))


# -- the backends under one interface -----------------------------------------------------


@dataclass
class Backend:
    """A store plus the backend-specific bits the contract tests need."""

    store: SnapshotStore
    make: Callable[..., SnapshotStore]  # another store on the same data (another process)
    raw_keys: Callable[[], list[str]]  # every stored name, backend-relative
    write_raw: Callable[[str, str, bytes], None]  # bytes under a session's record name


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        root = tmp_path / "snapshots"

        def make_file(**kw: Any) -> SnapshotStore:
            return FileStore(root, **{"max_blob_bytes": MAX_BLOB, **kw})

        def file_keys() -> list[str]:
            if not root.exists():
                return []
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix == ".snap")

        def file_write(owner: str, sid: str, data: bytes) -> None:
            (root / owner).mkdir(parents=True, exist_ok=True)
            (root / owner / f"{sid}.snap").write_bytes(data)

        return Backend(make_file(), make_file, file_keys, file_write)

    endpoint = request.getfixturevalue("moto_endpoint")
    client = _s3(endpoint)
    bucket = f"rlm-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)

    def make_s3(**kw: Any) -> SnapshotStore:
        return S3Store(bucket, "sessions/", **{"client": client, "max_blob_bytes": MAX_BLOB, **kw})

    def s3_keys() -> list[str]:
        resp = client.list_objects_v2(Bucket=bucket)
        return sorted(o["Key"].removeprefix("sessions/") for o in resp.get("Contents", []))

    def s3_write(owner: str, sid: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"sessions/{owner}/{sid}.snap", Body=data)

    return Backend(make_s3(), make_s3, s3_keys, s3_write)


def meta(token: int = 1, **kw: Any) -> SnapshotMeta:
    return SnapshotMeta(token=token, **kw)


# -- the contract -------------------------------------------------------------------------


async def test_put_get_head_delete(backend: Backend) -> None:
    store = backend.store
    assert await store.get(A, "s1") is None
    assert await store.head(A, "s1") is None
    await store.delete(A, "s1")  # deleting nothing is fine

    m = meta(3, turns=2, unpicklable=("sock", "gen"), extra={"model": "m", "created": 1.5})
    await store.put(A, "s1", b"\x00state\xff" * 100, m)
    head = await store.head(A, "s1")
    assert head is not None
    assert (head.token, head.turns, head.status, head.unpicklable) == (3, 2, "ok", ("sock", "gen"))
    assert head.size == 700 and head.saved_at > 0 and head.extra == {"model": "m", "created": 1.5}
    snap = await store.get(A, "s1")
    assert snap is not None and snap.blob == b"\x00state\xff" * 100 and snap.meta == head

    await store.put(A, "s1", b"", meta(3, turns=3))  # replaced whole; an empty blob is fine
    snap = await store.get(A, "s1")
    assert snap is not None and snap.blob == b"" and snap.meta.turns == 3
    assert snap.meta.unpicklable == () and snap.meta.extra == {}

    # Another store object (another process, another host) sees the same record.
    other = backend.make()
    assert (await other.head(A, "s1")) == snap.meta

    await store.delete(A, "s1")
    assert await store.get(A, "s1") is None and await other.head(A, "s1") is None
    assert backend.raw_keys() == []


async def test_owners_are_isolated(backend: Backend) -> None:
    store = backend.store
    await store.put(A, "shared-id", b"A's state", meta())
    assert await store.get(B, "shared-id") is None
    assert await store.head(B, "shared-id") is None
    await store.put(B, "shared-id", b"B's state", meta())
    await store.mark_lost(B, "shared-id", "B's sandbox died", token=1)
    await store.delete(B, "shared-id")
    snap = await store.get(A, "shared-id")
    assert snap is not None and snap.blob == b"A's state" and not snap.meta.lost
    # B cannot name A's record with any id: every way of spelling a path is refused.
    for sid in (f"../{A}/shared-id", f"..%2F{A}%2Fshared-id", f"{A}/shared-id", "../../x"):
        with pytest.raises(InvalidKey):
            await store.get(B, sid)
    assert backend.raw_keys() == [f"{A}/shared-id.snap"]


BAD_OWNERS = ["", "../../etc", "..", "ABCDEF", "xyz", "a" * 65, "ab/cd", "ab\x00", " ab", "é"]
BAD_IDS = ["", "../x", "a/b", "/abs", "a\\b", "x" * 129, "a b", "a\x00b", "é", "a\nb", "%2e%2e"]


@pytest.mark.parametrize(
    ("owner", "sid"), [(o, "ok") for o in BAD_OWNERS] + [(A, s) for s in BAD_IDS]
)
async def test_bad_keys_are_refused_before_any_io(backend: Backend, owner: str, sid: str) -> None:
    store = backend.store
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.put(owner, sid, b"x", meta()),
        lambda: store.get(owner, sid),
        lambda: store.head(owner, sid),
        lambda: store.mark_lost(owner, sid, "r", token=1),
        lambda: store.delete(owner, sid),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            await call()
    assert backend.raw_keys() == []


async def test_dot_ids_are_plain_names_inside_the_owner_prefix(backend: Backend) -> None:
    for sid in (".", "..", "...", ".hidden", "a..b"):
        await backend.store.put(A, sid, sid.encode(), meta())
    for sid in (".", "..", "...", ".hidden", "a..b"):
        snap = await backend.store.get(A, sid)
        assert snap is not None and snap.blob == sid.encode()
    assert all(k.startswith(f"{A}/") for k in backend.raw_keys())
    assert len(backend.raw_keys()) == 5


async def test_a_large_meta_is_read_whole_by_head(backend: Backend) -> None:
    extra = {"notes": "n" * 20_000}  # past the first read of a head
    await backend.store.put(A, "s", b"blob", meta(2, extra=extra))
    head = await backend.store.head(A, "s")
    assert head is not None and head.extra == extra and head.size == 4


async def test_blob_size_cap(backend: Backend) -> None:
    store = backend.store
    await store.put(A, "s", b"x" * MAX_BLOB, meta())  # exactly the cap is allowed
    with pytest.raises(SnapshotTooLarge, match="RLM_SNAPSHOT_MAX_MB") as info:
        await store.put(A, "s", b"y" * (MAX_BLOB + 1), meta(turns=9))
    assert (info.value.size, info.value.limit) == (MAX_BLOB + 1, MAX_BLOB)
    snap = await store.get(A, "s")
    assert snap is not None and snap.blob == b"x" * MAX_BLOB and snap.meta.turns == 0
    small = backend.make(max_blob_bytes=10)
    with pytest.raises(SnapshotTooLarge):
        await small.put(A, "t", b"x" * 11, meta())
    # The meta has its own cap: it is read on every head.
    with pytest.raises(SnapshotTooLarge):
        await store.put(A, "t", b"", meta(extra={"big": "z" * 70_000}))
    assert await store.head(A, "t") is None


async def test_tombstones(backend: Backend) -> None:
    store = backend.store
    await store.put(A, "s", b"state", meta(2, turns=4, extra={"created": 1.0}))
    await store.mark_lost(A, "s", "sandbox lost: memory limit", token=2)
    head = await store.head(A, "s")
    assert head is not None and head.lost and head.status == "lost"
    assert head.lost_reason == "sandbox lost: memory limit" and head.lost_at is not None
    assert head.turns == 4 and head.extra == {"created": 1.0} and head.token == 2
    snap = await store.get(A, "s")
    assert snap is not None and snap.blob == b"" and snap.meta.lost  # the state is gone
    # Any process answers 410 from the tombstone.
    assert (await backend.make().head(A, "s")) == head

    # A session that never had a snapshot can be tombstoned too.
    await store.mark_lost(A, "never-saved", "x" * 10_000, token=1)
    t = await store.head(A, "never-saved")
    assert t is not None and t.lost and t.turns == 0 and len(t.lost_reason or "") == 500

    # A reset continues the id from a fresh interpreter: a put over the tombstone.
    await store.put(A, "s", b"fresh", meta(2))
    snap = await store.get(A, "s")
    assert snap is not None and snap.blob == b"fresh" and not snap.meta.lost
    with pytest.raises(ValueError, match="mark_lost"):
        await store.put(A, "s", b"", meta(2, status="lost"))


async def test_fencing_refuses_a_stale_writer(backend: Backend) -> None:
    store = backend.store
    await store.put(A, "s", b"by holder 1", meta(1))
    await store.put(A, "s", b"by holder 2", meta(2, turns=5))
    with pytest.raises(StaleToken) as info:
        await store.put(A, "s", b"late write by holder 1", meta(1, turns=9))
    assert (info.value.token, info.value.stored) == (1, 2)
    with pytest.raises(StaleToken):
        await store.mark_lost(A, "s", "holder 1 thinks it died", token=1)
    snap = await store.get(A, "s")
    assert snap is not None and snap.blob == b"by holder 2" and snap.meta.turns == 5
    await store.put(A, "s", b"holder 2 again", meta(2))  # the same token writes again
    await store.mark_lost(A, "s", "deleted by the client", token=3)
    with pytest.raises(StaleToken):  # a deleted session stays deleted for older writers
        await store.put(A, "s", b"resurrected?", meta(2))


async def test_a_concurrent_reader_never_sees_a_partial_record(backend: Backend) -> None:
    store, reader = backend.store, backend.make()
    size = 200_000
    writes = 30
    done = asyncio.Event()
    seen: set[int] = set()

    def blob(i: int) -> bytes:
        return bytes([i % 251]) * (size - 997 * i)

    async def write() -> None:
        try:
            for i in range(writes):
                await store.put(A, "hot", blob(i), meta(1, turns=i))
        finally:
            done.set()

    async def read() -> None:
        while not done.is_set():
            snap = await reader.get(A, "hot")
            head = await reader.head(A, "hot")
            if snap is not None:
                # Blob and meta from the same write, whole (decode also checks the CRC).
                assert snap.blob == blob(snap.meta.turns)
                seen.add(snap.meta.turns)
            if head is not None:
                assert head.size == len(blob(head.turns))

    await asyncio.gather(write(), read(), read())
    assert len(seen) >= 2  # the readers really ran during the writes


async def test_a_damaged_record_is_reported_and_can_be_replaced(backend: Backend) -> None:
    store = backend.store
    for data in (b"", b"RLMS", b"not a record at all, just bytes", b"\x00" * 64):
        backend.write_raw(A, "bad", data)
        with pytest.raises(CorruptRecord):
            await store.get(A, "bad")
        with pytest.raises(CorruptRecord):
            await store.head(A, "bad")
    # A truncated blob fails its size and CRC check.
    await store.put(A, "cut", b"0123456789" * 100, meta(7))
    snap = await store.get(A, "cut")
    assert snap is not None
    good = await _raw_record(backend, store, "cut")
    backend.write_raw(A, "cut", good[:-10])
    with pytest.raises(CorruptRecord):
        await store.get(A, "cut")
    # A damaged record fences nothing: the session is marked lost (or reset) over it.
    await store.mark_lost(A, "bad", "record damaged", token=1)
    head = await store.head(A, "bad")
    assert head is not None and head.lost


async def _raw_record(backend: Backend, store: SnapshotStore, sid: str) -> bytes:
    if isinstance(store, FileStore):
        return (store.root / A / f"{sid}.snap").read_bytes()
    assert isinstance(store, S3Store)
    client = store._client
    obj = await asyncio.to_thread(client.get_object, Bucket=store.bucket, Key=store.key(A, sid))
    return bytes(obj["Body"].read())


def test_meta_rejects_bad_values_and_trims_names() -> None:
    with pytest.raises(ValueError, match="token"):
        SnapshotMeta(token=-1)
    with pytest.raises(ValueError, match="token"):
        SnapshotMeta(token=True)
    with pytest.raises(ValueError, match="trim_names"):
        SnapshotMeta(token=1, unpicklable=tuple(f"v{i}" for i in range(300)))
    names = trim_names([f"name{i}" * 100 for i in range(1000)])
    assert len(names) == 256 and all(len(n) == 200 for n in names)
    SnapshotMeta(token=1, unpicklable=names)
    bads: list[Any] = [None, [], {"v": 2}, {**SnapshotMeta(token=1).to_json(), "token": "1"}]
    for bad in bads:
        with pytest.raises(CorruptRecord):
            SnapshotMeta.from_json(bad)
    m = SnapshotMeta(token=4, turns=2, unpicklable=("a",), extra={"k": [1]})
    assert SnapshotMeta.from_json(m.to_json()) == m


# -- FileStore only -----------------------------------------------------------------------


async def test_file_store_leaves_private_files_and_no_temporaries(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s", max_blob_bytes=MAX_BLOB)
    for i in range(5):
        await store.put(A, "s", b"x" * i, meta())
    await store.mark_lost(A, "s", "gone", token=1)
    names = sorted(p.name for p in (tmp_path / "s" / A).iterdir())
    assert names == ["s.lock", "s.snap"]
    assert stat.S_IMODE((tmp_path / "s" / A / "s.snap").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "s" / A).stat().st_mode) == 0o700


async def test_file_store_failures_are_store_unavailable(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    store = FileStore(not_a_dir, max_blob_bytes=MAX_BLOB)
    with pytest.raises(StoreUnavailable, match="RLM_SESSION_STORE"):
        await store.put(A, "s", b"x", meta())
    with pytest.raises(StoreUnavailable):
        await store.get(A, "s")


# -- S3Store only -------------------------------------------------------------------------


@pytest.fixture
def bucket(moto_endpoint: str) -> tuple[Any, str]:
    client = _s3(moto_endpoint)
    name = f"rlm-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return client, name


async def test_s3_requests_server_side_encryption_and_keys_by_owner(
    bucket: tuple[Any, str],
) -> None:
    client, name = bucket
    store = S3Store(name, "/deep/prefix/", client=client, max_blob_bytes=MAX_BLOB)
    await store.put(A, "s1", b"state", meta())
    assert store.key(A, "s1") == f"deep/prefix/{A}/s1.snap"
    obj = client.head_object(Bucket=name, Key=f"deep/prefix/{A}/s1.snap")
    assert obj["ServerSideEncryption"] == "AES256"
    bare = S3Store(name, "", client=client)
    assert bare.key(A, "s1") == f"{A}/s1.snap"


@pytest.mark.parametrize("existing", [True, False])
async def test_s3_write_is_a_compare_and_swap(bucket: tuple[Any, str], existing: bool) -> None:
    """A newer holder writes between a stale writer's read and its PutObject: the
    conditional write (If-Match, or If-None-Match when there was no record) fails, the
    retry reads the newer token and refuses."""
    client, name = bucket
    store = S3Store(name, "p", client=client)
    newer = S3Store(name, "p", client=_s3(client.meta.endpoint_url))
    if existing:
        await store.put(A, "s", b"v1", meta(1))
    loop = asyncio.get_running_loop()
    sent: list[dict[str, str]] = []

    def interleave(request: Any, **_: Any) -> None:
        sent.append(dict(request.headers))
        if len(sent) == 1:  # in the SDK's thread, just before sending: the successor writes
            asyncio.run_coroutine_threadsafe(newer.put(A, "s", b"v2", meta(2)), loop).result()

    client.meta.events.register("before-send.s3.PutObject", interleave)
    try:
        with pytest.raises(StaleToken):
            await store.put(A, "s", b"stale", meta(1))
    finally:
        client.meta.events.unregister("before-send.s3.PutObject", interleave)
    assert len(sent) == 1
    assert ("If-Match" if existing else "If-None-Match") in sent[0]
    snap = await newer.get(A, "s")
    assert snap is not None and snap.blob == b"v2" and snap.meta.token == 2


async def test_s3_failures_are_store_unavailable(moto_endpoint: str) -> None:
    missing = S3Store("no-such-bucket-here", "p", client=_s3(moto_endpoint))
    with pytest.raises(StoreUnavailable, match="NoSuchBucket"):
        await missing.put(A, "s", b"x", meta())
    down = S3Store(
        "b",
        "",
        client=_s3(f"http://127.0.0.1:{free_port()}", retries={"max_attempts": 1}),
    )
    with pytest.raises(StoreUnavailable, match="RLM_SESSION_STORE"):
        await down.get(A, "s")


# -- open_store ---------------------------------------------------------------------------


@pytest.fixture
def machine_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A system directory and a user state directory under tmp_path."""
    system = tmp_path / "var-lib" / "rlm-py" / "sessions"
    monkeypatch.setattr(store_factory, "SYSTEM_STORE_DIR", system)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return system, tmp_path / "state" / "rlm-py" / "sessions"


def test_default_is_one_directory_per_machine(
    machine_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    system, _ = machine_dirs
    roots = set()
    for instance in ("rlm-py", "rlm-py-2", "blue"):
        monkeypatch.setenv("RLM_INSTANCE", instance)
        for url in (None, ""):
            store, leases = open_store(url, max_blob_bytes=MAX_BLOB)
            assert isinstance(store, FileStore) and isinstance(leases, FileLeases)
            assert store.max_blob_bytes == MAX_BLOB
            roots.add((store.root, leases.root))
    assert roots == {(system / "snapshots", system / "leases")}


def test_default_falls_back_to_the_user_state_directory(
    machine_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setattr(store_factory, "SYSTEM_STORE_DIR", blocker / "sessions")
    store, _ = open_store(None, max_blob_bytes=MAX_BLOB)
    assert isinstance(store, FileStore) and store.root == machine_dirs[1] / "snapshots"


def test_file_and_s3_urls(tmp_path: Path) -> None:
    store, leases = open_store(f"file://{tmp_path}/x", max_blob_bytes=5)
    assert isinstance(store, FileStore) and store.root == tmp_path / "x" / "snapshots"
    assert isinstance(leases, FileLeases) and (tmp_path / "x").is_dir()
    store, leases = open_store(
        "s3://my-bucket/rlm/sessions", lease_table="rlm-leases", region=REGION, max_blob_bytes=7
    )
    assert isinstance(store, S3Store) and isinstance(leases, DynamoLeases)
    assert (store.bucket, store.prefix, store.max_blob_bytes) == ("my-bucket", "rlm/sessions", 7)
    assert leases.table == "rlm-leases"
    # A lease table is used with a file store too (a directory shared between hosts).
    _, leases = open_store(
        f"file://{tmp_path}/y", lease_table="t-1", region=REGION, max_blob_bytes=1
    )
    assert isinstance(leases, DynamoLeases)


def test_s3_without_a_lease_table_names_the_setting() -> None:
    with pytest.raises(ValueError, match=LEASE_TABLE_SETTING):
        open_store("s3://my-bucket/p", max_blob_bytes=1)
    with pytest.raises(ValueError, match=LEASE_TABLE_SETTING):
        open_store("s3://my-bucket/p", lease_table="no spaces", region=REGION, max_blob_bytes=1)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/x",
        "/var/lib/x",
        "relative/dir",
        "file://host/dir",
        "file:relative",
        "file:///",
        "file:///d?x=1",
        "s3://",
        "s3://Bad_Bucket/p",
        "s3://b/../escape",
        "s3://bucket/a//b",
        "s3://bucket/p#frag",
        "ftp://x",
    ],
)
def test_bad_urls_name_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match=STORE_SETTING):
        open_store(url, lease_table="t-1", region=REGION, max_blob_bytes=1)


def test_an_unwritable_directory_is_refused_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=STORE_SETTING):
        open_store(f"file://{blocker}/sessions", max_blob_bytes=1)


def test_file_store_sees_other_processes(tmp_path: Path) -> None:
    """Records written by another OS process are read here (and the lock file format is
    plain flock, shared by every process on the machine)."""
    import subprocess
    import sys

    code = (
        "import asyncio, sys; from pathlib import Path;"
        "from service.store import FileStore, SnapshotMeta;"
        f"s = FileStore(Path(sys.argv[1]));"
        f"asyncio.run(s.put('{A}', 'x', b'from another process', SnapshotMeta(token=1, turns=1)))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    snap = asyncio.run(FileStore(tmp_path).get(A, "x"))
    assert snap is not None and snap.blob == b"from another process"
