"""The control API of a served node over HTTP: JSON under /api/v1, and the status page at /.

Flask builds the routes (`make_app`), waitress serves them from a thread of their own
(`ApiServer`), so a slow or stuck HTTP client never touches the data path: every request only
calls into the `ServiceCore`, which holds a lock for a few assignments. Reading is open (the
page, `status`, `config`, the frame); what changes something (`PUT config`, commands) needs the
bearer token when the server has one. docs/service_api.md describes every endpoint.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
from importlib import resources
from typing import Any

import waitress
from flask import Flask, Response, request
from waitress import wasyncore
from werkzeug.exceptions import HTTPException

from stream_node.deploy.api_token import load_token
from stream_node.deploy.run_states import COMMANDS, VALID_IN, Refused, ServiceCore
from stream_node.model.errors import ConfigError, StreamNodeError

__all__ = ["ApiServer", "load_token", "make_app"]

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_BODY = 1 << 20  # a settings object is a few hundred bytes; refuse anything absurd
PAGE_FILES = {"index.html": "text/html", "page.js": "text/javascript", "page.css": "text/css"}
# The page loads only its own files and images: nothing reaches outside the node.
CSP = ("default-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'")

ENDPOINTS = [
    {"method": "GET", "path": f"{PREFIX}/status", "auth": False,
     "returns": "the node's state, current run, last runs, settings, stages and counters"},
    {"method": "GET", "path": f"{PREFIX}/config", "auth": False,
     "returns": '{"config": {...}, "applies_to": "next run"}'},
    {"method": "PUT", "path": f"{PREFIX}/config", "auth": True,
     "body": 'a JSON object of settings, e.g. {"frames": 1000, "series": "lyso_01"}',
     "returns": '{"config": {...}, "applies_to": "next run"}'},
    *({"method": "POST", "path": f"{PREFIX}/command/{name}", "auth": True,
       "valid_in": [s.value for s in VALID_IN[name]]} for name in COMMANDS),
    {"method": "GET", "path": f"{PREFIX}/frame.png", "auth": False,
     "returns": "the newest frame as PNG; 204 while there is none"},
    {"method": "GET", "path": "/", "auth": False, "returns": "the status page"},
]


class Unauthorized(StreamNodeError):
    """A request that changes something came without the right bearer token."""


def _plain(value: Any) -> Any:
    """A stage's numpy scalar as the number it is; anything else JSON lacks as text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, default=_plain), status=status, headers=headers,
                    mimetype="application/json")


def _asset(name: str) -> bytes:
    return resources.files("stream_node.deploy").joinpath("page", name).read_bytes()


def make_app(core: ServiceCore, token: str | None = None) -> Flask:
    """The routes over `core`; with a `token`, changes need `Authorization: Bearer TOKEN`."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    expected = token.encode() if token else None

    def error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
        return _json({"error": message, "state": core.state.value}, status, headers)

    def authorise() -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected):
            raise Unauthorized("this needs the node's token: Authorization: Bearer TOKEN "
                               "(stream-node ctl --token-file PATH, or env STREAM_NODE_TOKEN)")

    @app.errorhandler(Unauthorized)
    def unauthorized(exc: Unauthorized) -> Response:
        return error(str(exc), 401, {"WWW-Authenticate": 'Bearer realm="stream-node"'})

    @app.errorhandler(Refused)
    def refused(exc: Refused) -> Response:
        return error(exc.reason, 409)

    @app.errorhandler(ConfigError)
    def bad_config(exc: ConfigError) -> Response:
        return error(str(exc), 400)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def failed(exc: Exception) -> Response:  # a node's hook failed: say what, keep serving
        log.exception("%s %s failed", request.method, request.path)
        return error(f"{type(exc).__name__}: {exc}", 500)

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    @app.get(f"{PREFIX}/")
    @app.get(f"{PREFIX}/openapi.json")
    def index() -> Response:
        return _json({"api": "v1", "node": core.node, "endpoints": ENDPOINTS,
                      "auth": "bearer" if expected else "none"})

    @app.get(f"{PREFIX}/status")
    def status() -> Response:
        return _json(core.status())

    @app.get(f"{PREFIX}/config")
    def get_config() -> Response:
        return _json({"config": core.config, "applies_to": "next run"})

    @app.put(f"{PREFIX}/config")
    def put_config() -> Response:
        authorise()
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise ConfigError('the body is a JSON object of settings, e.g. {"frames": 1000}')
        return _json(core.configure(body))

    @app.post(f"{PREFIX}/command/<name>")
    def command(name: str) -> Response:
        authorise()
        if name not in COMMANDS:
            return error(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}", 404)
        return _json(core.command(name))

    @app.get(f"{PREFIX}/frame.png")
    def frame() -> Response:
        png = core.frame_png()
        if png is None:
            return Response(status=204)
        return Response(png, mimetype="image/png")

    @app.get("/")
    def page() -> Response:
        return Response(_asset("index.html"), mimetype=PAGE_FILES["index.html"])

    @app.get("/<any(page.js, page.css):name>")
    def page_file(name: str) -> Response:
        return Response(_asset(name), mimetype=PAGE_FILES[name])

    return app


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ApiServer:
    """`make_app` served by waitress from a daemon thread; `port=0` takes a free port."""

    def __init__(self, core: ServiceCore, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, threads: int = 4) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise ConfigError(f"control API: cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}") from None
        if token is None and not _loopback(host):
            log.warning("control API on %s:%d has no token: anyone who reaches it can start "
                        "and stop runs (--token-file)", host, sock.getsockname()[1])
        self.host = host
        self.port: int = sock.getsockname()[1]
        self._server = waitress.create_server(make_app(core, token), sockets=[sock],
                                              threads=threads, ident="stream-node")
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="stream-node api",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self) -> None:
        try:
            self._server.run()
        finally:
            self._server.task_dispatcher.shutdown(timeout=2)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening, close every connection and join the thread (within `timeout_s`)."""
        if self._closed:
            return
        self._closed = True
        server = self._server
        # The loop owns its sockets: close them from inside it, woken by its trigger.
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("control API thread did not stop within %.0f s", timeout_s)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
