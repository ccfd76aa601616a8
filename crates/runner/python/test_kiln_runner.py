"""Tests of kiln_runner.py: the runner runs as a subprocess and is driven over its channel.

Run with an interpreter that has the data stack (numpy, pandas, matplotlib, seaborn):

    /tmp/runner-venv/bin/python -m unittest crates/runner/python/test_kiln_runner.py -v

Tests that need a library the interpreter lacks are skipped. When the interpreter is a
venv, the runner runs under the venv's base interpreter with KILN_SITE pointing at the
venv's site-packages, as in a sandbox.
"""

import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "kiln_runner.py")
FRAME_MAX = 1 << 20
SITE = sysconfig.get_paths()["purelib"]
BASE_PYTHON = getattr(sys, "_base_executable", None) or sys.executable
IN_VENV = sys.prefix != sys.base_prefix

# The exact keys of each message of crates/core/src/protocol.rs.
SCHEMA = {
    "ready": set(),
    "stdout": {"text"},
    "stderr": {"text"},
    "display": {"data"},
    "file": {"path", "size", "data_b64"},
    "error": {"name", "value", "traceback"},
    "done": {"status"},
    "file_data": {"path", "size", "data_b64"},
    "file_list": {"path", "entries"},
}


def have(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


def needs(*modules):
    return unittest.skipUnless(have(*modules), "needs " + ", ".join(modules))


class Result:
    """The frames of one execution, sorted by kind."""

    def __init__(self, frames):
        self.frames = frames
        self.status = frames[-1]["status"]
        self.stdout = "".join(f["text"] for f in frames if f["type"] == "stdout")
        self.stderr = "".join(f["text"] for f in frames if f["type"] == "stderr")
        self.displays = [f["data"] for f in frames if f["type"] == "display"]
        self.errors = [f for f in frames if f["type"] == "error"]
        self.files = {f["path"]: f for f in frames if f["type"] == "file"}

    @property
    def pngs(self):
        return [base64.b64decode(d["image/png"]) for d in self.displays if "image/png" in d]

    def __repr__(self):
        return "Result(%r)" % self.frames


class Runner:
    """The runner in a subprocess with the contract's fds: 0 /dev/null, 1-2 pipes, 3 channel."""

    def __init__(self, tmp, env=None, argv_prefix=(), python=None):
        self.tmp = tmp
        self.sock, theirs = socket.socketpair()
        self.stdout = open(os.path.join(tmp, "raw-stdout"), "w+b")
        self.stderr = open(os.path.join(tmp, "raw-stderr"), "w+b")
        child_fd = theirs.fileno()

        def put_channel_on_fd_3():
            if child_fd == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(child_fd, 3)

        self.proc = subprocess.Popen(
            [*argv_prefix, python or self.python(), "-I", "-B", RUNNER],
            stdin=subprocess.DEVNULL, stdout=self.stdout, stderr=self.stderr,
            cwd=tmp, env=self.environment(env), close_fds=False,
            preexec_fn=put_channel_on_fd_3,
        )
        theirs.close()
        self.sock.settimeout(60)
        self.ready = self.recv()

    @staticmethod
    def python():
        return BASE_PYTHON if IN_VENV else sys.executable

    def environment(self, extra):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.tmp,
            "LANG": "C.UTF-8",
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": os.path.join(self.tmp, ".mpl"),
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "KILN_OUT_DIR": os.path.join(self.tmp, "out"),
            "KILN_WORK_DIR": self.tmp,
            "KILN_ARTIFACT_MAX_COUNT": "32",
            "KILN_ARTIFACT_MAX_BYTES": str(16 << 20),
            "KILN_STREAM_MAX_BYTES": str(1 << 20),
        }
        if IN_VENV:
            env["KILN_SITE"] = SITE
        env.update(extra or {})
        return env

    def send(self, msg):
        body = json.dumps(msg).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def recv(self):
        header = self._exact(4)
        (length,) = struct.unpack(">I", header)
        assert length <= FRAME_MAX, "frame of %d bytes" % length
        msg = json.loads(self._exact(length).decode("utf-8"))
        kind = msg.get("type")
        assert kind in SCHEMA, msg
        assert set(msg) == SCHEMA[kind] | {"type"}, msg
        msg["_at"] = time.monotonic()
        return msg

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("channel closed; runner stderr: %r" % self.raw_stderr())
            buf += chunk
        return buf

    def execute(self, code, **extra):
        self.send({"type": "execute", "code": code, **extra})
        return self.collect()

    def collect(self):
        frames = []
        while True:
            frame = self.recv()
            frames.append(frame)
            if frame["type"] == "done":
                return Result(frames)

    def raw_stderr(self):
        self.stderr.flush()
        with open(self.stderr.name, "rb") as f:
            return f.read()

    def close(self):
        self.sock.close()
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.stdout.close()
            self.stderr.close()


class RunnerTest(unittest.TestCase):
    env = None

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kiln-runner-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.runner = Runner(self.tmp, self.env)
        self.addCleanup(self.runner.close)

    def run_ok(self, code, **extra):
        result = self.runner.execute(code, **extra)
        self.assertEqual(result.status, "ok", result)
        self.assertEqual(result.errors, [], result)
        return result

    def assert_no_runner_frames(self, error):
        for line in error["traceback"]:
            self.assertNotIn("kiln_runner", line)
            self.assertNotIn("asyncio", line)


