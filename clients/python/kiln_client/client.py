"""kiln's HTTP API from Python, with the standard library only.

Configuration comes from the arguments, else the environment: ``KILN_URL``
(default ``http://127.0.0.1:7878``) and ``KILN_API_KEY`` (none: a server in
``kiln serve --dev`` mode on loopback needs no key).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Union

DEFAULT_URL = "http://127.0.0.1:7878"
#: Seconds a request may take on the wire; executions are bounded by the
#: server's wall-clock limit, this only catches a server that stopped answering.
DEFAULT_TIMEOUT = 300.0

Bytes = Union[bytes, bytearray, memoryview]


class KilnError(Exception):
    """The server refused a request (``status`` is the HTTP status, 0 when it
    could not be reached)."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.body = body


@dataclass
class ExecutionError:
    """The exception the code raised."""

    name: str
    value: str
    traceback: List[str]

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass
class ExecutionResult:
    """The whole answer to one execution (see kiln's ExecutionResult)."""

    outcome: str
    events: List[Dict[str, Any]]
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    usage: Dict[str, Any] = field(default_factory=dict)
    limits_hit: List[str] = field(default_factory=list)
    truncated: bool = False
    isolation: Dict[str, Any] = field(default_factory=dict)
    session_ended: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ExecutionResult":
        return cls(
            outcome=doc.get("outcome", ""),
            events=list(doc.get("events") or []),
            exit_code=doc.get("exit_code"),
            reason=doc.get("reason"),
            usage=dict(doc.get("usage") or {}),
            limits_hit=list(doc.get("limits_hit") or []),
            truncated=bool(doc.get("truncated")),
            isolation=dict(doc.get("isolation") or {}),
            session_ended=bool(doc.get("session_ended")),
            raw=dict(doc),
        )

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def stdout(self) -> str:
        return "".join(e.get("text", "") for e in self.events if e.get("type") == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(e.get("text", "") for e in self.events if e.get("type") == "stderr")

    @property
    def error(self) -> Optional[ExecutionError]:
        for e in self.events:
            if e.get("type") == "error":
                return ExecutionError(e.get("name", ""), e.get("value", ""), list(e.get("traceback") or []))
        return None

    @property
    def displays(self) -> List[Dict[str, str]]:
        """Every rich output's MIME bundle, in order."""
        return [dict(e.get("data") or {}) for e in self.events if e.get("type") == "display"]

    @property
    def images(self) -> List[bytes]:
        """The PNG images (charts), decoded."""
        return [base64.b64decode(d["image/png"]) for d in self.displays if "image/png" in d]

    @property
    def tables(self) -> List[str]:
        """The HTML outputs (pandas tables and the like), as the sandbox wrote
        them: untrusted HTML, never to be put into a page unescaped."""
        return [d["text/html"] for d in self.displays if "text/html" in d]

    @property
    def files(self) -> Dict[str, bytes]:
        """Files the code wrote under ``/work/out``, by path."""
        return {
            e.get("path", ""): base64.b64decode(e.get("data_b64", ""))
            for e in self.events
            if e.get("type") == "file"
        }

    def raise_for_outcome(self) -> "ExecutionResult":
        """Raises :class:`ExecutionFailed` unless the outcome is ``ok``."""
        if not self.ok:
            raise ExecutionFailed(self)
        return self


class ExecutionFailed(Exception):
    def __init__(self, result: ExecutionResult):
        detail = str(result.error) if result.error else (result.reason or "")
        super().__init__(f"execution ended {result.outcome}" + (f": {detail}" if detail else ""))
        self.result = result


def _encode_files(files: Optional[Mapping[str, Union[Bytes, str]]]) -> List[Dict[str, str]]:
    out = []
    for path, data in (files or {}).items():
        if isinstance(data, str):
            data = data.encode()
        out.append({"path": path, "data_b64": base64.b64encode(bytes(data)).decode("ascii")})
    return out


def _sse(resp) -> Iterator[tuple]:
    """(event name, data) pairs of a text/event-stream response."""
    name, data = "message", []
    for raw in resp:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        fld, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if fld == "event":
            name = value
        elif fld == "data":
            data.append(value)
    if data:
        yield name, "\n".join(data)


class Client:
    """A connection to one kiln server (stateless; safe to share)."""

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT):
        self.url = (url or os.environ.get("KILN_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("KILN_API_KEY")
        self.api_key = key or None
        self.timeout = timeout

    # -- plumbing --
    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Optional[bytes] = None,
        content_type: Optional[str] = None,
        accept: str = "application/json",
    ):
        headers = {"Accept": accept, "User-Agent": "kiln-client-python"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise _http_error(e) from None
        except urllib.error.URLError as e:
            raise KilnError(0, f"cannot reach kiln at {self.url}: {e.reason}") from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        with self._request(method, path, json_body=body) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def _execute(self, path: str, body: Dict[str, Any], on_event: Optional[Callable[[Dict[str, Any]], None]]) -> ExecutionResult:
        if on_event is None:
            return ExecutionResult.from_json(self._json("POST", path, body))
        with self._request("POST", path, json_body=body, accept="text/event-stream") as resp:
            if "text/event-stream" not in (resp.headers.get("Content-Type") or ""):
                result = ExecutionResult.from_json(json.loads(resp.read()))
                for ev in result.events:
                    on_event(ev)
                return result
            for name, data in _sse(resp):
                doc = json.loads(data)
                if name == "end":
                    return ExecutionResult.from_json(doc)
                doc.setdefault("type", name)
                on_event(doc)
        raise KilnError(0, "the event stream ended without a result")

    # -- the API --
    def health(self) -> Any:
        return self._json("GET", "/v1/health")

    def policy(self) -> Any:
        return self._json("GET", "/v1/policy")

    def metrics(self) -> str:
        with self._request("GET", "/metrics", accept="text/plain") as resp:
            return resp.read().decode()

    def execute(
        self,
        code: str,
        files: Optional[Mapping[str, Union[Bytes, str]]] = None,
        limits: Optional[Mapping[str, Any]] = None,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
        environment: Optional[str] = None,
        libraries: Optional[List[str]] = None,
    ) -> ExecutionResult:
        """Runs ``code`` once in a fresh sandbox. ``on_event`` streams the
        events (Server-Sent Events) as they happen. ``environment`` names a
        policy environment; ``libraries`` (``"pandas"`` or ``"pandas==1.5.3"``)
        must be allowed by it, else :class:`KilnError` 422 ``rejected``."""
        body: Dict[str, Any] = {"code": code}
        if files:
            body["files"] = _encode_files(files)
        if limits:
            body["limits"] = dict(limits)
        if environment:
            body["environment"] = environment
        if libraries:
            body["libraries"] = list(libraries)
        return self._execute("/v1/execute", body, on_event)

    def sessions(self) -> Any:
        return self._json("GET", "/v1/sessions")

    def sandbox(self, **options: Any) -> "Sandbox":
        return Sandbox(client=self, **options)


def _http_error(e: urllib.error.HTTPError) -> KilnError:
    try:
        raw = e.read()
    except Exception:  # the body is a courtesy
        raw = b""
    body: Any = raw.decode("utf-8", "replace")
    message = body or e.reason
    try:
        body = json.loads(raw)
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, dict):
            message = err.get("message") or err.get("reason") or json.dumps(err)
        elif isinstance(err, str):
            message = err
    except ValueError:
        pass
    return KilnError(e.code, str(message), body)


class Sandbox:
    """A kiln session: one sandbox that keeps its variables and ``/work``
    between runs, until :meth:`close` (or its idle timeout or lifetime).

    >>> with Sandbox() as sb:
    ...     sb.run_code("x = 41")
    ...     print(sb.run_code("print(x + 1)").stdout)
    """

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        limits: Optional[Mapping[str, Any]] = None,
        env: Optional[Mapping[str, str]] = None,
        files: Optional[Mapping[str, Union[Bytes, str]]] = None,
        datasets: Optional[List[str]] = None,
        environment: Optional[str] = None,
        libraries: Optional[List[str]] = None,
        idle_timeout_s: Optional[int] = None,
        max_lifetime_s: Optional[int] = None,
        timeout: float = DEFAULT_TIMEOUT,
        client: Optional[Client] = None,
    ):
        self.client = client or Client(url, api_key, timeout)
        body: Dict[str, Any] = {}
        if limits:
            body["limits"] = dict(limits)
        if env:
            body["env"] = dict(env)
        if files:
            body["files"] = _encode_files(files)
        if datasets:
            body["datasets"] = list(datasets)
        if environment:
            body["environment"] = environment
        if libraries:
            body["libraries"] = list(libraries)
        if idle_timeout_s is not None:
            body["idle_timeout_s"] = idle_timeout_s
        if max_lifetime_s is not None:
            body["max_lifetime_s"] = max_lifetime_s
        self.info: Dict[str, Any] = self.client._json("POST", "/v1/sessions", body)
        self.id: str = self.info["id"]
        self.closed = False

    def _path(self, suffix: str = "") -> str:
        return "/v1/sessions/" + urllib.parse.quote(self.id, safe="") + suffix

    @staticmethod
    def _file_path(path: str) -> str:
        path = path[len("/work/"):] if path.startswith("/work/") else path
        return "/files/" + urllib.parse.quote(path, safe="/")

    def run_code(
        self,
        code: str,
        files: Optional[Mapping[str, Union[Bytes, str]]] = None,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> ExecutionResult:
        """Runs ``code`` in the session (notebook semantics: the value of a
        last expression is displayed). ``on_event`` streams the events."""
        body: Dict[str, Any] = {"code": code}
        if files:
            body["files"] = _encode_files(files)
        result = self.client._execute(self._path("/executions"), body, on_event)
        if result.session_ended:
            self.closed = True
        return result

    def upload(self, path: str, data: Union[Bytes, str]) -> None:
        """Writes ``data`` to ``/work/<path>`` in the session."""
        if isinstance(data, str):
            data = data.encode()
        with self.client._request(
            "PUT", self._path(self._file_path(path)), data=bytes(data), content_type="application/octet-stream"
        ) as resp:
            resp.read()

    def download(self, path: str) -> bytes:
        """The bytes of the regular file ``/work/<path>``."""
        with self.client._request("GET", self._path(self._file_path(path)), accept="application/octet-stream") as resp:
            return resp.read()

    def interrupt(self) -> None:
        """Interrupts the running execution (it ends ``interrupted``)."""
        with self.client._request("POST", self._path("/interrupt"), data=b"") as resp:
            resp.read()

    def status(self) -> Dict[str, Any]:
        self.info = self.client._json("GET", self._path())
        return self.info

    def close(self) -> None:
        """Ends the session; nothing of it remains. Closing twice is harmless."""
        if self.closed:
            return
        self.closed = True
        try:
            with self.client._request("DELETE", self._path()) as resp:
                resp.read()
        except KilnError as e:
            if e.status != 404:  # already gone (timed out or ended)
                raise

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, url={self.client.url!r})"
