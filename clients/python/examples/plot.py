# The brief's plotting example: the `session.run(...)` and `result.plots`
# lines are the brief's, verbatim; around them, the session it assumes and a
# `save_png` that writes each chart to chart-<n>.png (or the directory given
# as the first argument).
import base64
import sys
from pathlib import Path

from kiln_client import SandboxSession

out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
saved = []


def save_png(content_base64):
    path = out_dir / f"chart-{len(saved)}.png"
    path.write_bytes(base64.b64decode(content_base64))
    saved.append(path)
    print(path)


with SandboxSession(lang="python") as session:
    # inside the sandbox session, with artifact capture turned on
    result = session.run(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [2, 4, 6]); plt.show()"
    )
    for image in result.plots:        # captured figures
        save_png(image.content_base64)
