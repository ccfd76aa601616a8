"""An llm-sandbox-style API over a kiln session.

Code written for llm-sandbox runs with only its import line changed::

    from kiln_client import SandboxSession

    with SandboxSession(lang="python", keep_template=True) as session:
        result = session.run("import numpy as np; print(np.mean([1, 2, 3]))", libraries=["numpy"])
        print(result.stdout)  # "2.0"

Differences worth knowing: the session is a kiln session, so variables
persist between ``run`` calls; nothing is installed at run time, so
``libraries`` may only name what the environment already has (anything else
raises :class:`LibraryNotAvailable`); container options (``image``,
``keep_template``, ``backend``, …) are accepted and ignored.
"""

from __future__ import annotations

import base64
import re
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Union

from .client import Client, ExecutionResult as KilnResult, KilnError, Sandbox

# The default environment's distributions (envs/default/requirements.lock),
# used when the server's policy does not list its libraries.
PREINSTALLED = frozenset(
    """
    numpy pandas matplotlib scipy seaborn
    contourpy cycler fonttools kiwisolver packaging pillow pyparsing
    python-dateutil pytz tzdata six
    """.split()
)
# Import names (normalized) that differ from their distribution's name: the
# policy lists import names, callers often give distribution names.
_IMPORT_TO_DIST = {"pil": "pillow", "dateutil": "python-dateutil", "mpl-toolkits": "matplotlib", "pylab": "matplotlib"}

# Outcome -> exit code, as `kiln run` mirrors it.
_EXIT_CODES = {
    "ok": 0,
    "error": 1,
    "timeout": 124,
    "interrupted": 130,
    "memory_limit": 137,
    "output_limit": 125,
    "killed": 126,
    "rejected": 65,
    "unavailable": 69,
}


class SandboxError(Exception):
    """Base of this module's errors."""


class LibraryNotAvailable(SandboxError):
    """A requested library is not in the environment (kiln installs nothing at run time)."""


class LanguageNotSupportedError(SandboxError):
    pass


class FileType(str, Enum):
    """Formats of captured outputs; compares equal to its value (``"png"``)."""

    PNG = "png"
    JPEG = "jpeg"
    PDF = "pdf"
    SVG = "svg"
    CSV = "csv"
    JSON = "json"
    TXT = "txt"
    HTML = "html"

    def __str__(self) -> str:
        return self.value


@dataclass
class PlotOutput:
    """A captured chart."""

    format: FileType
    content_base64: str
    width: Optional[int] = None
    height: Optional[int] = None
    dpi: Optional[int] = None

    @property
    def content(self) -> bytes:
        return base64.b64decode(self.content_base64)


@dataclass
class ConsoleOutput:
    exit_code: int = 0
    stderr: str = ""
    stdout: str = ""

    @property
    def text(self) -> str:
        return self.stdout

    def success(self) -> bool:
        return self.exit_code == 0


@dataclass
class ExecutionResult(ConsoleOutput):
    """What :meth:`SandboxSession.run` returns; ``kiln`` is kiln's own result."""

    plots: List[PlotOutput] = field(default_factory=list)
    kiln: Optional[KilnResult] = field(default=None, repr=False)


def _png_size(data: bytes) -> tuple:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None, None