class ProtocolTest(RunnerTest):
    def test_ready_then_done_and_exit_0_at_eof(self):
        self.assertEqual(self.runner.ready["type"], "ready")
        self.run_ok("pass")
        self.assertEqual(self.runner.close(), 0)

    def test_not_an_execute_message_is_an_error_and_the_runner_stays(self):
        self.runner.send({"type": "nonsense"})
        result = self.runner.collect()
        self.assertEqual(result.status, "error")
        self.assertEqual(result.errors[0]["name"], "ProtocolError")
        self.assertEqual(self.run_ok("print(1)").stdout, "1\n")

    def test_setup_sets_the_environment_and_writes_files(self):
        files = [{"path": "in/data.csv", "data_b64": base64.b64encode(b"a\n1\n").decode()}]
        self.runner.send({"type": "setup", "env": {"API_TOKEN": "s3cret"}, "files": files})
        result = self.runner.collect()
        self.assertEqual(result.status, "ok", result)
        self.assertEqual(len(result.frames), 1, result)
        out = self.run_ok("import os\nprint(os.environ['API_TOKEN'], open('in/data.csv').read())")
        self.assertEqual(out.stdout, "s3cret a\n1\n\n")

    def test_a_failed_setup_is_one_error_and_the_runner_stays(self):
        files = [{"path": "../escape.txt", "data_b64": ""}]
        self.runner.send({"type": "setup", "env": {}, "files": files})
        result = self.runner.collect()
        self.assertEqual(result.status, "error")
        self.assertEqual(result.errors[0]["name"], "SetupError")
        self.assertIn("escape.txt", result.errors[0]["value"])
        self.runner.send({"type": "setup", "env": {"A": 1}, "files": []})
        self.assertEqual(self.runner.collect().status, "error")
        self.assertEqual(self.run_ok("print(1)").stdout, "1\n")

    def test_nothing_reaches_the_raw_pipes(self):
        self.run_ok("print('hi'); import sys; sys.stderr.write('err')")
        self.assertEqual(self.runner.raw_stderr(), b"")


class OutputTest(RunnerTest):
    def test_print_and_stderr(self):
        result = self.run_ok("import sys\nprint('hello', 42)\nprint('oops', file=sys.stderr)")
        self.assertEqual(result.stdout, "hello 42\n")
        self.assertEqual(result.stderr, "oops\n")

    def test_text_is_sent_while_the_code_runs(self):
        result = self.run_ok("import time\nprint('a')\ntime.sleep(1)\nprint('b')")
        a = next(f for f in result.frames if f["type"] == "stdout" and "a" in f["text"])
        done = result.frames[-1]
        self.assertGreater(done["_at"] - a["_at"], 0.7)

    def test_unicode_nul_ansi_and_invalid_utf8(self):
        result = self.run_ok(
            "import sys\n"
            "print('héllo ✓ \\x00 \\x1b[31mred\\x1b[0m')\n"
            "sys.stdout.flush()\n"
            "sys.stdout.buffer.write(b'bad \\xff\\xfe end\\n')\n"
            "sys.stdout.buffer.write(b'split \\xc3')\n"
            "sys.stdout.buffer.write(b'\\xa9\\n')\n"
            "print('lone \\udcff surrogate')\n"
            "sys.stdout.buffer.write(b'trailing \\xe2\\x9c')\n"
        )
        self.assertIn("héllo ✓ \x00 \x1b[31mred\x1b[0m\n", result.stdout)
        self.assertIn("bad \ufffd\ufffd end\n", result.stdout)
        self.assertIn("split é\n", result.stdout)
        self.assertIn("lone \\udcff surrogate", result.stdout)
        self.assertTrue(result.stdout.endswith("trailing \ufffd"), result.stdout)

    def test_large_output_is_chunked_into_small_frames(self):
        runner = Runner(self.tmp, {"KILN_STREAM_MAX_BYTES": str(8 << 20)})
        self.addCleanup(runner.close)
        result = runner.execute("print('x' * (3 << 20))")
        self.assertEqual(result.status, "ok")
        self.assertEqual(len(result.stdout), (3 << 20) + 1)
        self.assertGreater(sum(f["type"] == "stdout" for f in result.frames), 3)

    def test_stream_cap(self):
        runner = Runner(self.tmp, {"KILN_STREAM_MAX_BYTES": "10000"})
        self.addCleanup(runner.close)
        result = runner.execute("for i in range(10000): print(i)")
        self.assertEqual(result.status, "ok")
        self.assertEqual(len(result.stdout.encode()), 10000)
        self.assertEqual(runner.execute("print('again')").stdout, "again\n")

    def test_replaced_or_closed_streams_come_back(self):
        self.run_ok("import sys, io\nsys.stdout = io.StringIO()\nprint('lost')")
        self.assertEqual(self.run_ok("print('back')").stdout, "back\n")
        self.run_ok("import sys\nsys.stdout.close()")
        self.assertEqual(self.run_ok("print('back again')").stdout, "back again\n")

    def test_stdin_is_empty(self):
        result = self.runner.execute("input()")
        self.assertEqual(result.errors[0]["name"], "EOFError")


