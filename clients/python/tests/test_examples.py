"""The llm-sandbox examples of kiln's brief, run against a real kiln serve
with only their import line changed."""

import base64
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from support import CLIENT_DIR, ServerTest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BriefExamples(ServerTest):
    def test_numpy_mean(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            # ---- verbatim from the brief, except the import line ----
            from kiln_client import SandboxSession

            with SandboxSession(lang="python", keep_template=True) as session:
                result = session.run(
                    "import numpy as np; print(np.mean([1, 2, 3]))",
                    libraries=["numpy"],
                )
                print(result.stdout)  # "2.0"
            # ---- end ----
        self.assertEqual(out.getvalue().strip(), "2.0")
        self.assertEqual(result.exit_code, 0)
        self.assertEqual(result.stderr, "")

    def test_plot_from_plt_show(self):
        from kiln_client import SandboxSession

        saved = []

        def save_png(content_base64):
            saved.append(base64.b64decode(content_base64))

        with SandboxSession(lang="python") as session:
            # ---- verbatim from the brief ----
            # inside the sandbox session, with artifact capture turned on
            result = session.run(
                "import matplotlib.pyplot as plt\n"
                "plt.plot([1, 2, 3], [2, 4, 6]); plt.show()"
            )
            for image in result.plots:        # captured figures
                save_png(image.content_base64)
            # ---- end ----
        self.assertEqual(result.exit_code, 0, result.stderr)
        self.assertEqual(len(saved), 1)
        self.assertTrue(saved[0].startswith(PNG_MAGIC))
        self.assertEqual(result.plots[0].format, "png")
        self.assertGreater(result.plots[0].width, 100)

    def _run_example(self, name, *args):
        env = dict(os.environ, PYTHONPATH=str(CLIENT_DIR))
        return subprocess.run(
            [sys.executable, str(CLIENT_DIR / "examples" / name), *args],
            env=env, capture_output=True, text=True, timeout=120,
        )

    def test_example_scripts(self):
        done = self._run_example("numpy_mean.py")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "2.0")
        with tempfile.TemporaryDirectory() as tmp:
            done = self._run_example("plot.py", tmp)
            self.assertEqual(done.returncode, 0, done.stderr)
            chart = Path(tmp) / "chart-0.png"
            self.assertTrue(chart.read_bytes().startswith(PNG_MAGIC))


if __name__ == "__main__":
    unittest.main()