def _normalize(name: str) -> str:
    # "numpy>=1.20", "pandas[excel]", "scikit_learn" -> PEP 503 names.
    base = re.split(r"[<>=!~;\[\s@]", name.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", base).lower()


def _policy_libraries(policy: Any) -> Optional[Set[str]]:
    """The library names a /v1/policy document lists, if it lists any."""
    found: Set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("libraries", "packages", "allowed_libraries") and isinstance(value, (list, dict)):
                    items = value.keys() if isinstance(value, dict) else value
                    for item in items:
                        if isinstance(item, str):
                            found.add(_normalize(item))
                        elif isinstance(item, dict) and isinstance(item.get("name"), str):
                            found.add(_normalize(item["name"]))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(policy)
    return found or None


class SandboxSession:
    """llm-sandbox's ``SandboxSession``, backed by a kiln session.

    ``url`` and ``api_key`` default to ``KILN_URL`` and ``KILN_API_KEY``.
    Container options llm-sandbox takes (``image``, ``keep_template``,
    ``commit_container``, ``backend``, ``verbose``, …) are accepted and
    ignored: kiln's environment is fixed by its policy.
    """

    def __init__(
        self,
        lang: str = "python",
        keep_template: bool = False,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        limits: Optional[Dict[str, Any]] = None,
        **_ignored: Any,
    ):
        lang_name = getattr(lang, "value", lang)
        if str(lang_name).lower() != "python":
            raise LanguageNotSupportedError(f"kiln runs Python only, not {lang_name!r}")
        self.lang = "python"
        self.keep_template = keep_template
        self.client = Client(url, api_key)
        self.limits = limits
        self.sandbox: Optional[Sandbox] = None
        self._available: Optional[Set[str]] = None

    # -- lifecycle --
    def open(self) -> "SandboxSession":
        if self.sandbox is None or self.sandbox.closed:
            self.sandbox = Sandbox(client=self.client, limits=self.limits)
        return self

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def __enter__(self) -> "SandboxSession":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- libraries --
    def available_libraries(self) -> Set[str]:
        """Distribution names the environment has (the policy's list when it
        gives one, else the default environment's)."""
        if self._available is None:
            listed = None
            try:
                listed = _policy_libraries(self.client.policy())
            except KilnError:
                pass
            self._available = set(listed or PREINSTALLED)
        return self._available

    def install(self, libraries: Optional[Iterable[str]] = None) -> None:
        """Checks that ``libraries`` are preinstalled; nothing is installed at
        run time. Standard-library modules are accepted too."""
        missing = []
        available = self.available_libraries()
        stdlib = getattr(sys, "stdlib_module_names", frozenset())
        for lib in libraries or []:
            name = _normalize(lib)
            if not name:
                continue
            same = {name, _IMPORT_TO_DIST.get(name)} | {i for i, d in _IMPORT_TO_DIST.items() if d == name}
            if same & available:
                continue
            if name.replace("-", "_") in stdlib:
                continue
            missing.append(lib)
        if missing:
            raise LibraryNotAvailable(
                "not available in kiln's environment (nothing is installed at run time): "
                + ", ".join(missing)
                + "; available: "
                + ", ".join(sorted(available))
            )

    # -- running --
    def run(self, code: str, libraries: Optional[List[str]] = None, timeout: Optional[float] = None, **_ignored: Any) -> ExecutionResult:
        """Runs ``code`` and returns stdout, stderr, an exit code and the
        charts (``plt.show()`` or any PNG display) as ``plots``.

        ``timeout`` is accepted for compatibility; the wall-clock limit is
        the session's (``limits={"wall_ms": …}`` at construction).
        """
        self.install(libraries)
        self.open()
        assert self.sandbox is not None
        result = self.sandbox.run_code(code)
        stderr = result.stderr
        err = result.error
        if err is not None:
            # llm-sandbox reports an exception as the interpreter does: on stderr.
            tb = [line.rstrip("\n") for line in err.traceback]
            if not tb or not tb[-1].startswith(err.name):
                tb.append(str(err))
            stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + "\n".join(tb) + "\n"
        elif result.outcome != "ok" and result.reason:
            stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + f"kiln: {result.outcome}: {result.reason}\n"
        plots = []
        for display in result.displays:
            png = display.get("image/png")
            if png:
                width, height = _png_size(base64.b64decode(png))
                plots.append(PlotOutput(FileType.PNG, png.replace("\n", ""), width, height))
        if result.session_ended:
            self.sandbox = None
        return ExecutionResult(
            exit_code=_EXIT_CODES.get(result.outcome, 1),
            stderr=stderr,
            stdout=result.stdout,
            plots=plots,
            kiln=result,
        )

    def execute_command(self, command: str, workdir: Optional[str] = None) -> ConsoleOutput:
        raise SandboxError("kiln sandboxes run Python only; there is no shell to run commands in")

    # -- files --
    def copy_to_runtime(self, src: Union[str, Path], dest: str) -> None:
        """Copies the local file ``src`` to ``dest`` under ``/work``."""
        self.open()
        assert self.sandbox is not None
        self.sandbox.upload(dest, Path(src).read_bytes())

    def copy_from_runtime(self, src: str, dest: Union[str, Path]) -> None:
        """Copies ``src`` (under ``/work``) to the local file ``dest``."""
        self.open()
        assert self.sandbox is not None
        Path(dest).write_bytes(self.sandbox.download(src))


#: llm-sandbox's session that captures plots; kiln always does.
ArtifactSandboxSession = SandboxSession
