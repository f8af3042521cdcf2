"""``mmcontrast serve``: a small local web page to search a collection.

Type a query and see the nearest images with their captions and scores; drop an image and
see its neighbours. The page (``static/index.html``, plain HTML and JavaScript, nothing
fetched from elsewhere) talks to a JSON API that anything else may call too::

    GET  /                       the page
    GET  /api/info               {"collection", "model", "count", "k", "text"}
    GET  /api/search?q=TEXT&k=N  {"query", "k", "took_ms", "hits": [...]}
    POST /api/search_image?k=N   body: an image file's bytes; the same answer
    GET  /image/ROW              the image of collection row ROW (JPEG, at most 256 px)

A hit is :meth:`Hit.to_dict <mmcontrast.search.searcher.Hit.to_dict>` (``rank``,
``score``, ``row``, ``image_path``, ``caption``) plus ``image_url``. Every error answers
``{"error": MESSAGE}``: 400 for a bad query (an empty text, a bad ``k``, a file that is not
an image), 403 for a request addressed to another host name (below), 404 for an image that
is not there (or of a shared collection served without ``images``), 413 for an upload over
32 MiB.

The server is the standard library's threading HTTP server: no framework to install, and no
authentication, so it listens on 127.0.0.1 unless told otherwise (and warns when told).
Listening on a loopback address it answers only requests addressed to this machine by name
(``Host: localhost``, ``127.0.0.1`` or ``[::1]``, any port) and 403 to any other: a web
page elsewhere cannot rename itself to this server (DNS rebinding) and read its answers.
What it answers is :class:`~mmcontrast.search.serve_app.SearchApp`'s; this module carries
it over HTTP. Request lines are logged at debug level (``mmcontrast -v``).

Example:
    >>> server = make_server(Searcher.from_pretrained("collections/emoji"), port=0)  # doctest: +SKIP
    >>> server.url  # doctest: +SKIP
    'http://127.0.0.1:41234'
    >>> server.serve_forever()  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import socketserver
import webbrowser
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import torch

from mmcontrast.search.searcher import Searcher
from mmcontrast.search.serve_app import DEFAULT_K, MAX_K, Problem, SearchApp

__all__ = ["DEFAULT_HOST", "DEFAULT_K", "DEFAULT_PORT", "SearchApp", "make_server", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_UPLOAD = 32 * 2**20  # bytes of a query image
MAX_DISCARD = 256 * 2**20  # bytes of a refused upload read before answering
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # the Host names a loopback server answers


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the server's :class:`SearchApp`; every error answers JSON."""

    server: SearchServer
    server_version = "mmcontrast-search"
    timeout = 60  # seconds a client may stall mid-request before its thread gives up

    def do_GET(self) -> None:  # the name http.server calls
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        self._reply(lambda app: self._get(app, url.path, params))

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        self._reply(lambda app: self._post(app, url.path, params, self._body()))

    def _get(self, app: SearchApp, path: str, params: dict[str, list[str]]) -> None:
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", app.page)
        elif path == "/api/info":
            self._json(HTTPStatus.OK, app.info())
        elif path == "/api/search":
            query = params.get("q", [""])[0]
            self._json(HTTPStatus.OK, app.search_text(query, _k(params, app.k)))
        elif path.startswith("/image/"):
            number = path.removeprefix("/image/")
            if not _whole(number):
                raise Problem(
                    HTTPStatus.NOT_FOUND, f"no image {path}: use /image/ROW, ROW a hit's row"
                )
            body = app.thumbnail(int(number))
            self._send(HTTPStatus.OK, "image/jpeg", body, cache=True)
        else:
            raise Problem(HTTPStatus.NOT_FOUND, f"no page {path}: try / or /api/search?q=TEXT")

    def _post(self, app: SearchApp, path: str, params: dict[str, list[str]], body: bytes) -> None:
        if path != "/api/search_image":
            raise Problem(HTTPStatus.NOT_FOUND, f"no page {path}: POST images to /api/search_image")
        self._json(HTTPStatus.OK, app.search_image(body, _k(params, app.k)))

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not _whole(length):
            raise Problem(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length")
        size = int(length)
        if size > MAX_UPLOAD:
            self._discard(size)
            raise Problem(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the image is {size / 2**20:.1f} MiB, over the {MAX_UPLOAD / 2**20:g} MiB this "
                "page takes: send a smaller copy",
            )
        return self.rfile.read(size)

    def _discard(self, size: int) -> None:
        """Read a refused body (up to a bound): closing the connection on unread data would
        reset it, and the client would see a network error instead of the message."""
        left = min(size, MAX_DISCARD)
        while left > 0 and (chunk := self.rfile.read(min(left, 2**20))):
            left -= len(chunk)

    def _reply(self, handle: Callable[[SearchApp], None]) -> None:
        """Run ``handle``; turn a refusal or a failure into a JSON error."""
        self.close_connection = True
        try:
            self._check_host()
            app = self.server.app
            if app is None:
                raise Problem(HTTPStatus.SERVICE_UNAVAILABLE, "the collection is still loading")
            handle(app)
        except Problem as problem:
            self._json(problem.status, {"error": str(problem)})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            logger.debug("%s went away before the answer to %s", self.client_address[0], self.path)
        except Exception as err:  # a bug: the page shows it, the log has the traceback
            logger.exception("%s failed", self.requestline)
            message = f"the server failed on this request ({type(err).__name__}: {err})"
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})

    def _check_host(self) -> None:
        """Refuse a request not addressed to a loopback server by a loopback name."""
        host = self.headers.get("Host")
        if host is None or not is_local(self.server.host):
            return  # no Host: no browser sent it; a server open to the network is warned about
        host = host.strip().lower()
        name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host
        name = name.rpartition(":")[0] if ":" in name and not name.startswith("[") else name
        if name not in (*LOCAL_HOSTS, self.server.host, f"[{self.server.host}]"):
            raise Problem(
                HTTPStatus.FORBIDDEN,
                f"this server answers requests for localhost only, not for {host!r}: open "
                f"{self.server.url} (a page of another site cannot search it)",
            )

    def _json(self, status: HTTPStatus, value: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(value).encode())

    def _send(self, status: HTTPStatus, kind: str, body: bytes, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        logger.debug("%s " + format, self.client_address[0], *args)


def _whole(text: str) -> bool:
    """Whether ``text`` is ASCII digits only (``int`` refuses ``'²'``, which ``isdigit`` takes)."""
    return text.isascii() and text.isdigit()


def _k(params: dict[str, list[str]], default: int) -> int:
    """The ``k=`` of a request (default ``default``)."""
    text = params.get("k", [str(default)])[0].strip()
    if not _whole(text) or not 1 <= int(text) <= MAX_K:
        raise Problem(
            HTTPStatus.BAD_REQUEST, f"k must be a whole number from 1 to {MAX_K}, got {text!r}"
        )
    return int(text)


class SearchServer(ThreadingHTTPServer):
    """A threading HTTP server bound to ``host:port`` (0: a free port), serving ``app``.

    Raises:
        ValueError: The port is out of range or in use, or the host is not an address of
            this machine; the message says what to pass instead.
    """

    daemon_threads = True  # Ctrl-C does not wait for open connections

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be from 0 to 65535 (0: any free port), got {port!r}")
        self.host = host
        self.app: SearchApp | None = None
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _Handler)
        except OSError as err:
            raise ValueError(_bind_message(err, host, port)) from None

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (socket.getfqdn), which can hang
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.host, self.port

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host or "0.0.0.0"
        return f"http://{host}:{self.port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # what escapes a handler is a dropped connection, not worth a traceback on stderr
        logger.debug("request from %s failed", client_address, exc_info=True)


