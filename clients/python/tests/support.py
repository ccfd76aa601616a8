"""A real `kiln serve --dev` on a free loopback port, shared by the tests.

The binary is `KILN_BIN` (default `target/debug/kiln` from the repository
root). With `KILN_TEST_URL` set, the tests use that server instead.
"""

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CLIENT_DIR = Path(__file__).resolve().parents[1]
if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))

_server = None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="kiln-serve-", suffix=".log", delete=False)
        external = os.environ.get("KILN_TEST_URL")
        if external:
            self.url, self.proc, self.dir = external.rstrip("/"), None, None
            return
        binary = Path(os.environ.get("KILN_BIN", ROOT / "target" / "debug" / "kiln"))
        if not binary.is_absolute():
            binary = ROOT / binary
        if not binary.exists():
            raise RuntimeError(f"no kiln binary at {binary} (build it, or set KILN_BIN)")
        # Its own supervisor socket, so it runs beside any other kiln serve.
        self.dir = tempfile.TemporaryDirectory(prefix="kiln-python-tests-")
        os.chmod(self.dir.name, 0o755)  # the front end (nobody) reaches the socket
        config = Path(self.dir.name) / "kiln.toml"
        socket_path = Path(self.dir.name) / "run" / "supervisor.sock"
        config.write_text(f'[server]\nsupervisor_socket = "{socket_path}"\npool_min = 1\npool_max = 2\n')
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [str(binary), "--config", str(config), "serve", "--dev", "--listen", f"127.0.0.1:{port}"],
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
                with urllib.request.urlopen(self.url + "/v1/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kiln serve not ready within {timeout} s:\n{self.output()}")

    def output(self):
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)
        if self.dir is not None:
            self.dir.cleanup()


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


class ServerTest(unittest.TestCase):
    """Points KILN_URL at the shared server for the test's duration."""

    @classmethod
    def setUpClass(cls):
        cls.server = server()
        cls._old_env = {k: os.environ.get(k) for k in ("KILN_URL", "KILN_API_KEY")}
        os.environ["KILN_URL"] = cls.server.url
        os.environ.pop("KILN_API_KEY", None)

    @classmethod
    def tearDownClass(cls):
        for k, v in cls._old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
