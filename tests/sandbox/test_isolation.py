"""Escape attempts against a gVisor sandbox, run through Docker and by runsc directly: every
one of them must fail."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox.config import SandboxConfig
from sandbox.handle import SandboxHandle
from sandbox.pool import launch

from .conftest import assert_no_leak

FAKE_KEY = "sk-test-must-never-reach-the-sandbox-0123456789"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def box(
    contained_cfg: SandboxConfig, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SandboxHandle]:
    # The service process holds secrets in its environment; none may cross into the sandbox.
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("RLM_API_KEYS", "client-secret-key")
    handle = await launch(contained_cfg)
    try:
        yield handle
    finally:
        await handle.close()


async def run(box: SandboxHandle, code: str) -> str:
    r = await box.exec(code)
    assert r.error is None, r.stderr
    return r.stdout.strip()


async def test_no_secret_in_the_environment(box: SandboxHandle) -> None:
    env = await run(box, "import os\nprint(sorted(os.environ.items()))")
    assert "OPENAI" not in env and FAKE_KEY not in env and "client-secret-key" not in env
    out = await run(
        box,
        "import glob\n"
        "hits = []\n"
        "for p in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        hits.append(open(p, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
        "blob = b'\\n'.join(hits)\n"
        "print(len(hits), b'OPENAI' in blob, b'sk-test' in blob)",
    )
    count, has_name, has_key = out.split()
    assert int(count) >= 1 and (has_name, has_key) == ("False", "False")
    out = await run(box, "open('/proc/1/environ', 'rb').read()")
    assert "OPENAI" not in out and FAKE_KEY not in out


async def test_host_files_are_not_mounted(box: SandboxHandle) -> None:
    paths = [str(REPO), str(REPO / ".env"), str(REPO / "pyproject.toml"), "/work",
             "/etc/docker/daemon.json", "/var/run/docker.sock", "/run/docker.sock"]  # fmt: skip
    out = await run(box, f"import os\n[os.path.exists(p) for p in {paths!r}]")
    assert out == repr([False] * len(paths))
    mounts = await run(box, "print(open('/proc/self/mounts').read())")
    assert "docker.sock" not in mounts and "/work" not in mounts


@pytest.mark.parametrize(
    "address",
    [("1.1.1.1", 53), ("8.8.8.8", 443), ("172.17.0.1", 2375), ("127.0.0.1", 22)],
    ids=["outside-dns", "outside-https", "docker-host-bridge", "loopback"],
)
async def test_no_network(box: SandboxHandle, address: tuple[str, int]) -> None:
    out = await run(
        box,
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(2)\n"
        "try:\n"
        f"    s.connect({address!r})\n"
        "    print('CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n",
    )
    assert out.startswith("refused"), out


async def test_only_loopback_interface_and_no_dns(box: SandboxHandle) -> None:
    out = await run(
        box,
        "import socket\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 443)\n"
        "    print('RESOLVED')\n"
        "except OSError as exc:\n"
        "    print('no dns')\n",
    )
    ifaces, dns = out.splitlines()
    assert ifaces in ("['lo']", "[]") and dns == "no dns"


async def test_root_filesystem_is_read_only(box: SandboxHandle) -> None:
    for path in (
        "/usr/evil",
        "/usr/lib/python3/dist-packages/evil.py",
        "/opt/rlm/sandbox/worker.py",
        "/etc/passwd",
    ):
        out = await run(
            box,
            "try:\n"
            f"    open({path!r}, 'a').write('x')\n"
            "    print('WROTE')\n"
            "except OSError as exc:\n"
            "    print(exc.errno)\n",
        )
        assert out != "WROTE", path
        assert int(out) in (1, 13, 30), (path, out)  # EPERM, EACCES, EROFS
    assert await run(box, "open('/tmp/ok', 'w').write('fine')") == "4"


async def test_unprivileged_and_no_capabilities(box: SandboxHandle) -> None:
    out = await run(box, "import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())")
    uid, euid, gid, *_ = out.split(maxsplit=3)
    assert (uid, euid, gid) == ("10001", "10001", "10001")
    status = await run(box, "print(open('/proc/self/status').read())")
    caps = {
        k: v.strip()
        for k, v in (line.split(":", 1) for line in status.splitlines() if line.startswith("Cap"))
    }
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(caps.get(name, "0"), 16) == 0, (name, caps)
    assert "NoNewPrivs:\t1" in status or "NoNewPrivs: 1" in status or "NoNewPrivs" not in status
    out = await run(
        box,
        "import os\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    print('ROOT')\n"
        "except OSError as exc:\n"
        "    print('denied', exc.errno)\n",
    )
    assert out.startswith("denied")


async def test_host_processes_are_not_visible(box: SandboxHandle) -> None:
    out = await run(
        box,
        "import os\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "cmds = [open(f'/proc/{p}/cmdline', 'rb').read() for p in pids]\n"
        "print(pids)\n"
        "print(cmds)",
    )
    pids, cmds = out.splitlines()
    # The fork server (pid 1), the live REPL and its parked spare: every one the worker.
    assert set(eval(pids)) <= {1, 2, 3, 4} and 1 in eval(pids), pids  # noqa: S307 - our own repr
    assert "dockerd" not in cmds and "pytest" not in cmds and "import worker" in cmds
    assert all(b"import worker" in c for c in eval(cmds)), cmds  # noqa: S307
    assert os.getpid() != 1


async def test_other_sessions_are_invisible(
    contained_cfg: SandboxConfig, box: SandboxHandle
) -> None:
    other = await launch(contained_cfg)
    try:
        await other.exec("other_secret = 'session B data'\nstate_set('b', 'B state')")
        assert await other.get_var("other_secret") == "session B data"
        out = await run(
            box,
            "import os, glob\n"
            "print(globals().get('other_secret'), state_keys())\n"
            "found = []\n"
            "for p in glob.glob('/tmp/**', recursive=True) + glob.glob('/proc/*/cmdline'):\n"
            "    try:\n"
            "        if os.path.isfile(p) and b'session B' in open(p, 'rb').read():\n"
            "            found.append(p)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(found)",
        )
        assert out.splitlines() == ["None []", "[]"]
        assert await box.get_var("other_secret") is None
    finally:
        ids = [getattr(h.process, "id", "") for h in (other, box)]
        await other.close()
        await box.close()
    await assert_no_leak(ids)
