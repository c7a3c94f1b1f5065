"""The other end of the control API, with the standard library only (`stream-node ctl`).

Each HTTP outcome becomes the project's error that carries the right exit code: 409 is
`Refused` (2), 400 and 401 a `ConfigError` (5), an unreachable node a `PeerTimeout` (4), so a
DAQ script can tell "not now" from "wrong setting" from "nobody there".
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from stream_node.deploy.run_states import Refused
from stream_node.model.errors import ConfigError, PeerTimeout, StreamNodeError

PREFIX = "/api/v1"


def base_url(address: str) -> str:
    """`HOST:PORT` (or a full http:// URL) as the API's base URL."""
    address = address.strip().rstrip("/")
    if address.startswith(("http://", "https://")):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{address!r} is not HOST:PORT (e.g. daq1:8080 or [::1]:8080)")
    return f"http://{address}"


class ApiClient:
    """Calls one served node; every method returns the decoded JSON answer."""

    def __init__(self, address: str, token: str | None = None, timeout_s: float = 5.0
                 ) -> None:
        self.url = base_url(address)
        self.token = token
        self.timeout_s = timeout_s

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def config(self) -> dict[str, Any]:
        return self._call("GET", "/config")

    def configure(self, updates: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", "/config", updates)

    def command(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/command/{name}")

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + PREFIX + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        except urllib.error.URLError as exc:
            raise PeerTimeout(f"cannot reach {self.url}: {exc.reason}; is the node served "
                              "there (stream-node serve) and the port right?") from None
        except (TimeoutError, ConnectionError) as exc:
            raise PeerTimeout(f"{self.url} did not answer within {self.timeout_s:g} s "
                              f"({exc})") from None
        except ValueError as exc:  # not JSON: something else listens there
            raise StreamNodeError(f"{self.url} answered, but not as the stream-node API "
                                  f"({exc})") from None


def _error(exc: urllib.error.HTTPError) -> StreamNodeError:
    try:
        message = json.loads(exc.read() or b"{}").get("error") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    if exc.code == 409:
        return Refused(str(message))
    if exc.code in (400, 401):
        return ConfigError(str(message))
    return StreamNodeError(f"HTTP {exc.code}: {message}")
