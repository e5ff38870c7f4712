"""The web console's static files (``engram/http/console/``), served at ``/`` and ``/console/...``.

The files ship in the package and nothing else is served: the set of names is read once from the
package folder, so a path that is not one of them (``..``, an absolute path, an encoded slash) is
a plain 404 and never reaches the filesystem. Every answer carries the console's strict headers:
scripts and styles only from this origin (no inline script, no ``eval``), no framing, no
referrer, no content sniffing. The page itself needs no token; everything it shows comes from
``/rpc`` and ``/v1/events`` with the token the user enters (docs/console.md).
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePosixPath

from starlette.requests import Request as HttpRequest
from starlette.responses import Response

__all__ = ["CONSOLE_HEADERS", "ConsoleSite"]

PACKAGE = "engram.http"
FOLDER = "console"

# connect-src 'self': the page talks to /rpc and /v1/events of its own origin and nowhere else.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
CONSOLE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidated, so an upgraded daemon serves its own files at once
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MEDIA = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _load() -> dict[str, tuple[bytes, str]]:
    """Every console file by name, with its media type: read once, at start (a few dozen KB)."""
    folder = resources.files(PACKAGE).joinpath(FOLDER)
    files: dict[str, tuple[bytes, str]] = {}
    for item in folder.iterdir():
        suffix = PurePosixPath(item.name).suffix
        if item.is_file() and suffix in MEDIA:
            files[item.name] = (item.read_bytes(), MEDIA[suffix])
    return files


class ConsoleSite:
    def __init__(self) -> None:
        self.files = _load()

    def _answer(self, name: str) -> Response:
        found = self.files.get(name)
        if found is None:
            return Response(b"not found\n", 404, headers=CONSOLE_HEADERS, media_type="text/plain; charset=utf-8")
        body, media = found
        return Response(body, 200, headers=CONSOLE_HEADERS, media_type=media)

    async def index(self, request: HttpRequest) -> Response:
        return self._answer("index.html")

    async def asset(self, request: HttpRequest) -> Response:
        return self._answer(request.path_params["name"])