class NotebookTest(RunnerTest):
    def test_state_persists(self):
        self.run_ok("x = 41\ndef inc(v):\n    return v + 1")
        self.assertEqual(self.run_ok("print(inc(x))").stdout, "42\n")

    def test_last_expression_is_displayed(self):
        main = {"application/vnd.kiln.main-result": "true"}
        result = self.run_ok("x = 20\nx * 2 + 2")
        self.assertEqual(result.displays, [{"text/plain": "42", **main}])
        self.assertEqual(self.run_ok("_").displays, [{"text/plain": "42", **main}])
        # display() calls are not the main result.
        self.assertEqual(self.run_ok("display(1)").displays, [{"text/plain": "1"}])

    def test_none_assignment_and_semicolon_are_not_displayed(self):
        self.assertEqual(self.run_ok("None").displays, [])
        self.assertEqual(self.run_ok("y = 3").displays, [])
        self.assertEqual(self.run_ok("1 + 1;").displays, [])
        self.assertEqual(self.run_ok("print('p')").displays, [])

    def test_name_is_main(self):
        self.assertEqual(self.run_ok("print(__name__)").stdout, "__main__\n")

    def test_rich_reprs_and_display(self):
        result = self.run_ok(
            "class Rich:\n"
            "    def __repr__(self): return 'Rich()'\n"
            "    def _repr_html_(self): return '<b>rich</b>'\n"
            "    def _repr_png_(self): return b'\\x89PNG fake'\n"
            "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
            "        return {'text/markdown': '**rich**'}\n"
            "display('a', 3)\n"
            "Rich()"
        )
        self.assertEqual(result.displays[:2], [{"text/plain": "'a'"}, {"text/plain": "3"}])
        rich = result.displays[2]
        self.assertEqual(rich["text/plain"], "Rich()")
        self.assertEqual(rich["text/html"], "<b>rich</b>")
        self.assertEqual(base64.b64decode(rich["image/png"]), b"\x89PNG fake")
        self.assertEqual(rich["text/markdown"], "**rich**")

    def test_a_failing_rich_repr_is_noted_not_fatal(self):
        result = self.run_ok(
            "class Bad:\n"
            "    def __repr__(self): return 'Bad()'\n"
            "    def _repr_html_(self): raise RuntimeError('no html')\n"
            "Bad()"
        )
        self.assertEqual(
            result.displays,
            [{"text/plain": "Bad()", "application/vnd.kiln.main-result": "true"}],
        )
        self.assertIn("no html", result.stderr)

    def test_ipython_display(self):
        # The runner's stand-in when IPython is not installed, IPython's classes otherwise.
        result = self.run_ok(
            "from IPython.display import display, HTML, Markdown\n"
            "import IPython\n"
            "assert IPython.get_ipython() is None\n"
            "display(HTML('<i>x</i>'), Markdown('*y*'))"
        )
        self.assertEqual(result.displays[0]["text/html"], "<i>x</i>")
        self.assertEqual(result.displays[1]["text/markdown"], "*y*")

    @unittest.skipIf(have("IPython"), "IPython is installed in this interpreter")
    def test_ipython_display_stand_in(self):
        runner = Runner(self.tmp, {"KILN_SITE": ""}, python=sys.executable)
        self.addCleanup(runner.close)
        result = runner.execute(
            "from IPython.display import display, HTML, Image, clear_output\n"
            "from IPython import display as display_module\n"
            "import IPython\n"
            "assert IPython.get_ipython() is None\n"
            "clear_output()\n"
            "display_module.display(HTML('<i>x</i>'), Image(data=b'\\x89PNG...'))"
        )
        self.assertEqual(result.status, "ok", result)
        self.assertEqual(result.displays[0]["text/html"], "<i>x</i>")
        self.assertEqual(base64.b64decode(result.displays[1]["image/png"]), b"\x89PNG...")

    def test_top_level_await(self):
        result = self.run_ok(
            "import asyncio\n"
            "await asyncio.sleep(0.01)\n"
            "async def twice(v):\n"
            "    await asyncio.sleep(0)\n"
            "    return v * 2\n"
            "await twice(21)"
        )
        self.assertEqual(
            result.displays,
            [{"text/plain": "42", "application/vnd.kiln.main-result": "true"}],
        )
        self.assertEqual(self.run_ok("import asyncio\nasyncio.run(twice(2))").displays,
                         [{"text/plain": "4", "application/vnd.kiln.main-result": "true"}])

    def test_magics_are_stripped(self):
        result = self.run_ok("%matplotlib inline\n%config InlineBackend.figure_format = 'retina'\n"
                             "%time v = 5\nprint(v)")
        self.assertEqual(result.stdout, "5\n")
        self.assertEqual(result.stderr, "")

    def test_pip_install_is_answered(self):
        result = self.run_ok("!pip install requests\n%pip install -q seaborn\nprint('went on')")
        self.assertEqual(result.stdout, "went on\n")
        self.assertIn("kiln: installing packages is not available in this sandbox", result.stderr)
        self.assertIn("!pip install requests", result.stderr)
        if have("numpy"):
            self.assertIn("numpy", result.stderr)

    def test_shell_escape_is_answered(self):
        result = self.run_ok("if True:\n    !ls -la\nprint('ok')")
        self.assertIn("shell commands are not available", result.stderr)
        self.assertEqual(result.stdout, "ok\n")

    def test_magic_lookalikes_in_valid_code_are_untouched(self):
        result = self.run_ok("x = (10\n% 3)\ns = '''\n!not a shell\n'''\nprint(x, s.strip())")
        self.assertEqual(result.stdout, "1 !not a shell\n")

    def test_input_files_are_written_first(self):
        files = [{"path": "data/in.csv", "data_b64": base64.b64encode(b"a,b\n1,2\n").decode()},
                 {"path": "../escape.txt", "data_b64": ""}]
        result = self.runner.execute("print(open('data/in.csv').read())", files=files)
        self.assertEqual(result.status, "ok")
        self.assertEqual(result.stdout, "a,b\n1,2\n\n")
        self.assertIn("could not write the input file '../escape.txt'", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.tmp), "escape.txt")))


