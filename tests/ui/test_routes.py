"""service/ui/routes.py over real HTTP: public static files, protected data, strict headers."""

from __future__ import annotations

import re

import httpx
import pytest

from service.ui.routes import STATIC_DIR
from tests.ui.conftest import Service


def test_page_and_files_are_public_with_a_strict_policy(viewer_service: Service) -> None:
    page = httpx.get(f"{viewer_service.base_url}/ui", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, media in [
        ("app.js", "text/javascript"),
        ("trajectory.js", "text/javascript"),
        ("style.css", "text/css"),
    ]:
        r = httpx.get(f"{viewer_service.base_url}/ui/static/{name}", timeout=10)
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(media)
    slash = httpx.get(f"{viewer_service.base_url}/ui/", timeout=10)
    assert slash.status_code == 308 and slash.headers["location"] == "/ui"


@pytest.mark.parametrize(
    "name", ["missing.js", "..%2Fapp.py", "%2E%2E%2Froutes.py", "routes.py", ".hidden.js"]
)
def test_only_shipped_files_are_served(viewer_service: Service, name: str) -> None:
    r = httpx.get(f"{viewer_service.base_url}/ui/static/{name}", timeout=10)
    assert r.status_code == 404
    assert r.json()["error"]["message"].startswith("no ")


def test_data_needs_the_key(viewer_service: Service) -> None:
    r = httpx.get(f"{viewer_service.base_url}/v1/sessions", timeout=10)
    assert r.status_code == 401
    ok = httpx.get(
        f"{viewer_service.base_url}/v1/sessions",
        headers={"Authorization": "Bearer test-key"},
        timeout=10,
    )
    assert ok.status_code == 200


def test_scripts_never_parse_data_as_markup() -> None:
    """Data reaches the page only as text nodes; nothing in the viewer turns strings into markup or code."""
    banned = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setAttribute\(\s*[\"']on"
    )
    for path in STATIC_DIR.glob("*.js"):
        hits = [line for line in path.read_text().splitlines() if banned.search(line)]
        assert hits == [], f"{path.name}: {hits}"
    html = (STATIC_DIR / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # no CDN: works offline
