"""kiln_client against a real `kiln serve --dev` on loopback."""

import threading
import unittest

from support import ServerTest

from kiln_client import (
    Client,
    ExecutionFailed,
    KilnError,
    LanguageNotSupportedError,
    LibraryNotAvailable,
    Sandbox,
    SandboxSession,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _merge_streams(events):
    """Adjacent stdout (or stderr) pieces joined, as in a final result."""
    merged = []
    for e in events:
        if merged and e["type"] in ("stdout", "stderr") and merged[-1]["type"] == e["type"]:
            merged[-1] = dict(merged[-1], text=merged[-1]["text"] + e["text"])
        else:
            merged.append(dict(e))
    return merged


class SandboxApi(ServerTest):
    def setUp(self):
        self.sb = Sandbox()
        self.addCleanup(self.sb.close)

    def test_variables_persist_and_streams_are_split(self):
        self.assertTrue(self.sb.run_code("x = 41").ok)
        r = self.sb.run_code("import sys\nprint(x + 1)\nprint('warn', file=sys.stderr)")
        self.assertEqual(r.outcome, "ok")
        self.assertEqual(r.stdout, "42\n")
        self.assertEqual(r.stderr, "warn\n")
        self.assertIsNone(r.error)
        self.assertGreaterEqual(r.usage["duration_ms"], 0)

    def test_error_has_name_value_and_traceback(self):
        r = self.sb.run_code("def f():\n    return 1 / 0\nf()")
        self.assertEqual(r.outcome, "error")
        self.assertEqual(r.error.name, "ZeroDivisionError")
        self.assertIn("division by zero", r.error.value)
        self.assertTrue(any("f()" in line or "1 / 0" in line for line in r.error.traceback), r.error.traceback)
        with self.assertRaises(ExecutionFailed):
            r.raise_for_outcome()

    def test_chart_table_and_file(self):
        r = self.sb.run_code(
            "import matplotlib.pyplot as plt, pandas as pd, os\n"
            "plt.plot([1, 2, 3]); plt.show()\n"
            "os.makedirs('/work/out', exist_ok=True)\n"
            "open('/work/out/result.csv', 'w').write('a,b\\n1,2\\n')\n"
            "pd.DataFrame({'a': [1, 2], 'b': [3, 4]})"
        )
        self.assertEqual(r.outcome, "ok", r.error)
        self.assertEqual(len(r.images), 1)
        self.assertTrue(r.images[0].startswith(PNG_MAGIC))
        self.assertEqual(len(r.tables), 1)
        self.assertIn("<table", r.tables[0])
        self.assertEqual({p.split("/")[-1]: d for p, d in r.files.items()}, {"result.csv": b"a,b\n1,2\n"})

    def test_upload_then_read_in_code_then_download(self):
        self.sb.upload("data/in.txt", b"hello kiln")
        r = self.sb.run_code(
            "s = open('/work/data/in.txt').read()\nprint(s.upper())\n"
            "open('/work/data/out.bin', 'wb').write(bytes(range(256)))"
        )
        self.assertEqual(r.stdout, "HELLO KILN\n", r.error)
        self.assertEqual(self.sb.download("data/out.bin"), bytes(range(256)))
        self.assertEqual(self.sb.download("/work/data/in.txt"), b"hello kiln")

    def test_streamed_events_arrive_in_order(self):
        seen = []
        r = self.sb.run_code(
            "import time\nprint('one', flush=True)\ntime.sleep(0.2)\nprint('two', flush=True)\n1/0",
            on_event=seen.append,
        )
        self.assertEqual(r.outcome, "error")
        kinds = [e["type"] for e in seen]
        self.assertEqual(kinds[-1], "error")
        # streamed as it happened: each line on its own, before the error
        self.assertEqual([e["text"] for e in seen if e["type"] == "stdout"], ["one\n", "two\n"])
        # the final result holds the same events, adjacent output merged
        self.assertEqual(_merge_streams(seen), r.events)

    def test_interrupt(self):
        results = []
        started = threading.Event()

        def on_event(event):
            if event.get("type") == "stdout" and "started" in event.get("text", ""):
                started.set()

        code = "import time\nprint('started', flush=True)\ntime.sleep(60)"
        runner = threading.Thread(target=lambda: results.append(self.sb.run_code(code, on_event=on_event)))
        runner.start()
        # Interrupt once the code runs: kiln drops a SIGINT that reaches the
        # runner before the user code has started (see the client README).
        self.assertTrue(started.wait(30), "the code started")
        self.assertTrue(self.sb.status()["executing"])
        self.sb.interrupt()
        runner.join(30)
        self.assertFalse(runner.is_alive())
        self.assertEqual(results[0].outcome, "interrupted", results[0].raw)
        self.assertFalse(results[0].session_ended, results[0].raw)
        # the session survives an interrupt
        self.assertEqual(self.sb.run_code("print('still here')").stdout, "still here\n")

    def test_close_ends_the_session(self):
        sb = Sandbox()
        sb.close()
        with self.assertRaises(KilnError) as caught:
            sb.status()
        self.assertEqual(caught.exception.status, 404)
        sb.close()  # twice is harmless


class OneShot(ServerTest):
    def test_execute_with_input_files(self):
        r = Client().execute("print(open('/work/n.txt').read())", files={"n.txt": "7"})
        self.assertEqual(r.stdout, "7\n")

    def test_policy_refuses_imports_and_libraries_it_does_not_allow(self):
        c = Client()
        with self.assertRaises(KilnError) as caught:
            c.execute("import subprocess")
        self.assertEqual(caught.exception.status, 422)
        self.assertIn("line 1, column 8", str(caught.exception))
        with self.assertRaises(KilnError) as caught:
            c.execute("print(1)", libraries=["requests"])
        self.assertIn("allowed:", str(caught.exception))
        r = c.execute("import pandas; print(pandas.__version__)", environment="default", libraries=["pandas"])
        self.assertEqual(r.stdout, "1.5.3\n")
        with self.assertRaises(KilnError) as caught:
            Sandbox(client=c, libraries=["requests"])
        self.assertEqual(caught.exception.status, 422)

    def test_health_and_policy(self):
        c = Client()
        self.assertIsNotNone(c.health())
        self.assertIsNotNone(c.policy())

    def test_unreachable_server_is_a_clear_error(self):
        with self.assertRaises(KilnError) as caught:
            Client("http://127.0.0.1:9").health()
        self.assertEqual(caught.exception.status, 0)
        self.assertIn("cannot reach kiln", str(caught.exception))


class LlmSandboxStyle(ServerTest):
    def test_exception_goes_to_stderr_with_a_nonzero_exit_code(self):
        with SandboxSession(lang="python") as s:
            r = s.run("print('before')\nraise ValueError('nope')")
        self.assertEqual(r.stdout, "before\n")
        self.assertEqual(r.exit_code, 1)
        self.assertIn("ValueError: nope", r.stderr)
        self.assertFalse(r.success())

    def test_preinstalled_and_stdlib_libraries_are_accepted(self):
        with SandboxSession(lang="python") as s:
            r = s.run(
                "import pandas, scipy, seaborn, math; print('ok')",
                libraries=["numpy", "pandas>=1.5", "matplotlib", "scipy", "seaborn", "math", "io"],
            )
        self.assertEqual(r.stdout, "ok\n", r.stderr)

    def test_other_libraries_are_refused_clearly(self):
        with SandboxSession(lang="python") as s:
            with self.assertRaises(LibraryNotAvailable) as caught:
                s.run("import requests", libraries=["numpy", "requests"])
        self.assertIn("requests", str(caught.exception))
        self.assertNotIn("numpy,", str(caught.exception).split(";")[0])

    def test_other_languages_are_refused(self):
        with self.assertRaises(LanguageNotSupportedError):
            SandboxSession(lang="javascript")

    def test_state_persists_between_runs(self):
        with SandboxSession(lang="python", keep_template=True, verbose=False) as s:
            s.run("import numpy as np; a = np.arange(4)")
            self.assertEqual(s.run("print(a.sum())").stdout, "6\n")


if __name__ == "__main__":
    unittest.main()
