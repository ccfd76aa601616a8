"""Python client for kiln's HTTP API (standard library only).

``Sandbox`` is a kiln session; ``SandboxSession`` is the llm-sandbox-style
API over one. Configure with ``KILN_URL`` and ``KILN_API_KEY``.
"""

from .client import (
    DEFAULT_URL,
    Client,
    ExecutionError,
    ExecutionFailed,
    ExecutionResult,
    KilnError,
    Sandbox,
)
from .llm_sandbox import (
    ArtifactSandboxSession,
    ConsoleOutput,
    FileType,
    LanguageNotSupportedError,
    LibraryNotAvailable,
    PlotOutput,
    SandboxError,
    SandboxSession,
)

__all__ = [
    "DEFAULT_URL",
    "ArtifactSandboxSession",
    "Client",
    "ConsoleOutput",
    "ExecutionError",
    "ExecutionFailed",
    "ExecutionResult",
    "FileType",
    "KilnError",
    "LanguageNotSupportedError",
    "LibraryNotAvailable",
    "PlotOutput",
    "Sandbox",
    "SandboxError",
    "SandboxSession",
]
__version__ = "0.1.0"
