"""The bake's builder script run for real under dash, the `sh` of Ubuntu 24.04.

AWS-RunShellScript writes the commands, one a line, to a script without a shebang and runs
it with `sh`. Here the same text runs under /usr/bin/dash with every command that would reach
the network or this machine's services (cloud-init, systemctl, curl, apt-get, python3 and the
venv's pip and ansible-playbook) replaced by a stub that logs its arguments; the file system
work (tar, rm, truncate, ln) is real, inside a scratch root. Each stub fails on demand, so the
script is shown to stop at the first failing step with a non-zero status.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ami import bake
from ami.constants import ANSIBLE_CORE_VERSION

# Essential on Debian and Ubuntu (their /bin/sh): missing means a broken test machine, which
# fails here rather than skipping the one check that matches the builder's shell.
DASH = shutil.which("dash")
NO_DASH = "dash not found: apt-get install -y dash (Debian's and Ubuntu's /bin/sh)"

STUB = """#!/bin/sh
echo "{name} $*" >> "$STUB_LOG"
if [ "${{FAIL_AT:-}}" = "{name}" ]; then exit 3; fi
{body}
exit 0
"""
# python3 -m venv DIR makes DIR/bin/pip and DIR/bin/ansible-playbook stubs; curl -o FILE
# writes the test's tarball; ansible-playbook checks that it runs in the unpacked repo.
BODIES = {
    "python3": '[ "$1" = "-m" ] && [ "$2" = venv ] && mkdir -p "$3/bin" && '
    'cp "$STUB_DIR/pip" "$STUB_DIR/ansible-playbook" "$3/bin/"',
    "curl": 'while [ $# -gt 0 ]; do if [ "$1" = -o ]; then cp "$TARBALL" "$2"; fi; shift; done',
    "ansible-playbook": "[ -f ami/playbook.yml ] || exit 4",
}
STUBBED = ("cloud-init", "systemctl", "curl", "apt-get", "python3", "pip", "ansible-playbook")


def test_dash_is_a_real_dash_that_refuses_pipefail():
    """What broke the bake: `set -o pipefail` is an illegal option to dash 0.5.12."""
    assert DASH is not None, NO_DASH
    result = subprocess.run([DASH, "-c", "set -euxo pipefail; echo reached"], capture_output=True)
    assert result.returncode != 0 and b"reached" not in result.stdout


@pytest.fixture
def builder(tmp_path: Path) -> dict[str, object]:
    root = tmp_path / "root"
    for directory in ("opt", "etc/rlm-py", "var/lib/dbus"):
        (root / directory).mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/rlm-py/secrets.env").write_text('OPENAI_API_KEY="left by a test run"\n')
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in STUBBED:
        path = stubs / name
        path.write_text(STUB.format(name=name, body=BODIES.get(name, "")))
        path.chmod(0o755)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"---\n"
        info = tarfile.TarInfo("ami/playbook.yml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tarball = tmp_path / "repo.tar.gz"
    tarball.write_bytes(buffer.getvalue())
    script = tmp_path / "_script.sh"  # what the agent writes: the commands, one a line
    lines = bake.provision_script(
        "https://bucket.s3.amazonaws.com/repo.tar.gz?X-Amz-Signature=abc&b=c",
        {"gvisor_source": "apt", "rlm_stack": "dev"},
        root=str(root),
    )
    script.write_text("\n".join(lines) + "\n")
    return {"root": root, "stubs": stubs, "tarball": tarball, "script": script}


def run(builder: dict[str, object], fail_at: str | None = None) -> tuple[int, list[str], str]:
    log = Path(str(builder["root"])).parent / "stub.log"
    env = {
        "PATH": f"{builder['stubs']}:/usr/bin:/bin",
        "STUB_LOG": str(log),
        "STUB_DIR": str(builder["stubs"]),
        "TARBALL": str(builder["tarball"]),
        "FAIL_AT": fail_at or "",
    }
    assert DASH is not None, NO_DASH
    result = subprocess.run(
        [DASH, str(builder["script"])], env=env, capture_output=True, text=True, timeout=60
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result.returncode, calls, result.stderr


def test_the_script_runs_to_the_end_under_dash(builder):
    status, calls, trace = run(builder)
    assert status == 0, trace
    assert [call.split()[0] for call in calls] == [
        "cloud-init",
        "systemctl",
        "systemctl",
        "curl",
        "apt-get",
        "apt-get",
        "python3",
        "pip",
        "ansible-playbook",
        "apt-get",
        "cloud-init",
    ]
    assert "apt-get -o DPkg::Lock::Timeout=600 update -q" in calls
    assert f"pip install -q ansible-core=={ANSIBLE_CORE_VERSION}" in calls
    [playbook] = [c for c in calls if c.startswith("ansible-playbook")]
    assert "-i localhost, -c local ami/playbook.yml" in playbook
    assert "-e rlm_stack=dev" in playbook
    root = Path(str(builder["root"]))
    # Nothing of the bake is left in the image, and each instance gets its own machine id.
    assert not (root / "opt/rlm-py-src").exists() and not (root / "opt/ansible-venv").exists()
    assert not (root / "etc/rlm-py/secrets.env").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert "+ set" not in trace and "Illegal option" not in trace


@pytest.mark.parametrize(
    ("fail_at", "calls_made"),
    [("curl", 4), ("apt-get", 5), ("pip", 8), ("ansible-playbook", 9), ("cloud-init", 1)],
)
def test_a_failing_step_stops_the_script_with_a_non_zero_status(builder, fail_at, calls_made):
    status, calls, _ = run(builder, fail_at=fail_at)
    if fail_at == "cloud-init":
        # `cloud-init status --wait` may report a degraded boot; that is not a failure, but the
        # final `cloud-init clean` is.
        assert status != 0 and len(calls) == 11
        return
    assert status != 0
    assert len(calls) == calls_made, calls
    assert calls[-1].startswith(fail_at)
    # It stopped there: the image was not cleaned up as if all had gone well.
    assert (Path(str(builder["root"])) / "etc/machine-id").read_text() != ""