class ErrorTest(RunnerTest):
    def test_exception_traceback_shows_the_cell(self):
        result = self.runner.execute("def f():\n    return 1 / 0\n\nf()")
        self.assertEqual(result.status, "error")
        [error] = result.errors
        self.assertEqual(error["name"], "ZeroDivisionError")
        self.assertEqual(error["value"], "division by zero")
        text = "\n".join(error["traceback"])
        self.assertIn('File "<cell>", line 4, in <module>', text)
        self.assertIn('File "<cell>", line 2, in f', text)
        self.assertIn("return 1 / 0", text)
        self.assertTrue(error["traceback"][-1].startswith("ZeroDivisionError"))
        self.assert_no_runner_frames(error)

    def test_traceback_into_an_earlier_cell_shows_its_lines(self):
        self.run_ok("def g(x):\n    y = x + 1\n    return y / 0")
        result = self.runner.execute("a = 1\nb = 2\ng(a)")
        text = "\n".join(result.errors[0]["traceback"])
        self.assertIn('File "<cell>", line 3, in g', text)
        self.assertIn("return y / 0", text)
        self.assertIn("g(a)", text)

    def test_chained_exceptions(self):
        result = self.runner.execute(
            "try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('bad') from e"
        )
        [error] = result.errors
        self.assertEqual((error["name"], error["value"]), ("ValueError", "bad"))
        text = "\n".join(error["traceback"])
        self.assertIn("KeyError", text)
        self.assertIn("direct cause", text)
        self.assert_no_runner_frames(error)

    def test_exception_in_top_level_await(self):
        result = self.runner.execute("import asyncio\nawait asyncio.sleep(0)\nraise OSError('x')")
        [error] = result.errors
        self.assertEqual(error["name"], "OSError")
        self.assertIn('File "<cell>", line 3', "\n".join(error["traceback"]))
        self.assert_no_runner_frames(error)

    def test_syntax_error(self):
        result = self.runner.execute("x = 1\ny = 2 +\nprint(y)")
        self.assertEqual(result.status, "error")
        [error] = result.errors
        self.assertEqual(error["name"], "SyntaxError")
        text = "\n".join(error["traceback"])
        self.assertIn('File "<cell>"', text)
        self.assertIn('File "<cell>", line 2', text)
        self.assertIn("y = 2 +", text)
        self.assert_no_runner_frames(error)
        self.run_ok("pass")

    def test_system_exit(self):
        result = self.runner.execute("import sys\nx = 1\nsys.exit(3)")
        self.assertEqual(result.status, "error")
        self.assertEqual((result.errors[0]["name"], result.errors[0]["value"]), ("SystemExit", "3"))
        self.run_ok("import sys\nsys.exit(0)")
        self.run_ok("exit()")
        self.run_ok("quit()")
        self.assertEqual(self.run_ok("print(x)").stdout, "1\n")

    def test_base_exception(self):
        result = self.runner.execute("class Odd(BaseException): pass\nraise Odd('odd')")
        self.assertEqual(result.status, "error")
        self.assertEqual(result.errors[0]["name"], "Odd")
        self.run_ok("pass")

    def test_raising_repr_of_the_last_value(self):
        result = self.runner.execute(
            "class R:\n    def __repr__(self):\n        raise TypeError('no repr')\nR()"
        )
        self.assertEqual(result.errors[0]["name"], "TypeError")
        self.assertIn("raise TypeError('no repr')", "\n".join(result.errors[0]["traceback"]))
        self.assert_no_runner_frames(result.errors[0])

    def test_broken_builtins_and_signal_handlers_do_not_break_the_runner(self):
        self.run_ok("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)")
        self.run_ok("import builtins\nbuiltins.eval = None\nbuiltins.display = None")
        self.assertEqual(
            self.run_ok("1 + 1").displays,
            [{"text/plain": "2", "application/vnd.kiln.main-result": "true"}],
        )


class InterruptTest(RunnerTest):
    def interrupt_after_started(self, code):
        self.runner.send({"type": "execute", "code": code})
        frames = []
        while not any(f["type"] == "stdout" and "started" in f["text"] for f in frames):
            frames.append(self.runner.recv())
        time.sleep(0.2)
        self.runner.proc.send_signal(signal.SIGINT)
        return Result(frames + self.runner.collect().frames)

    def test_sigint_interrupts_and_keeps_the_namespace(self):
        self.run_ok("x = 'kept'")
        result = self.interrupt_after_started("print('started', flush=True)\nwhile True:\n    pass")
        self.assertEqual(result.status, "interrupted")
        self.assertEqual(result.errors[0]["name"], "KeyboardInterrupt")
        self.assertIn('File "<cell>", line 2', "\n".join(result.errors[0]["traceback"]))
        self.assertEqual(self.run_ok("print(x)").stdout, "kept\n")

    def test_sigint_while_printing_keeps_frames_whole(self):
        runner_env = {"KILN_STREAM_MAX_BYTES": str(64 << 20)}
        self.runner = Runner(self.tmp, runner_env)
        self.addCleanup(self.runner.close)
        result = self.interrupt_after_started(
            "print('started', flush=True)\nwhile True:\n    print('y' * 300)"
        )
        self.assertEqual(result.status, "interrupted")
        self.assertEqual(self.run_ok("print('alive')").stdout, "alive\n")

    def test_sigint_in_await(self):
        result = self.interrupt_after_started(
            "import asyncio\nprint('started', flush=True)\nawait asyncio.sleep(100)"
        )
        self.assertEqual(result.status, "interrupted")
        self.assertEqual(self.run_ok("print('alive')").stdout, "alive\n")

    def test_sigint_between_executions_is_ignored(self):
        self.runner.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        self.assertEqual(self.run_ok("print('alive')").stdout, "alive\n")


