"""The boot-time secrets step (ami/roles/service/files/fetch_secrets.py) against moto's SSM."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from service.constants import SSM_OPENAI_API_KEY, SSM_RLM_API_KEYS

SCRIPT = Path(__file__).resolve().parents[2] / "ami/roles/service/files/fetch_secrets.py"
spec = importlib.util.spec_from_file_location("fetch_secrets", SCRIPT)
fetch_secrets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_secrets)

PAIRS = [f"OPENAI_API_KEY={SSM_OPENAI_API_KEY}", f"RLM_API_KEYS={SSM_RLM_API_KEYS}"]


@pytest.fixture
def ssm(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("ssm", region_name="eu-west-1")


def test_writes_a_root_only_env_file(ssm, tmp_path):
    ssm.put_parameter(Name=SSM_OPENAI_API_KEY, Value='sk-"quoted"\\x', Type="SecureString")
    ssm.put_parameter(Name=SSM_RLM_API_KEYS, Value="k1,k2", Type="SecureString")
    out = tmp_path / "secrets.env"

    assert fetch_secrets.main(["--output", str(out), *PAIRS], ssm=ssm) == 0

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text() == 'OPENAI_API_KEY="sk-\\"quoted\\"\\\\x"\nRLM_API_KEYS="k1,k2"\n'


def test_a_missing_parameter_is_left_out(ssm, tmp_path, capsys):
    ssm.put_parameter(Name=SSM_RLM_API_KEYS, Value="k1", Type="SecureString")
    out = tmp_path / "secrets.env"
    assert fetch_secrets.main(["--output", str(out), *PAIRS], ssm=ssm) == 0
    assert out.read_text() == 'RLM_API_KEYS="k1"\n'
    assert SSM_OPENAI_API_KEY in capsys.readouterr().err


def test_aws_errors_are_retried_then_fail(tmp_path):
    class Broken:
        def get_parameters(self, **_):
            raise ConnectionError("no route")

    sleeps = []
    out = tmp_path / "secrets.env"
    assert (
        fetch_secrets.main(["--output", str(out), *PAIRS], ssm=Broken(), sleep=sleeps.append) == 1
    )
    assert len(sleeps) == fetch_secrets.ATTEMPTS - 1
    assert not out.exists()


def test_region_from_environment_before_imds():
    def imds():
        raise AssertionError("IMDS must not be asked")

    assert fetch_secrets.resolve_region({"AWS_REGION": "eu-north-1"}, imds) == "eu-north-1"
    assert fetch_secrets.resolve_region({}, lambda: "ap-south-1") == "ap-south-1"


def test_imds_v2_token_then_region():
    import http.server
    import threading

    seen = []

    class IMDS(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            seen.append(
                ("PUT", self.path, self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"))
            )
            self._reply(b"TOKEN")

        def do_GET(self):
            seen.append(("GET", self.path, self.headers.get("X-aws-ec2-metadata-token")))
            self._reply(b"us-west-2")

        def _reply(self, body):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), IMDS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert fetch_secrets.imds_region(f"http://127.0.0.1:{server.server_port}") == "us-west-2"
    finally:
        server.shutdown()
    assert seen == [
        ("PUT", "/latest/api/token", "60"),
        ("GET", "/latest/meta-data/placement/region", "TOKEN"),
    ]


def test_line_breaks_are_refused():
    with pytest.raises(ValueError, match="line break"):
        fetch_secrets.render({"A": "x\ny"})
