"""/ui: a read-only page of the caller's jobs, plain HTML and a little JavaScript (no build step,
nothing from another origin). The page asks for an API key, keeps it in the tab's
sessionStorage and sends it as a Bearer header; it is never put in a URL or a cookie."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(tags=["ui"])

_COMMON = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# A report runs nothing and loads nothing: its plots are inline SVG, its style one inline block.
REPORT_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'; sandbox"
)
REPORT_HEADERS = _COMMON | {"Content-Security-Policy": REPORT_POLICY}
# The page runs its own script only and talks to this origin only; a report it shows sits in a
# sandboxed frame that inherits this policy, hence the inline styles.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; frame-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = _COMMON | {"Content-Security-Policy": PAGE_POLICY, "X-Frame-Options": "DENY"}


@cache
def _asset(name: str) -> bytes:
    return (resources.files("service") / "static" / name).read_bytes()


@router.get(
    "/ui", response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The page"}},
)
async def page() -> HTMLResponse:
    """A read-only page of your jobs: status, live progress, reports, cancel. Paste an API key
    into it; the key stays in the browser tab and travels only in the Authorization header."""
    return HTMLResponse(_asset("ui.html"), headers=PAGE_HEADERS)


@router.get("/ui/app.js", include_in_schema=False)
async def script() -> Response:
    return Response(_asset("app.js"), media_type="text/javascript", headers=PAGE_HEADERS)


@router.get("/ui/app.css", include_in_schema=False)
async def style() -> Response:
    return Response(_asset("app.css"), media_type="text/css", headers=PAGE_HEADERS)