class FilesTest(RunnerTest):
    def setUp(self):
        super().setUp()
        self.out = os.path.join(self.tmp, "out")
        self.canary = os.path.join(self.tmp, "canary.txt")
        with open(self.canary, "w") as f:
            f.write("CANARY-SECRET")

    def test_new_and_changed_files_are_sent(self):
        result = self.run_ok(
            "import os\n"
            "os.makedirs('out/sub', exist_ok=True)\n"
            "open('out/a.csv', 'w').write('x,y\\n1,2\\n')\n"
            "open('out/sub/b.txt', 'wb').write(bytes(range(256)))\n"
            "open('out/empty', 'w').close()"
        )
        self.assertEqual(sorted(result.files), ["a.csv", "empty", "sub/b.txt"])
        self.assertEqual(base64.b64decode(result.files["a.csv"]["data_b64"]), b"x,y\n1,2\n")
        self.assertEqual(result.files["sub/b.txt"]["size"], 256)
        self.assertEqual(base64.b64decode(result.files["sub/b.txt"]["data_b64"]), bytes(range(256)))
        self.assertEqual(self.run_ok("pass").files, {})
        again = self.run_ok("open('out/a.csv', 'a').write('3,4\\n')")
        self.assertEqual(sorted(again.files), ["a.csv"])

    def test_symlinks_and_fifos_are_never_read(self):
        secret_dir = os.path.join(self.tmp, "secret-dir")
        os.mkdir(secret_dir)
        shutil.copy(self.canary, os.path.join(secret_dir, "inside.txt"))
        result = self.run_ok(
            "import os\n"
            f"os.symlink({self.canary!r}, 'out/link.txt')\n"
            f"os.symlink({secret_dir!r}, 'out/linkdir')\n"
            "os.mkfifo('out/pipe')\n"
            "open('out/real.txt', 'w').write('real')"
        )
        self.assertEqual(sorted(result.files), ["real.txt"])
        for frame in result.frames:
            self.assertNotIn("CANARY", json.dumps(frame))
            if frame["type"] == "file":
                self.assertNotIn("CANARY", base64.b64decode(frame["data_b64"]).decode())
        self.assertIn("out/link.txt: not a regular file", result.stderr)
        self.assertIn("out/pipe: not a regular file", result.stderr)
        self.assertIn("out/linkdir: not a regular file", result.stderr)

    def test_out_dir_replaced_by_a_symlink_is_not_followed(self):
        secret_dir = os.path.join(self.tmp, "secret-dir")
        os.mkdir(secret_dir)
        shutil.copy(self.canary, os.path.join(secret_dir, "inside.txt"))
        result = self.run_ok(f"import os, shutil\nshutil.rmtree('out')\nos.symlink({secret_dir!r}, 'out')")
        self.assertEqual(result.files, {})

    def test_count_and_size_limits(self):
        runner = Runner(self.tmp, {"KILN_ARTIFACT_MAX_COUNT": "2", "KILN_ARTIFACT_MAX_BYTES": "5000"})
        self.addCleanup(runner.close)
        result = runner.execute(
            "for i in range(4):\n    open(f'out/f{i}.txt', 'w').write('x' * 10)\n"
        )
        self.assertEqual(sorted(result.files), ["f0.txt", "f1.txt"])
        self.assertIn("at most 2 per execution", result.stderr)
        result = runner.execute("open('out/big.bin', 'wb').write(b'z' * 6000)")
        self.assertEqual(result.files, {})
        self.assertIn("out/big.bin: the files of one execution may hold at most 5000 bytes", result.stderr)

    def test_a_file_larger_than_a_frame_is_skipped(self):
        result = self.run_ok("open('out/huge.bin', 'wb').write(b'0' * (2 << 20))")
        self.assertEqual(result.files, {})
        self.assertIn("more than one file frame can carry", result.stderr)


