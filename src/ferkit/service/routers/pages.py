"""The browser page (/) and the offline API docs (/docs), each with its own Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


def page_headers(html: str) -> dict[str, str]:
    """Content-Security-Policy of a page: its own inline script (by hash) and this server only; no framing."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
           "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


@cache
def _page(name: str) -> tuple[str, dict[str, str]]:
    html = (resources.files("ferkit.service") / "static" / name).read_text(encoding="utf-8")
    return html, page_headers(html)


@router.get("/")
async def index() -> HTMLResponse:
    html, headers = _page("index.html")
    return HTMLResponse(html, headers=headers)


@router.get("/docs")
async def docs() -> HTMLResponse:
    html, headers = _page("docs.html")
    return HTMLResponse(html, headers=headers)