def _bind_message(err: OSError, host: str, port: int) -> str:
    if err.errno == errno.EADDRINUSE:
        return (
            f"port {port} is already in use on {host}: stop what is using it, or pick another "
            f"port (--port {port + 1 if port < 65535 else DEFAULT_PORT}, or --port 0 for any "
            "free one)"
        )
    if err.errno == errno.EACCES:
        return f"no permission to listen on port {port}: pick a port above 1023 (--port 8000)"
    if err.errno == errno.EADDRNOTAVAIL or isinstance(err, socket.gaierror):
        return (
            f"cannot listen on {host!r}: it is not an address of this machine ({err.strerror}); "
            f"use --host {DEFAULT_HOST} (this machine only) or --host 0.0.0.0 (every address)"
        )
    return f"cannot listen on {host}:{port}: {err}"


def is_local(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(
    searcher: Searcher,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    k: int = DEFAULT_K,
    images: str | Path | None = None,
) -> SearchServer:
    """A server for ``searcher`` bound to ``host:port`` (not yet serving: call
    ``serve_forever``, in a thread for tests; ``shutdown`` and ``server_close`` stop it).
    ``images``: the data the collection was embedded from (:class:`SearchApp`).

    Raises:
        ValueError: A bad ``k`` or ``images``, a port out of range or in use, a host not of
            this machine.
    """
    app = SearchApp(searcher, k, images)
    server = SearchServer(host, port)
    server.app = app
    return server


def serve(
    folder: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    k: int = DEFAULT_K,
    device: torch.device | str | None = None,
    open_browser: bool = False,
    announce: Callable[[str], None] = print,
    collection: str | None = None,
    revision: str | None = None,
    images: str | Path | None = None,
    model: str | None = None,
) -> None:
    """Serve the search page of ``folder`` until interrupted (Ctrl-C: ``KeyboardInterrupt``).

    The port is taken before the model loads, so a busy port fails at once.

    Args:
        folder: What :meth:`Searcher.from_pretrained` loads: a collection folder
            (``mmcontrast embed`` then ``mmcontrast index``), a model folder with a shared
            collection, or a Hub repository id.
        host: The address to listen on; anything but a loopback address is warned about.
        port: The port (0: any free one; the announced URL names it).
        k: Results per query unless the page asks for another number.
        device: Where the model runs (default: CUDA if available).
        open_browser: Open the page in the default web browser once it is served.
        announce: Called with the line saying where the page is.
        collection: Which collection of a model that carries several.
        revision: Branch, tag or commit of a Hub repository.
        images: The data the collection was embedded from, for its thumbnails: needed for a
            shared collection (whose data is never read from the name its manifest records),
            optional otherwise (data moved since it was embedded).
        model: Where the collection's model folder went, when it moved since embedding.

    Raises:
        ValueError: A bad port, host, ``k``, ``images`` or collection folder.
    """
    server = SearchServer(host, port)
    try:
        if not is_local(host):
            logger.warning(
                "listening on %s, not on this machine only: anyone who can reach port %d can "
                "search %s and see its images (the page has no authentication); --host %s "
                "keeps it local",
                host or "every address", server.port, folder, DEFAULT_HOST,
            )  # fmt: skip
        server.app = SearchApp(
            Searcher.from_pretrained(
                folder, model, device=device, collection=collection, revision=revision
            ),
            k,
            images,
        )
        announce(f"serving {folder} at {server.url} (Ctrl-C to stop)")
        if open_browser:
            webbrowser.open(server.url)
        server.serve_forever()
    finally:
        server.server_close()