class FileRequestTest(RunnerTest):
    """write_file / read_file / list_files between executions, against planted traps."""

    def setUp(self):
        super().setUp()
        self.outside = tempfile.mkdtemp(prefix="kiln-runner-outside-")
        self.addCleanup(shutil.rmtree, self.outside, True)
        self.canary = os.path.join(self.outside, "canary.txt")
        with open(self.canary, "w") as f:
            f.write("CANARY-SECRET")

    def request(self, msg, timeout=5):
        """Sends a file request; returns (frames, status). Never waits past `timeout`."""
        self.runner.sock.settimeout(timeout)
        try:
            self.runner.send(msg)
            frames = self.runner.collect().frames
        finally:
            self.runner.sock.settimeout(60)
        for frame in frames:
            self.assertNotIn("CANARY", json.dumps(frame))
            if frame["type"] == "file_data":
                self.assertNotIn(b"CANARY", base64.b64decode(frame["data_b64"]))
        return frames, frames[-1]["status"]

    def write(self, path, data):
        return self.request({
            "type": "write_file", "path": path, "data_b64": base64.b64encode(data).decode(),
        })

    def read(self, path, max_bytes=1 << 16):
        return self.request({"type": "read_file", "path": path, "max_bytes": max_bytes})

    def listing(self, path=""):
        return self.request({"type": "list_files", "path": path})

    def assert_refused(self, answer, kind, text=None):
        frames, status = answer
        self.assertEqual(status, "error", frames)
        self.assertEqual([f["type"] for f in frames], ["error", "done"], frames)
        self.assertEqual(frames[0]["name"], kind, frames)
        self.assertEqual(frames[0]["traceback"], [])
        if text is not None:
            self.assertIn(text, frames[0]["value"])

    def test_round_trip(self):
        data = bytes(range(256)) * 3
        frames, status = self.write("in/sub/a.bin", data)
        self.assertEqual((status, len(frames)), ("ok", 1), frames)
        st = os.stat(os.path.join(self.tmp, "in/sub/a.bin"))
        self.assertEqual(stat_mode(st), 0o644)
        self.assertEqual(stat_mode(os.stat(os.path.join(self.tmp, "in/sub"))), 0o755)
        out = self.run_ok("print(open('in/sub/a.bin', 'rb').read() == bytes(range(256)) * 3)")
        self.assertEqual(out.stdout, "True\n")
        frames, status = self.read("in/sub/a.bin")
        self.assertEqual(status, "ok")
        self.assertEqual([f["type"] for f in frames], ["file_data", "done"])
        self.assertEqual(frames[0]["path"], "in/sub/a.bin")
        self.assertEqual(frames[0]["size"], len(data))
        self.assertEqual(base64.b64decode(frames[0]["data_b64"]), data)
        # Replaced whole, atomically; no temporary file remains.
        self.assertEqual(self.write("in/sub/a.bin", b"short")[1], "ok")
        self.assertEqual(base64.b64decode(self.read("in/sub/a.bin")[0][0]["data_b64"]), b"short")
        frames, status = self.listing("in/sub")
        self.assertEqual(status, "ok")
        self.assertEqual(frames[0]["entries"], [{"name": "a.bin", "kind": "file", "size": 5}])
        self.assertEqual(self.write("empty", b"")[1], "ok")
        self.assertEqual(self.read("empty")[0][0]["size"], 0)

    def test_code_writes_then_read_and_list(self):
        self.run_ok(
            "import os\n"
            "os.makedirs('out', exist_ok=True)\n"
            "open('out/r.csv', 'w').write('a,b\\n1,2\\n')\n"
            "os.mkdir('out/d')\n"
            f"os.symlink({self.canary!r}, 'out/leak')\n"
            "os.mkfifo('out/pipe')"
        )
        frames, _ = self.read("out/r.csv")
        self.assertEqual(base64.b64decode(frames[0]["data_b64"]), b"a,b\n1,2\n")
        frames, status = self.listing("out")
        self.assertEqual(status, "ok")
        self.assertEqual(frames[0]["path"], "out")
        self.assertEqual(frames[0]["entries"], [
            {"name": "d", "kind": "dir", "size": 0},
            {"name": "leak", "kind": "symlink", "size": 0},
            {"name": "pipe", "kind": "other", "size": 0},
            {"name": "r.csv", "kind": "file", "size": 8},
        ])
        names = [e["name"] for e in self.listing("")[0][0]["entries"]]
        self.assertIn("out", names)

    def test_symlink_at_the_leaf_is_never_followed(self):
        os.symlink(self.canary, os.path.join(self.tmp, "leak.txt"))
        os.makedirs(os.path.join(self.tmp, "out"), exist_ok=True)
        os.symlink("/etc/passwd", os.path.join(self.tmp, "out", "passwd"))
        self.assert_refused(self.read("leak.txt"), "not_regular", "symbolic link")
        self.assert_refused(self.read("out/passwd"), "not_regular", "symbolic link")
        self.assert_refused(self.write("leak.txt", b"overwritten"), "not_regular")
        with open(self.canary) as f:
            self.assertEqual(f.read(), "CANARY-SECRET")
        self.assertTrue(os.path.islink(os.path.join(self.tmp, "leak.txt")))
        self.assert_refused(self.listing("leak.txt"), "not_regular", "not a directory")

    def test_symlink_in_the_middle_is_never_followed(self):
        os.makedirs(os.path.join(self.tmp, "a"))
        os.symlink(self.outside, os.path.join(self.tmp, "a", "linkdir"))
        os.symlink(self.outside, os.path.join(self.tmp, "top"))
        for path in ("top/canary.txt", "a/linkdir/canary.txt"):
            self.assert_refused(self.read(path), "not_regular", "symbolic link")
        for path in ("top/new.txt", "a/linkdir/new.txt", "a/linkdir/deeper/new.txt"):
            self.assert_refused(self.write(path, b"x"), "not_regular", "symbolic link")
        self.assert_refused(self.listing("a/linkdir"), "not_regular")
        self.assertEqual(sorted(os.listdir(self.outside)), ["canary.txt"])

    def test_fifo_is_refused_without_blocking(self):
        os.mkfifo(os.path.join(self.tmp, "pipe"))
        started = time.monotonic()
        self.assert_refused(self.read("pipe"), "not_regular", "FIFO")
        self.assert_refused(self.write("pipe", b"x"), "not_regular", "FIFO")
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual(self.run_ok("print(1)").stdout, "1\n")

    @unittest.skipUnless(os.geteuid() == 0, "making a device node needs root")
    def test_device_is_refused(self):
        os.mknod(os.path.join(self.tmp, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        self.assert_refused(self.read("null"), "not_regular", "device")
        self.assert_refused(self.write("null", b"x"), "not_regular", "device")

    def test_directory_and_missing_paths(self):
        os.makedirs(os.path.join(self.tmp, "d"))
        self.assert_refused(self.read("d"), "not_regular", "directory")
        self.assert_refused(self.read("nope.txt"), "not_found")
        self.assert_refused(self.read("no/such/dir.txt"), "not_found")
        self.assert_refused(self.listing("nope"), "not_found")
        self.assertEqual(self.write("f", b"1")[1], "ok")
        self.assert_refused(self.read("f/x"), "not_found", "not a directory")

    def test_too_large(self):
        self.assertEqual(self.write("ten.bin", b"0123456789")[1], "ok")
        self.assertEqual(self.read("ten.bin", max_bytes=10)[0][0]["size"], 10)
        self.assert_refused(self.read("ten.bin", max_bytes=9), "too_large", "9 bytes")
        self.assert_refused(self.read("ten.bin", max_bytes=0), "too_large")

    def test_traversal_and_bad_paths_are_refused(self):
        before = sorted(os.listdir(os.path.dirname(self.tmp)))
        for path in ("../escape.txt", "/etc/passwd", "a/../../escape.txt", "a//b", "a/./b",
                     "", ".", "..", "a/", "a\0b", "x" * 5000, 7, None):
            self.assert_refused(self.read(path), "refused")
            self.assert_refused(self.write(path, b"x"), "refused")
        for path in ("..", "/", "../x", None):
            self.assert_refused(self.listing(path), "refused")
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.tmp))), before)
        self.assert_refused(self.read("a", max_bytes=-1), "io")
        self.assert_refused(self.request({"type": "write_file", "path": "a", "data_b64": "!!"}), "io")

    def test_state_and_out_collection_survive_file_requests(self):
        self.run_ok("x = 41")
        self.write("in.txt", b"1")
        self.read("in.txt")
        self.listing()
        self.assertEqual(self.run_ok("print(x + int(open('in.txt').read()))").stdout, "42\n")


