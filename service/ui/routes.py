"""Serve the trajectory viewer: ``GET /ui`` (the page) and ``GET /ui/static/{name}``.

The files are public and hold no data; every run and session the page shows comes from the
``/v1`` APIs, which check the caller's key. Model output is hostile, so the page is sent
with a Content-Security-Policy that allows only this origin's own scripts and styles: even
a rendering bug could not run injected markup.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|html)$")
_MEDIA = {"js": "text/javascript", "css": "text/css", "html": "text/html"}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    # Small files, changed with the service: always revalidate rather than serve a stale page.
    "cache-control": "no-cache",
}


def _file(name: str) -> FileResponse:
    match = _NAME_RE.match(name)
    path = STATIC_DIR / name
    if match is None or not path.is_file():
        raise NotFound(f"no viewer file {name!r}")
    # Starlette adds "; charset=utf-8" to text/* types.
    return FileResponse(path, media_type=_MEDIA[match.group(1)], headers=SECURITY_HEADERS)


@router.get("/ui")
async def index() -> FileResponse:
    """The viewer page; it asks for the API key itself and keeps it in sessionStorage."""
    return _file("index.html")


@router.get("/ui/")
async def index_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/static/{name}")
async def static_file(name: str) -> FileResponse:
    return _file(name)
