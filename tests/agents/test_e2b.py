"""`kiln serve`'s E2B-compatible API driven by the official, unmodified
`e2b-code-interpreter` SDK, configured only through E2B_API_URL,
E2B_SANDBOX_URL and E2B_API_KEY (a kiln API key)."""

import base64
import os
import unittest

import support

import asyncio

from e2b import NotFoundException, SandboxException, TimeoutException, AuthenticationException
from e2b.sandbox.sandbox_api import SandboxQuery
from e2b_code_interpreter import AsyncSandbox, Sandbox

PLOT = (
    "import matplotlib.pyplot as plt\n"
    "plt.plot([1, 2, 3], [3, 1, 2])\n"
    "plt.title('chart')\n"
    "plt.show()\n"
)


class E2bTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = support.server()
        cls._old_env = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN")}
        os.environ["E2B_API_URL"] = cls.server.url + "/e2b"
        os.environ["E2B_SANDBOX_URL"] = cls.server.url + "/e2b"
        os.environ["E2B_API_KEY"] = support.SECRET
        os.environ.pop("E2B_DOMAIN", None)

    @classmethod
    def tearDownClass(cls):
        for k, v in cls._old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def setUp(self):
        self.sbx = Sandbox.create(timeout=120, metadata={"test": self.id()})
        self.addCleanup(self._kill)

    def _kill(self):
        try:
            self.sbx.kill()
        except Exception:
            pass

    def test_state_persists_and_the_main_result_is_the_last_expression(self):
        self.sbx.run_code("x = 1")
        execution = self.sbx.run_code("x + 1")
        self.assertIsNone(execution.error)
        self.assertEqual(execution.text, "2")
        main = [r for r in execution.results if r.is_main_result]
        self.assertEqual(len(main), 1)
        self.assertEqual(main[0].text, "2")

    def test_stdout_and_stderr_stream_to_the_callbacks(self):
        out, err = [], []
        execution = self.sbx.run_code(
            "import sys\nprint('hello from kiln')\nprint('oops', file=sys.stderr)",
            on_stdout=lambda m: out.append(m.line),
            on_stderr=lambda m: err.append(m.line),
        )
        self.assertIn("hello from kiln", "".join(out))
        self.assertIn("oops", "".join(err))
        self.assertIn("hello from kiln", "".join(execution.logs.stdout))

    def test_a_chart_is_a_png_result(self):
        execution = self.sbx.run_code(PLOT)
        self.assertIsNone(execution.error)
        pngs = [r.png for r in execution.results if r.png]
        self.assertEqual(len(pngs), 1)
        self.assertTrue(base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n"))
        self.assertFalse(execution.results[0].is_main_result)

    def test_html_results(self):
        execution = self.sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
        self.assertIsNone(execution.error)
        self.assertIn("<table", execution.results[0].html)
        self.assertTrue(execution.results[0].is_main_result)

    def test_an_exception_is_an_error_with_a_traceback(self):
        errors = []
        execution = self.sbx.run_code("1/0", on_error=errors.append)
        self.assertEqual(execution.error.name, "ZeroDivisionError")
        self.assertIn("division by zero", execution.error.value)
        self.assertIn("1/0", execution.error.traceback)
        self.assertEqual(errors[0].name, "ZeroDivisionError")

    def test_a_run_past_its_timeout_raises_and_the_sandbox_keeps_its_variables(self):
        self.sbx.run_code("kept = 41")
        with self.assertRaises(TimeoutException):
            self.sbx.run_code("import time\nwhile True:\n    time.sleep(0.05)", timeout=2)
        # The run was interrupted (not the sandbox killed): state survives.
        execution = self.sbx.run_code("kept + 1")
        self.assertIsNone(execution.error)
        self.assertEqual(execution.text, "42")
        self.assertTrue(self.sbx.is_running())

    def test_code_that_ignores_the_interrupt_is_killed_after_the_grace_period(self):
        with self.assertRaises(TimeoutException):
            self.sbx.run_code(
                "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
                "    except KeyboardInterrupt:\n        pass",
                timeout=2,
            )
        # Interrupted, ignored, killed: the sandbox is gone, not stuck.
        with self.assertRaises(NotFoundException):
            self.sbx.run_code("1")
        self.assertFalse(self.sbx.is_running())

    def test_files_written_are_read_back(self):
        info = self.sbx.files.write("/home/user/notes.txt", "hello, file")
        self.assertEqual(info.path, "/work/notes.txt")
        self.assertEqual(self.sbx.files.read("/home/user/notes.txt"), "hello, file")
        self.sbx.files.write("data/raw.bin", b"\x00\x01\xff")
        self.assertEqual(bytes(self.sbx.files.read("data/raw.bin", format="bytes")), b"\x00\x01\xff")
        # The code sees them in /work; what it writes is readable too.
        execution = self.sbx.run_code(
            "open('out/upper.txt', 'w').write(open('notes.txt').read().upper())"
        )
        self.assertIsNone(execution.error)
        self.assertEqual(self.sbx.files.read("/work/out/upper.txt"), "HELLO, FILE")
        with self.assertRaises(NotFoundException):
            self.sbx.files.read("missing.txt")

    def test_info_list_timeout_and_connect(self):
        info = self.sbx.get_info()
        self.assertEqual(info.sandbox_id, self.sbx.sandbox_id)
        self.assertEqual(info.metadata, {"test": self.id()})
        listed = Sandbox.list(query=None).next_items()
        self.assertIn(self.sbx.sandbox_id, [s.sandbox_id for s in listed])
        self.sbx.set_timeout(60)
        again = Sandbox.connect(self.sbx.sandbox_id)
        self.assertEqual(again.run_code("6 * 7").text, "42")

    def test_contexts_have_their_own_variables(self):
        self.sbx.run_code("where = 'default'")
        ctx = self.sbx.create_code_context()
        self.assertEqual(ctx.language, "python")
        self.sbx.run_code("where = 'context'", context=ctx)
        self.assertEqual(self.sbx.run_code("where").text, "'default'")
        self.assertEqual(self.sbx.run_code("where", context=ctx).text, "'context'")
        ids = [c.id for c in self.sbx.list_code_contexts()]
        self.assertIn(ctx.id, ids)
        self.sbx.remove_code_context(ctx)
        self.assertNotIn(ctx.id, [c.id for c in self.sbx.list_code_contexts()])

    def test_kill_removes_the_sandbox(self):
        sid = self.sbx.sandbox_id
        self.sbx.kill()
        self.assertNotIn(sid, [s.sandbox_id for s in Sandbox.list().next_items()])
        self.assertFalse(self.sbx.is_running())
        with self.assertRaises(NotFoundException):
            Sandbox.get_info(sid)

    def test_environment_variables_and_the_metadata_filter(self):
        other = Sandbox.create(metadata={"team": "a b/c"}, envs={"GREETING": "hello"})
        self.addCleanup(other.kill)
        self.assertEqual(other.run_code("import os\nos.environ['GREETING']").text, "'hello'")
        self.assertEqual(other.run_code("os.environ.get('ONCE')", envs={"ONCE": "1"}).text, "'1'")
        found = Sandbox.list(query=SandboxQuery(metadata={"team": "a b/c"})).next_items()
        self.assertEqual([s.sandbox_id for s in found], [other.sandbox_id])

    def test_a_template_naming_an_environment_picks_it(self):
        bare = Sandbox.create(template="bare")
        self.addCleanup(bare.kill)
        refused = bare.run_code("import numpy")
        self.assertEqual(refused.error.name, "PolicyError")
        self.assertIn("numpy", refused.error.value)
        self.assertEqual(bare.run_code("import json\njson.dumps([1])").text, "'[1]'")
        self.assertIsNone(self.sbx.run_code("import numpy").error)

    def test_what_kiln_does_not_do_is_refused_not_faked(self):
        # envd's process and filesystem RPCs: an error, never a false answer.
        with self.assertRaises(SandboxException):
            self.sbx.commands.run("ls")
        with self.assertRaises(SandboxException):
            self.sbx.files.exists("anything")
        with self.assertRaises(SandboxException):
            self.sbx.run_code("1", language="javascript")
        with self.assertRaises(SandboxException):
            Sandbox.create(allow_internet_access=True)

    def test_the_async_sandbox(self):
        async def main():
            sbx = await AsyncSandbox.create()
            try:
                await sbx.run_code("y = 5")
                out = []
                execution = await sbx.run_code("print(y)\ny * 2", on_stdout=lambda m: out.append(m.line))
                self.assertEqual(execution.text, "10")
                self.assertEqual(out, ["5\n"])
                with self.assertRaises(TimeoutException):
                    await sbx.run_code("import time\ntime.sleep(60)", timeout=1)
                self.assertEqual((await sbx.run_code("y")).text, "5")
            finally:
                await sbx.kill()

        asyncio.run(main())

    def test_keys_are_checked_and_sandboxes_stay_with_their_key(self):
        with self.assertRaises(AuthenticationException):
            Sandbox.create(api_key="not-a-kiln-key")
        with self.assertRaises(NotFoundException):
            Sandbox.get_info(self.sbx.sandbox_id, api_key=support.OTHER_SECRET)
        theirs = [s.sandbox_id for s in Sandbox.list(api_key=support.OTHER_SECRET).next_items()]
        self.assertNotIn(self.sbx.sandbox_id, theirs)


if __name__ == "__main__":
    unittest.main()
