"""A real `kiln serve` (with API keys) on a free loopback port, shared by the
agent-integration tests (MCP over HTTP, the E2B-compatible API), and the
path of the `kiln` binary for `kiln mcp` over stdio.

The binary is `KILN_BIN` (default `target/debug/kiln` from the repository
root). The clients are the official ones (PyPI `mcp`, `e2b-code-interpreter`),
installed by .ci/run at pinned versions.
"""

import atexit
import hashlib
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Two keys: the tests act as `agent`; `other` proves ownership.
SECRET = "kiln-agent-test-secret"
OTHER_SECRET = "kiln-other-test-secret"


def kiln_bin():
    binary = Path(os.environ.get("KILN_BIN", ROOT / "target" / "debug" / "kiln"))
    if not binary.is_absolute():
        binary = ROOT / binary
    if not binary.exists():
        raise RuntimeError(f"no kiln binary at {binary} (build it, or set KILN_BIN)")
    return binary


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _key(id_, secret):
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return (
        f'[[server.keys]]\nid = "{id_}"\nsha256 = "{digest}"\n'
        "max_sessions = 16\nmax_concurrency = 8\nrequests_per_minute = 100000\n"
    )


class Server:
    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="kiln-agents-", suffix=".log", delete=False)
        # Its own supervisor socket, so it runs beside any other kiln serve.
        self.dir = tempfile.TemporaryDirectory(prefix="kiln-agent-tests-")
        os.chmod(self.dir.name, 0o755)  # the front end (nobody) reaches the socket
        self.config = Path(self.dir.name) / "kiln.toml"
        socket_path = Path(self.dir.name) / "run" / "supervisor.sock"
        self.config.write_text(
            "[limits]\nwall_ms = 20000\ngrace_ms = 2000\n"
            # An environment without third-party libraries (E2B template `bare`).
            '[environments.bare]\ndescription = "the standard library only"\n'
            f'[server]\nsupervisor_socket = "{socket_path}"\npool_min = 1\npool_max = 2\n'
            + _key("agent", SECRET)
            + _key("other", OTHER_SECRET)
        )
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [str(kiln_bin()), "--config", str(self.config), "serve", "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kiln serve not ready within {timeout} s:\n{self.output()}")

    def output(self):
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-6000:]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)
        self.dir.cleanup()


_server = None


def server():
    """The shared server, started on first use and stopped at exit."""
    global _server
    if _server is None:
        _server = Server()
        atexit.register(_stop)
    return _server


def _stop():
    global _server
    if _server is not None:
        _server.stop()
        _server = None