def stat_mode(st):
    return st.st_mode & 0o777


class ImportGuardTest(RunnerTest):
    DENY = {"subprocess": "starts other programs", "urllib.request": "no network"}

    def denied(self, code):
        result = self.runner.execute(code, deny_imports=self.DENY)
        self.assertEqual(result.status, "error", result)
        self.assertEqual(result.errors[0]["name"], "ImportError", result)
        return result.errors[0]["value"]

    def test_user_imports_of_denied_modules_fail(self):
        self.assertIn("starts other programs", self.denied("import subprocess"))
        self.assertIn("'urllib.request'", self.denied("from urllib import parse, request"))
        self.assertIn("subprocess", self.denied("def f():\n    import subprocess\nf()"))
        self.assertIn("subprocess", self.denied("__import__('subprocess')"))

    def test_libraries_import_them_internally(self):
        # asyncio imports subprocess for itself; the user only imports asyncio.
        out = self.runner.execute(
            "import sys\nsys.modules.pop('subprocess', None)\nimport asyncio.subprocess as a\n"
            "print('subprocess' in sys.modules)", deny_imports={"subprocess": "x"})
        self.assertEqual(out.stdout, "True\n", out)

    def test_try_except_import_error_works_and_allowed_imports_pass(self):
        out = self.run_ok("try:\n    import subprocess\nexcept ImportError:\n    print('fallback')\n"
                          "import os, urllib.parse\nprint(os.sep)", deny_imports=self.DENY)
        self.assertEqual(out.stdout, "fallback\n/\n")

    def test_without_a_table_nothing_is_denied(self):
        self.run_ok("import subprocess")
        self.denied("import subprocess")
        self.run_ok("import subprocess", deny_imports={})


@needs("pandas")
class PandasTest(RunnerTest):
    def test_dataframe_and_series_have_html(self):
        result = self.run_ok("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': [3.5, 4]})\ndf")
        [data] = result.displays
        self.assertIn("<table", data["text/html"])
        self.assertIn("a    b", data["text/plain"])
        [series] = self.run_ok("df['a']").displays
        self.assertIn("<table", series["text/html"])
        self.assertIn("Name: a", series["text/plain"])


@needs("matplotlib")
class MatplotlibTest(RunnerTest):
    @classmethod
    def setUpClass(cls):
        # A prebuilt font cache, as `kiln env setup` makes one.
        cls.font_cache = tempfile.mkdtemp(prefix="kiln-mpl-cache-")
        env = dict(os.environ, MPLCONFIGDIR=cls.font_cache, MPLBACKEND="Agg")
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True)
        # A canary attribute shows that the runner's matplotlib loaded this very cache.
        for name in os.listdir(cls.font_cache):
            if name.startswith("fontlist-") and name.endswith(".json"):
                path = os.path.join(cls.font_cache, name)
                with open(path) as f:
                    cache = json.load(f)
                cache["kiln_canary"] = True
                with open(path, "w") as f:
                    json.dump(cache, f)
        cls.env = {"KILN_MPL_CACHE": cls.font_cache}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.font_cache, True)

    def assert_pngs(self, result, count):
        self.assertEqual(len(result.pngs), count, result)
        for png in result.pngs:
            self.assertTrue(png.startswith(b"\x89PNG\r\n\x1a\n"))

    def test_show_gives_one_png_from_the_prebuilt_font_cache(self):
        result = self.run_ok("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
        self.assert_pngs(result, 1)
        self.assertEqual(result.stderr, "")
        self.assertEqual(len(result.displays), 1)
        result = self.run_ok(
            "import matplotlib, matplotlib.font_manager as fm\n"
            "print(matplotlib.get_backend(), getattr(fm.fontManager, 'kiln_canary', False))"
        )
        self.assertEqual(result.stdout.lower(), "agg true\n")

    def test_figure_left_open_is_shown_once_and_not_again(self):
        result = self.run_ok("import matplotlib.pyplot as plt\nplt.figure()\nplt.plot([1, 2])")
        self.assert_pngs(result, 1)
        self.assertIn("Line2D", result.displays[0]["text/plain"])
        self.assert_pngs(self.run_ok("print(1)"), 0)

    def test_two_shows_give_two_figures(self):
        result = self.run_ok(
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2]); plt.show()\n"
            "plt.plot([2, 1]); plt.show()\n"
            "plt.show()"
        )
        self.assert_pngs(result, 2)

    def test_figure_as_last_value_is_not_duplicated(self):
        result = self.run_ok("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nfig")
        self.assert_pngs(result, 1)
        result = self.run_ok("fig2, ax2 = plt.subplots()\nax2.bar([1], [2])\ndisplay(fig2)\nplt.show()")
        self.assert_pngs(result, 1)

    def test_matplotlib_use_agg_and_savefig(self):
        result = self.run_ok(
            "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
            "plt.plot([1]); plt.show()\n"
            "plt.plot([3]); plt.savefig('out/p.png'); plt.close()"
        )
        self.assert_pngs(result, 1)
        self.assertTrue(base64.b64decode(result.files["p.png"]["data_b64"]).startswith(b"\x89PNG"))

    def test_empty_figure_is_text_only(self):
        result = self.run_ok("import matplotlib.pyplot as plt\nplt.figure()\nplt.show()")
        self.assertEqual(result.displays, [{"text/plain": "<Figure size 640x480 with 0 Axes>"}])

    def test_rendering_error_is_reported(self):
        result = self.runner.execute(
            "import matplotlib.pyplot as plt\nplt.plot([1])\nplt.title(r'$\\frac{1}$')"
        )
        self.assertEqual(result.status, "error")
        self.assertEqual(result.errors[0]["name"], "ValueError")
        self.assert_no_runner_frames(result.errors[0])
        self.assert_pngs(self.run_ok("plt.plot([1]); plt.show()"), 1)

    @needs("seaborn", "pandas")
    def test_seaborn(self):
        result = self.run_ok(
            "import seaborn as sns, pandas as pd\n"
            "df = pd.DataFrame({'x': [1, 2, 2, 3, 3, 3], 'g': list('aabbbb')})\n"
            "sns.histplot(data=df, x='x', hue='g')"
        )
        self.assert_pngs(result, 1)
        result = self.run_ok(
            "import matplotlib.pyplot as plt\nsns.relplot(data=df, x='x', y='x')\nplt.show()"
        )
        self.assert_pngs(result, 1)


def pid_namespace_available():
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--pid", "--fork", "true"],
                           capture_output=True)
    return probe.returncode == 0


@unittest.skipUnless(pid_namespace_available(), "needs unshare with user and pid namespaces")
class Pid1Test(RunnerTest):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kiln-runner-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        prefix = ("unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child")
        self.runner = Runner(self.tmp, None, argv_prefix=prefix)
        self.addCleanup(self.runner.close)

    def test_other_processes_are_killed_and_reaped_after_each_execution(self):
        result = self.run_ok(
            "import os, subprocess\n"
            "print(os.getpid())\n"
            "child = subprocess.Popen(['sleep', '100'])\n"
            "if os.fork() == 0:\n"
            "    if os.fork() == 0:\n"
            "        os.execvp('sleep', ['sleep', '100'])\n"
            "    os._exit(0)\n"
            "import time; time.sleep(0.2)"
        )
        self.assertEqual(result.stdout, "1\n")
        result = self.run_ok(
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None)\n"
            "alive = []\n"
            "for pid in range(2, 50):\n"
            "    # kill(tid, 0) answers for this process's own threads (the runner's\n"
            "    # flusher) too: skip them; tgkill(getpid(), tid, 0) succeeds only for them.\n"
            "    if libc.syscall(234, os.getpid(), pid, 0) == 0:  # SYS_tgkill, x86_64\n"
            "        continue\n"
            "    try:\n"
            "        os.kill(pid, 0)\n"
            "        alive.append(pid)\n"
            "    except ProcessLookupError:\n"
            "        pass\n"
            "print(alive, child.wait())"
        )
        self.assertEqual(result.stdout, "[] 0\n")


if __name__ == "__main__":
    unittest.main()
