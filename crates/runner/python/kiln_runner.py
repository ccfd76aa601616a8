"""kiln runner: executes model-written Python inside a kiln sandbox.

The supervisor starts it as PID 1 of the sandbox's pid namespace:

    /usr/local/bin/python3 -I -B /opt/kiln/runner.py

with cwd /work, fd 0 = /dev/null, fds 1 and 2 = pipes the supervisor reads as raw
stdout/stderr (C-level writes and child processes land there), and fd 3 = an AF_UNIX
stream socket: the channel.

Channel frames, both ways: 4-byte big-endian length + UTF-8 JSON body (the body is at
most KILN_FRAME_MAX_BYTES). Exactly the messages of crates/core/src/protocol.rs:

    supervisor -> runner  {"type":"setup","env":{name:str},     at most once, before any
                           "files":[{"path":rel,"data_b64":str}]}  execute (sessions): sets
                                                                   os.environ, writes files;
                                                                   answered by done ok, or by
                                                                   error + done error
                          {"type":"execute","code":str,         (EOF: the runner exits 0)
                           "files":[{"path":rel,"data_b64":str}]}  (optional) written first
                           "deny_imports":{module:reason}}         (optional) see _ImportGuard
                          {"type":"write_file","path":rel,"data_b64":str}   file requests,
                          {"type":"read_file","path":rel,"max_bytes":n}     between executions:
                          {"type":"list_files","path":rel or ""}            see below
    runner -> supervisor  {"type":"ready"}                       once, after setup
                          {"type":"stdout"|"stderr","text":str}  streamed, <= ~50 ms late
                          {"type":"display","data":{mime:str}}   image/* as base64
                          {"type":"file","path":rel,"size":n,"data_b64":str}
                          {"type":"error","name":str,"value":str,"traceback":[str]}
                          {"type":"done","status":"ok"|"error"|"interrupted"}
                          {"type":"file_data","path":rel,"size":n,"data_b64":str}
                          {"type":"file_list","path":rel,
                           "entries":[{"name":str,"kind":"file"|"dir"|"symlink"|"other","size":n}]}

File requests act on WORK_DIR only, and are answered by done ok (write_file), file_data +
done ok (read_file) or file_list + done ok (list_files), or on failure by one error frame
whose name is not_found | not_regular | too_large | refused | io, then done error. Paths are
relative (absolute paths, "..", ".", NUL and empty segments are refused); every directory on
the way is opened O_DIRECTORY|O_NOFOLLOW relative to the one before, so no symlink is ever
followed, and the leaf is lstat-ed, then opened O_NOFOLLOW|O_NONBLOCK and fstat-ed: only a
regular file is read or replaced, a FIFO or device is never opened for I/O. A write goes to
a temporary file in the same directory (mode 0644), then is renamed over the target;
missing directories are created 0755. A read of more than max_bytes is too_large.

Each execution runs in one persistent namespace, notebook style: the value of a last
bare expression is displayed, display() is a builtin, top-level await works, IPython
habits (%magics, !pip install) are answered, plt.show() and figures left open become PNG
displays. SIGINT (the supervisor's timeout) interrupts the user code only (status
"interrupted"); SystemExit and any BaseException end the execution, never the runner.
After the code, as PID 1, the runner kills every other process in the namespace and reaps
it; then new or changed regular files under KILN_OUT_DIR become file frames (never through
a symlink, never a FIFO or device); then done. A file whose frame would exceed
KILN_FRAME_MAX_BYTES is skipped with a note on stderr.

Environment (every variable is optional and has a default):
    KILN_SITE                 directory of the pinned libraries (added with site.addsitedir)
    KILN_MPL_CACHE            directory with a prebuilt matplotlib fontlist-v*.json,
                              copied into MPLCONFIGDIR (default /tmp/.mpl) at startup
    KILN_WORK_DIR             where an execute's input files are written (default /work)
    KILN_OUT_DIR              directory whose files are collected (default /work/out)
    KILN_ARTIFACT_MAX_COUNT   files sent per execution (default 32)
    KILN_ARTIFACT_MAX_BYTES   file bytes sent per execution (default 16 MiB)
    KILN_STREAM_MAX_BYTES     stdout / stderr bytes sent per execution (default 1 MiB)
    KILN_FRAME_MAX_BYTES      largest frame body the runner sends (default 1 MiB)
    KILN_FIGURE_DPI           resolution of figure displays (default 100)
"""

import _thread
import ast
import base64
import builtins
import codecs
import collections
import importlib.machinery
import importlib.util
import io
import itertools
import json
import linecache
import os
import re
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
import types


def _env_int(name, default):
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value >= 0 else default


def _configure():
    """Reads the settings the environment carries. Called at import, and
    again in a sandbox forked from the zygote (which imported the runner
    with the template's environment) once it has its own."""
    global SITE_DIR, MPL_CACHE_DIR, WORK_DIR, OUT_DIR, ARTIFACT_MAX_COUNT
    global ARTIFACT_MAX_BYTES, STREAM_MAX_BYTES, FRAME_MAX_BYTES, FIGURE_DPI
    global TEXT_CHUNK_CHARS
    SITE_DIR = os.environ.get("KILN_SITE", "")
    MPL_CACHE_DIR = os.environ.get("KILN_MPL_CACHE", "")
    WORK_DIR = os.environ.get("KILN_WORK_DIR") or "/work"
    OUT_DIR = os.environ.get("KILN_OUT_DIR") or "/work/out"
    ARTIFACT_MAX_COUNT = _env_int("KILN_ARTIFACT_MAX_COUNT", 32)
    ARTIFACT_MAX_BYTES = _env_int("KILN_ARTIFACT_MAX_BYTES", 16 << 20)
    STREAM_MAX_BYTES = _env_int("KILN_STREAM_MAX_BYTES", 1 << 20)
    FRAME_MAX_BYTES = max(_env_int("KILN_FRAME_MAX_BYTES", 1 << 20), 64 << 10)
    FIGURE_DPI = _env_int("KILN_FIGURE_DPI", 100) or 100
    TEXT_CHUNK_CHARS = (FRAME_MAX_BYTES - 256) // 6  # a JSON-escaped char is at most 6 bytes


_configure()
# True in a sandbox forked from the zygote: the fork is already not
# dumpable (no execve reset it) and the template added the site dir.
_IN_ZYGOTE_FORK = False
# In a fork of the zygote: [[step, monotonic ns], ...] of its containment,
# passed on in the ready frame.
_STARTUP_STEPS = None

CHANNEL_FD = 3
CELL = "<cell>"
FLUSH_INTERVAL = 0.05  # seconds stream text may wait before it is sent
COALESCE_CHARS = 64 << 10  # queued stream text that is sent at once
RUNNER_FILE = sys._getframe().f_code.co_filename
_CO_COROUTINE = 0x0080  # code flag of a cell compiled with top-level await

# Private references: user code may replace the public ones.
_eval = eval
_dumps = json.dumps
_loads = json.loads
_pack = struct.Struct(">I").pack
_unpack = struct.Struct(">I").unpack
_os_write = os.write
_os_exit = os._exit
_get_ident = threading.get_ident
# The flusher is a bare thread: threading.Thread's bookkeeping (a Thread
# object, an Event, waiting until the thread has started) costs a fresh
# sandbox four times the time and pages of the thread itself.
_start_thread = _thread.start_new_thread
_sleep = time.sleep
_monotonic = time.monotonic
_ORIGINAL_STDIO = (sys.stdin, sys.stdout, sys.stderr)  # keeps fds 0-2 open


# --- SIGINT -------------------------------------------------------------------------


class _Interrupts:
    """SIGINT raises KeyboardInterrupt only while user code runs and no frame is half sent."""

    user = False  # user code (or its displays and figures) is running
    guard = 0  # the main thread is inside the channel
    pending = False  # a SIGINT arrived while guarded
    # The code has arrived and will run: a SIGINT now (before the user code
    # starts) is kept for it instead of being lost.
    armed = False
    early = False  # a SIGINT arrived while armed, before the user code
    main_ident = _get_ident()


def _on_sigint(signum, frame):
    if not _Interrupts.user:
        if _Interrupts.armed:
            _Interrupts.early = True
        return
    if _Interrupts.guard:
        _Interrupts.pending = True
        return
    raise KeyboardInterrupt


def _uninterruptible(fn):
    """Defers SIGINT in the main thread until fn returns, so no frame is cut in half."""

    def wrapper(*args, **kwargs):
        main = _get_ident() == _Interrupts.main_ident
        if main:
            _Interrupts.guard += 1
        try:
            return fn(*args, **kwargs)
        finally:
            if main:
                _Interrupts.guard -= 1
                if not _Interrupts.guard and _Interrupts.pending and _Interrupts.user:
                    _Interrupts.pending = False
                    raise KeyboardInterrupt

    wrapper.__name__ = fn.__name__
    return wrapper


# --- The channel ------------------------------------------------------------------------


class Channel:
    """Frames over the supervisor socket, with coalesced, capped stream text.

    Everything outgoing goes through one ordered queue, drained under a re-entrant lock
    by whoever sends a frame, by a write that fills COALESCE_CHARS, or by a flusher thread
    within FLUSH_INTERVAL. A re-entrant call (a signal handler or __del__ that prints while
    a frame is being sent) only queues, so frames never interleave.
    """

    def __init__(self, sock):
        self._sock = sock
        self._lock = threading.RLock()
        self._queue = collections.deque()  # ("frame", msg) or (stream, [text, ...])
        self._queued_chars = 0
        self._draining = False
        self._sent = {"stdout": 0, "stderr": 0}
        self._wake_fds = None  # (read, write) pipe that wakes the flusher thread
        self._armed = False  # a byte is in the pipe or the flusher is about to drain
        self.active = False  # stream text is accepted only during an execution
        self.forked = False  # this is a child forked by user code

    def begin(self):
        with self._lock:
            self._sent = {"stdout": 0, "stderr": 0}
        self.active = True

    def end(self):
        self.flush()
        self.active = False

    @_uninterruptible
    def push(self, stream, text):
        """Queues stream text ("stdout" or "stderr")."""
        if self.forked:
            self._write_raw(stream, text)
            return
        if not text or not self.active:
            return
        with self._lock:
            last = self._queue[-1] if self._queue else None
            if last is not None and last[0] == stream:
                last[1].append(text)
            else:
                self._queue.append((stream, [text]))
            self._queued_chars += len(text)
            if self._queued_chars >= COALESCE_CHARS:
                self._drain_locked()
            else:
                self._wake_flusher_locked()

    @_uninterruptible
    def send(self, msg):
        """Sends a frame after all text queued before it."""
        if self.forked:
            return
        with self._lock:
            self._queue.append(("frame", msg))
            self._drain_locked()

    @_uninterruptible
    def send_reply(self, msg, limit):
        """Sends the answer to a file request if its frame is at most `limit` bytes (None:
        any size); returns whether it was sent."""
        if self.forked:
            return False
        body = _dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
        if limit is not None and len(body) > limit:
            return False
        with self._lock:
            self._drain_locked()
            try:
                self._sock.sendall(_pack(len(body)))
                self._sock.sendall(body)  # not concatenated: it may be large
            except OSError:
                _os_exit(0)  # the supervisor is gone
        return True

    @_uninterruptible
    def flush(self):
        if self.forked:
            return
        with self._lock:
            self._drain_locked()

    def recv(self):
        """The next message from the supervisor, or None at EOF."""
        header = self._recv_exact(4)
        if header is None:
            return None
        body = self._recv_exact(_unpack(header)[0])
        if body is None:
            return None
        text = body.decode("utf-8")
        del body  # a file upload may be large: one copy less while it is parsed
        return _loads(text)

    def after_fork_in_child(self):
        """A child forked by user code writes its output to the raw pipes, never to fd 3."""
        self.forked = True
        self._queue = collections.deque()
        try:
            self._sock.close()
        except OSError:
            pass

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                return None
            buf += chunk
        return buf

    def _drain_locked(self):
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue:
                kind, payload = self._queue.popleft()
                if kind == "frame":
                    self._write_frame(payload)
                else:
                    self._send_text(kind, "".join(payload))
            self._queued_chars = 0
        finally:
            self._draining = False

    def _send_text(self, stream, text):
        room = STREAM_MAX_BYTES - self._sent[stream]
        if room <= 0:
            return
        data = text.encode("utf-8", "replace")[:room]
        self._sent[stream] += len(data)
        text = data.decode("utf-8", "ignore")
        for start in range(0, len(text), TEXT_CHUNK_CHARS):
            self._write_frame({"type": stream, "text": text[start:start + TEXT_CHUNK_CHARS]})

    def _write_frame(self, msg):
        body = _dumps(msg, ensure_ascii=False, separators=(",", ":"))
        body = body.encode("utf-8", "replace")  # a lone surrogate becomes "?"
        if len(body) > FRAME_MAX_BYTES:
            return
        try:
            self._sock.sendall(_pack(len(body)) + body)
        except OSError:
            _os_exit(0)  # the supervisor is gone

    def _wake_flusher_locked(self):
        # A pipe, not a threading.Event: a handler or __del__ that prints while this
        # thread is inside the Event's own lock would deadlock.
        if self._armed:
            return
        if self._wake_fds is None and not self.start_flusher():
            # No thread to be had (the pids limit is exhausted): flush now.
            self._drain_locked()
            return
        self._armed = True
        _os_write(self._wake_fds[1], b"w")

    def start_flusher(self):
        """Starts the flushing thread at the first output. Where no thread can
        be had (a fork bomb exhausted the pids limit) the caller flushes at once."""
        if self._wake_fds is not None:
            return True
        try:
            self._wake_fds = os.pipe()
            _start_thread(self._flush_loop, ())
            return True
        except (RuntimeError, OSError):
            self._wake_fds = None
            return False

    def _flush_loop(self):
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        except (AttributeError, OSError, ValueError):
            pass
        while True:
            os.read(self._wake_fds[0], 1)
            _sleep(FLUSH_INTERVAL)
            with self._lock:
                self._armed = False
                self._drain_locked()

    @staticmethod
    def _write_raw(stream, text):
        data = text.encode("utf-8", "replace")
        fd = 1 if stream == "stdout" else 2
        try:
            while data:
                data = data[_os_write(fd, data):]
        except OSError:
            pass


CHANNEL = None  # set by main()


def _note(text):
    """A message of the runner to the user, on stderr."""
    CHANNEL.push("stderr", text if text.endswith("\n") else text + "\n")


# --- sys.stdout and sys.stderr ------------------------------------------------------------


class _StreamSink(io.RawIOBase):
    """The bytes side of sys.stdout / sys.stderr: decodes UTF-8 and queues the text."""

    mode = "wb"

    def __init__(self, stream, fd):
        super().__init__()
        self._stream = stream
        self._fd = fd
        self._lock = threading.RLock()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def name(self):
        return "<%s>" % self._stream

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def write(self, data):
        data = bytes(data)
        with self._lock:
            text = self._decoder.decode(data)
        CHANNEL.push(self._stream, text)
        return len(data)

    def flush(self):
        if not self.closed:
            CHANNEL.flush()

    def finish(self):
        """Ends a pending incomplete UTF-8 sequence (as U+FFFD)."""
        with self._lock:
            text = self._decoder.decode(b"", True)
        CHANNEL.push(self._stream, text)


_STDIO = {}


def _install_stdio():
    """Puts the channel streams back if user code replaced or closed them."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = _STDIO.get(name)
        if stream is None or stream.closed:
            sink = _StreamSink(name, fd)
            stream = io.TextIOWrapper(
                sink, encoding="utf-8", errors="backslashreplace", write_through=True
            )
            _STDIO[name] = stream
        setattr(sys, name, stream)
        setattr(sys, "__%s__" % name, stream)
    if sys.stdin is None or getattr(sys.stdin, "closed", True):
        sys.stdin = open(os.devnull, encoding="utf-8")


def _finish_streams():
    for stream in _STDIO.values():
        if not stream.closed:
            stream.buffer.finish()


# --- Rich display -----------------------------------------------------------------------

_REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)


def display(*objs, include=None, exclude=None, raw=False, **_ignored):
    """Shows each object as rich output (text/plain, text/html, image/png, ...), like IPython."""
    for obj in objs:
        if raw and isinstance(obj, dict):
            data = {str(k): _mime_text(str(k), v) for k, v in obj.items() if v is not None}
        else:
            data = _mimebundle(obj)
        if include:
            data = {k: v for k, v in data.items() if k in include}
        if exclude:
            data = {k: v for k, v in data.items() if k not in exclude}
        _send_display(data)


def _send_display(data):
    if data:
        CHANNEL.send({"type": "display", "data": _fit_bundle(data)})


def _mimebundle(obj):
    figure = _figure_bundle(obj)
    if figure is not None:
        return figure
    data = {"text/plain": repr(obj)}
    if isinstance(obj, type) or _answers_anything(obj):
        return data
    for attr, mime in _REPR_METHODS:
        value = _call_repr(obj, attr)
        if value is not None:
            data[mime] = _mime_text(mime, value)
    if "text/html" not in data:
        html = _series_html(obj)
        if html:
            data["text/html"] = html
    bundle = _call_repr(obj, "_repr_mimebundle_")
    if isinstance(bundle, tuple) and bundle:
        bundle = bundle[0]
    if isinstance(bundle, dict):
        for mime, value in bundle.items():
            if isinstance(mime, str) and value is not None:
                data[mime] = _mime_text(mime, value)
    return data


def _answers_anything(obj):
    """True for objects whose __getattr__ invents attributes (mocks, proxies)."""
    try:
        return getattr(obj, "_kiln_no_such_attribute_", None) is not None
    except Exception:
        return True


def _call_repr(obj, attr):
    try:
        method = getattr(obj, attr, None)
        if not callable(method):
            return None
        if attr == "_repr_mimebundle_":
            return method(include=None, exclude=None)
        return method()
    except Exception as exc:
        _note("kiln: %s.%s() failed: %s: %s" % (type(obj).__name__, attr, type(exc).__name__, exc))
        return None


def _mime_text(mime, value):
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        value = value[0]  # (data, metadata)
    if isinstance(value, (bytes, bytearray, memoryview)):
        if mime.startswith("text/") or mime.endswith("+xml"):
            return bytes(value).decode("utf-8", "replace")
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, str):
        return value
    if mime.endswith("json"):
        try:
            return _dumps(value)
        except (TypeError, ValueError):
            pass
    return str(value)


def _series_html(obj):
    pandas = sys.modules.get("pandas")
    if pandas is None or not isinstance(obj, pandas.Series):
        return None
    try:
        return obj.to_frame()._repr_html_()
    except Exception:
        return None


def _fit_bundle(data):
    """Drops the largest representations (then truncates text/plain) to fit one frame."""
    data = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
    limit = FRAME_MAX_BYTES - 1024
    while _bundle_size(data) > limit:
        rich = [k for k in data if k != "text/plain"]
        if rich:
            del data[max(rich, key=lambda k: len(data[k]))]
        else:
            data["text/plain"] = data.get("text/plain", "")[: limit // 8] + "\n...[truncated]"
            break
    return data


def _bundle_size(data):
    return len(_dumps(data, ensure_ascii=False).encode("utf-8", "replace"))


# --- matplotlib -------------------------------------------------------------------------


class _Figures:
    shown = []  # figures displayed during the current execution


def _is_figure(obj):
    module = sys.modules.get("matplotlib.figure")
    return module is not None and isinstance(obj, module.Figure)


def _figure_bundle(obj):
    if not _is_figure(obj):
        return None
    _Figures.shown.append(obj)
    return _render_figure(obj)


def _render_figure(fig):
    data = {"text/plain": repr(fig)}
    if len(fig.get_children()) <= 1:  # only the background patch: nothing drawn
        return data
    dpi = FIGURE_DPI
    limit = FRAME_MAX_BYTES - 4096
    for _attempt in range(4):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        if len(encoded) <= limit:
            data["image/png"] = encoded
            return data
        dpi *= 0.9 * (limit / len(encoded)) ** 0.5
    _note("kiln: a figure was too large to display")
    return data


def _open_figures():
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    if helpers is None:
        return []
    return [manager.canvas.figure for manager in helpers.Gcf.get_all_fig_managers()]


def _show_open_figures():
    """kiln's plt.show(): each open pyplot figure not shown yet becomes a PNG; all close."""
    for fig in _open_figures():
        if not any(fig is shown for shown in _Figures.shown):
            _send_display(_render_figure(fig))
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)


def _close_all_figures():
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    if helpers is not None:
        helpers.Gcf.destroy_all()


def _pyplot_show(*args, **kwargs):
    """Display all open figures as PNG images and close them."""
    _show_open_figures()


def _figure_show(self, warn=True):
    """Display this figure as a PNG image."""
    _send_display(_figure_bundle(self))


def _patch_pyplot(module):
    module.show = _pyplot_show
    figure = sys.modules.get("matplotlib.figure")
    if figure is not None:
        figure.Figure.show = _figure_show


def _patch_loaded_pyplot():
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and getattr(pyplot, "show", None) is not _pyplot_show:
        _patch_pyplot(pyplot)


def _patch_ipython_display(module):
    """A real IPython (if installed) displays through the runner as well."""
    if hasattr(module, "display"):
        module.display = display


_POST_IMPORT = {
    "matplotlib.pyplot": _patch_pyplot,
    "IPython.core.display_functions": _patch_ipython_display,
    "IPython.display": _patch_ipython_display,
}


class _PostImportHook:
    """Meta path finder that patches some modules the moment they are first imported."""

    def find_spec(self, name, path=None, target=None):
        patch = _POST_IMPORT.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        loader = getattr(spec, "loader", None)
        original = getattr(loader, "exec_module", None)
        if original is None:
            return spec

        def exec_module(module):
            original(module)
            patch(module)

        loader.exec_module = exec_module
        return spec

    def invalidate_caches(self):
        pass


def _prepare_matplotlib():
    """Agg backend and a writable config dir holding the prebuilt font cache."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    config_dir = os.environ.setdefault("MPLCONFIGDIR", "/tmp/.mpl")
    try:
        os.makedirs(config_dir, mode=0o700, exist_ok=True)
        names = os.listdir(MPL_CACHE_DIR) if MPL_CACHE_DIR else []
    except OSError:
        return
    for name in names:
        if name.endswith(".json"):
            try:
                _copy_file(os.path.join(MPL_CACHE_DIR, name), os.path.join(config_dir, name))
            except OSError:
                pass


def _copy_file(src, dst):
    """Copies in the kernel (sendfile): no Python buffers, which in a fork of
    the zygote would be fresh private pages."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            offset, size = 0, os.fstat(fd_in).st_size
            while offset < size:
                sent = os.sendfile(fd_out, fd_in, offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


# --- IPython.display stand-in -------------------------------------------------------------


class _RichText:
    """Base of the IPython.display stand-ins for text formats."""

    def __init__(self, data=None, url=None, filename=None, metadata=None, **_ignored):
        if filename is not None:
            with open(filename, encoding="utf-8", errors="replace") as f:
                data = f.read()
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        self.data = "" if data is None else str(data)

    def __repr__(self):
        return "<IPython.display.%s object>" % type(self).__name__


class HTML(_RichText):
    def _repr_html_(self):
        return self.data


class Markdown(_RichText):
    def _repr_markdown_(self):
        return self.data


class SVG(_RichText):
    def _repr_svg_(self):
        return self.data


class Latex(_RichText):
    def _repr_latex_(self):
        return self.data


class Image:
    """IPython.display.Image stand-in for PNG and JPEG bytes or files."""

    def __init__(self, data=None, url=None, filename=None, format=None, **_ignored):
        if filename is None and isinstance(data, str) and os.path.isfile(data):
            filename, data = data, None
        if filename is not None:
            with open(filename, "rb") as f:
                data = f.read()
            format = format or filename.rsplit(".", 1)[-1]
        self.data = bytes(data) if isinstance(data, (bytes, bytearray)) else None
        if format is None:
            format = "jpeg" if self.data and self.data[:2] == b"\xff\xd8" else "png"
        self.format = format.lower().replace("jpg", "jpeg")

    def _repr_png_(self):
        return self.data if self.format == "png" else None

    def _repr_jpeg_(self):
        return self.data if self.format == "jpeg" else None

    def __repr__(self):
        return "<IPython.display.Image object>"


def clear_output(wait=False):
    """No-op: output is a stream of events."""


class _IPythonShim:
    """Last finder on sys.meta_path: provides IPython.display when IPython is not installed."""

    PACKAGES = ("IPython", "IPython.core")
    MODULES = ("IPython.display", "IPython.core.display")

    def find_spec(self, name, path=None, target=None):
        if name in self.PACKAGES or name in self.MODULES:
            return importlib.util.spec_from_loader(name, self, is_package=name in self.PACKAGES)
        return None

    def invalidate_caches(self):
        pass

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if module.__name__ == "IPython":
            module.get_ipython = lambda: None
            importlib.import_module("IPython.display")
            return
        names = (display, clear_output, HTML, Markdown, SVG, Latex, Image)
        for value in names:
            setattr(module, value.__name__, value)


# --- IPython habits in the source ---------------------------------------------------------

_MAGIC_LINE = re.compile(r"^([ \t]*)([%!])(.*)$")
_INSTALLER = re.compile(r"\b(pip3?|conda|mamba|micromamba|uv)\b.*\binstall\b")
_TIMEIT_OPTIONS = re.compile(r"^(?:-[a-zA-Z]+(?:\s+\d+)?\s+)*")
_INSTALLERS = {"pip", "pip3", "conda", "mamba", "micromamba", "uv"}
_NOT_LIBRARIES = {"pip", "setuptools", "wheel"}
_CELL_MAGICS_RUN = {"time", "timeit", "capture"}


def _transform_magics(code):
    """Turns IPython magics into plain Python line for line; returns (source, notes)."""
    lines, notes = code.split("\n"), []
    for index, line in enumerate(lines):
        match = _MAGIC_LINE.match(line)
        if match is None:
            continue
        indent, sigil, body = match.groups()
        if sigil == "%" and body.startswith("%"):
            name = (body[1:].split() or [""])[0]
            if name not in _CELL_MAGICS_RUN:
                notes.append("kiln: the cell magic %%%%%s is not available; the cell was not run" % name)
                return "", notes
            replacement = ""
        else:
            replacement, note = _replace_line_magic(sigil, body.strip())
            if note:
                notes.append(note)
        lines[index] = indent + (replacement or ("pass" if indent else ""))
    return "\n".join(lines), notes


def _replace_line_magic(sigil, body):
    name = (body.split() or [""])[0]
    if _INSTALLER.search(body) and (sigil == "!" or name in _INSTALLERS):
        return "", _install_note(sigil + body)
    if sigil == "!":
        return "", "kiln: shell commands are not available in this sandbox; skipped: !" + body
    if name in ("time", "timeit"):
        statement = body[len(name):].strip()
        return (_TIMEIT_OPTIONS.sub("", statement) if name == "timeit" else statement), None
    return "", None  # %matplotlib inline, %config, %load_ext ...: nothing to do


def _install_note(command):
    return (
        "kiln: installing packages is not available in this sandbox (no network); skipped: %s\n"
        "kiln: the preinstalled libraries are: %s" % (command, ", ".join(_installed_libraries()))
    )


def _installed_libraries():
    from importlib import metadata

    found = {}
    try:
        dists = metadata.distributions(path=[SITE_DIR]) if SITE_DIR else metadata.distributions()
        for dist in dists:
            name = dist.metadata["Name"]
            if name and name.lower() not in _NOT_LIBRARIES:
                found.setdefault(name.lower(), "%s %s" % (name, dist.version))
    except Exception:
        pass
    return [found[key] for key in sorted(found)] or ["(none found)"]


# --- Compiling and running a cell ---------------------------------------------------------

_CELL_CODE = {}  # id(code object) -> (code object, source lines): tracebacks of old cells


class _Session:
    namespace = None
    user_module = None
    loop = None


def _split_lines(source):
    return re.split(r"\r\n|\r|\n", source)


def _parse(source):
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    return compile(source, CELL, "exec", flags, dont_inherit=True)


def _prepare_source(code):
    try:
        _parse(code)
        return code
    except (SyntaxError, ValueError):
        pass
    source, notes = _transform_magics(code)
    for note in notes:
        _note(note)
    return source


def _remember_source(source):
    lines = [line + "\n" for line in _split_lines(source)]
    linecache.cache[CELL] = (len(source), None, lines, CELL)
    return lines


def _remember_code(code, lines):
    pending = [code]
    while pending:
        current = pending.pop()
        _CELL_CODE[id(current)] = (current, lines)
        pending.extend(c for c in current.co_consts if isinstance(c, types.CodeType))


def _ends_with_semicolon(lines, node):
    line = lines[node.end_lineno - 1].encode("utf-8")[node.end_col_offset:]
    return line.decode("utf-8", "ignore").lstrip().startswith(";")


def _compile_cell(source, lines):
    """The cell's code, and separately the code of a last bare expression (or None)."""
    tree = _parse(source)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        if not _ends_with_semicolon(lines, tree.body[-1]):
            last = ast.Expression(tree.body.pop().value)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    body = compile(tree, CELL, "exec", flags, dont_inherit=True)
    _remember_code(body, lines)
    if last is None:
        return body, None
    value = compile(last, CELL, "eval", flags, dont_inherit=True)
    _remember_code(value, lines)
    return body, value


def _event_loop():
    import asyncio

    loop = _Session.loop
    if loop is None or loop.is_closed():
        loop = _Session.loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def _run_code(code):
    if code.co_flags & _CO_COROUTINE:
        return _event_loop().run_until_complete(_eval(code, _Session.namespace))
    return _eval(code, _Session.namespace)


def _execute_cell(code):
    source = _prepare_source(code)
    lines = _remember_source(source)
    body, value_code = _compile_cell(source, lines)
    _run_code(body)
    if value_code is not None:
        value = _run_code(value_code)
        if value is not None:
            _Session.namespace["_"] = value
            _display_main_result(value)
    _show_open_figures()


# Marks the bundle of a cell's last bare expression (Jupyter's execute_result, E2B's
# is_main_result) among the other displays of the cell.
MAIN_RESULT_KEY = "application/vnd.kiln.main-result"


def _display_main_result(value):
    data = _mimebundle(value)
    if data:
        data[MAIN_RESULT_KEY] = "true"
    _send_display(data)


def _run_user_code(code):
    """Runs one cell; returns the status and reports what went wrong."""
    try:
        try:
            _Interrupts.user = True
            if _Interrupts.early:
                _Interrupts.early = False
                raise KeyboardInterrupt
            _execute_cell(code)
        finally:
            _Interrupts.user = False
            _Interrupts.armed = False
    except KeyboardInterrupt as exc:
        _report(exc)
        return "interrupted"
    except SystemExit as exc:
        if exc.code is None or (isinstance(exc.code, int) and exc.code == 0):
            return "ok"
        _report(exc)
        return "error"
    except BaseException as exc:
        _report(exc)
        return "error"
    return "ok"


class _ImportGuard:
    """The environment's denied modules, enforced when *user code* imports them.

    Wraps ``builtins.__import__``: an ``import`` statement passes its frame's globals,
    so an import written in the user's cells or functions arrives with the user
    namespace, and one inside numpy or pandas with that module's own globals. Only the
    first is checked, so libraries keep importing what they need internally. A speed
    bump with the same table as kiln's static check (crates/check), not a wall:
    ``importlib.import_module`` does not come through here, and the sandbox (no
    network, seccomp, no host files) is what holds.
    """

    denied = {}  # module -> reason; set by each execute frame
    original = None

    @staticmethod
    def install():
        _ImportGuard.original = builtins.__import__
        builtins.__import__ = _ImportGuard.hook

    @staticmethod
    def set(denied):
        if isinstance(denied, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in denied.items()):
            _ImportGuard.denied = dict(denied)
        else:
            _ImportGuard.denied = {}

    @staticmethod
    def hook(name, globals=None, locals=None, fromlist=(), level=0):
        if not _ImportGuard.denied or level != 0:
            return _ImportGuard.original(name, globals, locals, fromlist, level)
        # `__import__("x")` called by hand passes no globals: ask the caller's frame.
        caller = globals if globals is not None else sys._getframe(1).f_globals
        if caller is _Session.namespace:
            _ImportGuard.check(name)
            for item in fromlist or ():
                if isinstance(item, str) and item != "*":
                    _ImportGuard.check(name + "." + item)
        return _ImportGuard.original(name, globals, locals, fromlist, level)

    @staticmethod
    def check(module):
        for denied, reason in _ImportGuard.denied.items():
            if module == denied or module.startswith(denied + "."):
                raise ImportError(
                    "kiln: import of %r is not allowed in this sandbox%s" % (
                        denied, " (%s)" % reason if reason else ""),
                    name=module)


def _make_namespace():
    module = types.ModuleType("__main__")
    module.__dict__.update(__builtins__=builtins, __package__=None, __loader__=None, __spec__=None)
    sys.modules["__main__"] = module
    _Session.user_module = module
    _Session.namespace = module.__dict__


# --- Exceptions -------------------------------------------------------------------------

_MAX_VALUE_CHARS = 16 << 10
_MAX_LINE_CHARS = 4 << 10
_MAX_LINES = 400


def _report(exc):
    lines = [line[:_MAX_LINE_CHARS] for line in _traceback_lines(exc)]
    if len(lines) > _MAX_LINES:
        lines = lines[:100] + ["... %d lines left out ..." % (len(lines) - 399)] + lines[-299:]
    CHANNEL.send({
        "type": "error",
        "name": type(exc).__name__,
        "value": _exception_value(exc)[:_MAX_VALUE_CHARS],
        "traceback": lines,
    })


def _exception_value(exc):
    try:
        return str(exc)
    except Exception:
        return "<str() of the exception failed>"


def _traceback_lines(exc):
    try:
        te = traceback.TracebackException(
            type(exc), exc, exc.__traceback__, lookup_lines=False, compact=True
        )
        _clean_traceback(te, exc, set())
        lines = []
        for chunk in te.format():
            lines.extend(chunk.rstrip("\n").split("\n"))
        return lines
    except Exception:
        return ["%s: %s" % (type(exc).__name__, _exception_value(exc))]


def _clean_traceback(te, exc, seen):
    """Removes the runner's frames, in the exception and everything chained to it."""
    if te is None or exc is None or id(te) in seen:
        return
    seen.add(id(te))
    te.stack = _user_stack(exc.__traceback__)
    _clean_traceback(te.__cause__, exc.__cause__, seen)
    _clean_traceback(te.__context__, exc.__context__, seen)
    sub_tes = getattr(te, "exceptions", None) or ()
    for sub_te, sub_exc in zip(sub_tes, getattr(exc, "exceptions", None) or ()):
        _clean_traceback(sub_te, sub_exc, seen)


def _user_stack(tb):
    entries = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename != RUNNER_FILE:
            entries.append((code, tb.tb_lineno, tb.tb_lasti))
        tb = tb.tb_next
    cells = [i for i, entry in enumerate(entries) if id(entry[0]) in _CELL_CODE]
    if cells:
        entries = entries[cells[0]:]  # drops asyncio's frames above the cell
    return traceback.StackSummary.from_list([_frame_summary(*entry) for entry in entries])


def _frame_summary(code, lineno, lasti):
    positions = _positions(code, lasti)
    known = _CELL_CODE.get(id(code))
    if known is None:
        return traceback.FrameSummary(code.co_filename, lineno, code.co_name, **positions)
    lines = known[1]
    line = lines[lineno - 1] if lineno and 0 < lineno <= len(lines) else ""
    return traceback.FrameSummary(
        CELL, lineno, code.co_name, lookup_line=False, line=line, **positions
    )


def _positions(code, lasti):
    if lasti is None or lasti < 0 or not hasattr(code, "co_positions"):
        return {}
    try:
        _, end_lineno, colno, end_colno = next(
            itertools.islice(code.co_positions(), lasti // 2, None)
        )
    except (StopIteration, ValueError):
        return {}
    return {"end_lineno": end_lineno, "colno": colno, "end_colno": end_colno}


# --- Processes ------------------------------------------------------------------------------


def _kill_and_reap():
    """As PID 1 of the sandbox: SIGKILL every other process and reap them all."""
    if os.getpid() != 1:
        return
    try:
        os.kill(-1, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = _monotonic() + 2.0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if _monotonic() > deadline:
                return
            _sleep(0.001)


# --- Files under KILN_OUT_DIR -------------------------------------------------------------

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _walk_out(top):
    """(relative path, lstat, dir fd, name) of every non-directory below top.

    Never follows a symlink: os.fwalk does not enter symlinked directories, and every
    entry is looked at relative to its directory's fd.
    """
    try:
        for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    yield os.path.relpath(os.path.join(dirpath, name), top), st, dirfd, name
    except OSError:
        return


def _snapshot(top):
    return {rel: _signature(st) for rel, st, _, _ in _walk_out(top)}


def _signature(st):
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _collect_files(before):
    """Sends every regular file under OUT_DIR that is new or changed since `before`."""
    count = total = 0
    for rel, st, dirfd, name in _walk_out(OUT_DIR):
        if before.get(rel) == _signature(st):
            continue
        where = "%s/%s" % (OUT_DIR.rstrip("/"), rel)
        if not stat.S_ISREG(st.st_mode):
            _note("kiln: skipped %s: not a regular file" % where)
            continue
        if count >= ARTIFACT_MAX_COUNT:
            _note("kiln: stopped collecting files: at most %d per execution" % ARTIFACT_MAX_COUNT)
            return
        skip = _size_problem(rel, st.st_size, total)
        if skip:
            _note("kiln: skipped %s: %s" % (where, skip))
            continue
        data = _read_regular(name, dirfd, st.st_size)
        if data is None:
            _note("kiln: skipped %s: not a regular file" % where)
            continue
        CHANNEL.send({
            "type": "file", "path": rel, "size": len(data),
            "data_b64": base64.b64encode(data).decode("ascii"),
        })
        count += 1
        total += len(data)


def _size_problem(rel, size, total):
    if total + size > ARTIFACT_MAX_BYTES:
        return "the files of one execution may hold at most %d bytes" % ARTIFACT_MAX_BYTES
    skeleton = {"type": "file", "path": rel, "size": size, "data_b64": ""}
    if _bundle_size(skeleton) + 4 * ((size + 2) // 3) > FRAME_MAX_BYTES:
        return "%d bytes is more than one file frame can carry" % size
    return None


def _read_regular(name, dirfd, size):
    """The first `size` bytes of a regular file, or None if it is anything else."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dirfd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


# --- Input files -----------------------------------------------------------------------------


def _write_input_files(files):
    """Writes the execute message's files under WORK_DIR before the code runs."""
    for item in files if isinstance(files, list) else ():
        path = item.get("path") if isinstance(item, dict) else None
        try:
            data = base64.b64decode(item.get("data_b64", ""), validate=True)
            _write_under(WORK_DIR, path, data)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            _note("kiln: could not write the input file %r: %s" % (path, exc))


def _write_under(root, rel, data):
    """Creates root/rel without following any symlink; refuses absolute paths and '..'."""
    parts = [p for p in rel.split("/") if p not in ("", ".")] if isinstance(rel, str) else []
    if not parts or rel.startswith("/") or ".." in parts:
        raise ValueError("not a relative path below %s" % root)
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=dirfd)
            except FileExistsError:
                pass
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            subdir = os.open(part, flags, dir_fd=dirfd)
            os.close(dirfd)
            dirfd = subdir
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, 0o644, dir_fd=dirfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


# --- File requests (between executions) ----------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_MAX_BYTES = 4096
_LIST_MAX_ENTRIES = 10_000
_MESSAGE_MAX_CHARS = 1024
_UPLOAD_PREFIX = ".kiln-upload-"


class _FileRefused(Exception):
    """A file request that fails: kind is the error frame's name."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def _path_parts(path, allow_root=False):
    """The components of a relative path below WORK_DIR, or _FileRefused."""
    if not isinstance(path, str):
        raise _FileRefused("refused", "the path must be a string")
    if path == "" and allow_root:
        return []
    if path == "":
        raise _FileRefused("refused", "the path is empty")
    if "\0" in path:
        raise _FileRefused("refused", "the path contains a NUL byte")
    if path.startswith("/"):
        raise _FileRefused("refused", "%s: absolute paths are refused" % path)
    try:
        if len(path.encode("utf-8")) > _PATH_MAX_BYTES:
            raise _FileRefused("refused", "the path is longer than %d bytes" % _PATH_MAX_BYTES)
    except UnicodeError:
        raise _FileRefused("refused", "the path is not valid UTF-8") from None
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise _FileRefused("refused", "%s: empty, '.' and '..' segments are refused" % path)
    return parts


def _kind_of(mode):
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


_WHAT = {"dir": "a directory", "symlink": "a symbolic link (never followed)"}


def _what(mode):
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return _WHAT.get(_kind_of(mode), "not a regular file")


def _lstat(name, dirfd):
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _refusal(exc, dirfd, name, rel, want_dir):
    """Why opening `name` (shown as rel) below dirfd failed, as a _FileRefused."""
    try:
        st = _lstat(name, dirfd)
    except OSError:
        st = None
    if st is None or isinstance(exc, FileNotFoundError):
        return _FileRefused("not_found", "%s: no such file or directory" % rel)
    if want_dir and not stat.S_ISDIR(st.st_mode):
        if stat.S_ISREG(st.st_mode):
            return _FileRefused("not_found", "%s: not a directory" % rel)
        return _FileRefused("not_regular", "%s is %s, not a directory" % (rel, _what(st.st_mode)))
    if not want_dir and not stat.S_ISREG(st.st_mode):
        return _FileRefused("not_regular", "%s is %s" % (rel, _what(st.st_mode)))
    return _FileRefused("io", "%s: %s" % (rel, exc.strerror or exc))


def _open_dir(parts, create=False):
    """An fd of WORK_DIR/parts, opened one component at a time, never through a symlink."""
    fd = os.open(WORK_DIR, _DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            made = False
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise _refusal(exc, fd, part, "/".join(parts[:i + 1]), True) from None
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, fd, part, "/".join(parts[:i + 1]), True) from None
            os.close(fd)
            fd = sub
            if made:
                os.fchmod(fd, 0o755)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_regular(dirfd, name, rel, flags):
    """An fd of the regular file name in dirfd: lstat first, so a FIFO or device is never
    opened, then O_NOFOLLOW|O_NONBLOCK and fstat, so a swap in between is caught too."""
    st = _lstat(name, dirfd)
    if st is None:
        raise _FileRefused("not_found", "%s: no such file or directory" % rel)
    if not stat.S_ISREG(st.st_mode):
        raise _FileRefused("not_regular", "%s is %s" % (rel, _what(st.st_mode)))
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        raise _refusal(exc, dirfd, name, rel, False) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _FileRefused("not_regular", "%s is %s" % (rel, _what(st.st_mode)))
    return fd, st


def _read_file(path, max_bytes):
    parts = _path_parts(path)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
        raise _FileRefused("io", "max_bytes must be a non-negative integer")
    dirfd = _open_dir(parts[:-1])
    try:
        fd, st = _open_regular(dirfd, parts[-1], path, os.O_RDONLY)
    finally:
        os.close(dirfd)
    try:
        too_large = _FileRefused(
            "too_large", "%s: larger than the %d bytes allowed" % (path, max_bytes)
        )
        if st.st_size > max_bytes:
            raise too_large
        chunks, total = [], 0
        while total <= max_bytes:  # one byte past the cap shows a file that grew
            chunk = os.read(fd, min(max_bytes + 1 - total, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise too_large
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return {
        "type": "file_data", "path": path, "size": len(data),
        "data_b64": base64.b64encode(data).decode("ascii"),
    }


def _write_file(path, data_b64):
    parts = _path_parts(path)
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (TypeError, ValueError):
        raise _FileRefused("io", "data_b64 is not valid base64") from None
    dirfd = _open_dir(parts[:-1], create=True)
    try:
        name = parts[-1]
        st = _lstat(name, dirfd)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise _FileRefused("not_regular", "%s is %s" % (path, _what(st.st_mode)))
        tmp = _UPLOAD_PREFIX + os.urandom(8).hex()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=dirfd)
        try:
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dirfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dirfd)
    return None


def _list_files(path):
    parts = _path_parts(path, allow_root=True)
    dirfd = _open_dir(parts)
    try:
        entries = []
        for name in sorted(os.listdir(dirfd)):
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            kind = _kind_of(st.st_mode)
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            entries.append({"name": shown, "kind": kind, "size": st.st_size if kind == "file" else 0})
            if len(entries) > _LIST_MAX_ENTRIES:
                raise _FileRefused(
                    "too_large", "%s: more than %d entries" % (path or ".", _LIST_MAX_ENTRIES)
                )
    finally:
        os.close(dirfd)
    return {"type": "file_list", "path": path, "entries": entries}


_FILE_REQUESTS = {
    "write_file": lambda msg: _write_file(msg.get("path"), msg.get("data_b64")),
    "read_file": lambda msg: _read_file(msg.get("path"), msg.get("max_bytes")),
    "list_files": lambda msg: _list_files(msg.get("path")),
}


def _file_request(kind, msg):
    """Serves one file request: its answer (if any) then the status for done."""
    try:
        answer = _FILE_REQUESTS[kind](msg)
        # read_file's frame is as large as the supervisor asked for; a listing
        # must fit an ordinary frame.
        limit = None if kind == "read_file" else FRAME_MAX_BYTES
        if answer is not None and not CHANNEL.send_reply(answer, limit):
            raise _FileRefused("too_large", "the answer is larger than one frame can carry")
        return "ok"
    except _FileRefused as exc:
        name, value = exc.kind, exc.message
    except OSError as exc:
        name, value = "io", "%s: %s" % (msg.get("path"), exc.strerror or exc)
    except Exception as exc:
        name, value = "io", "%s: %s" % (type(exc).__name__, exc)
    CHANNEL.send({
        "type": "error", "name": name, "value": str(value)[:_MESSAGE_MAX_CHARS], "traceback": [],
    })
    return "error"


# --- Setup and the serve loop ---------------------------------------------------------------


def _set_not_dumpable():
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def _add_site_dir():
    if SITE_DIR and os.path.isdir(SITE_DIR):
        import site

        site.addsitedir(SITE_DIR)


LIBRARY_TREE = "/libraries"


def _add_library_tree():
    """Libraries from kiln's wheelhouse, when the session asked for one: a read-only
    tree the supervisor mounted. After the runtime's own site dir, so its pins win."""
    if os.path.isdir(LIBRARY_TREE):
        import site

        site.addsitedir(LIBRARY_TREE)


def _open_channel():
    sock = socket.socket(fileno=CHANNEL_FD)
    sock.setblocking(True)
    os.set_inheritable(CHANNEL_FD, False)
    return Channel(sock)


def _safely(fn, *args):
    """Runs a step of the runner; a failure is noted instead of ending the runner."""
    try:
        return fn(*args)
    except Exception as exc:
        _note("kiln: internal error in %s: %s: %s" % (fn.__name__, type(exc).__name__, exc))
        return None


def _prepare_execution():
    _Interrupts.pending = False
    _Interrupts.early = False
    _Interrupts.armed = True
    _install_stdio()
    signal.signal(signal.SIGINT, _on_sigint)
    _patch_loaded_pyplot()
    _Figures.shown = []
    _close_all_figures()


def _run_execution(code, files, deny_imports=None):
    _ImportGuard.set(deny_imports)
    CHANNEL.begin()
    _safely(_prepare_execution)
    _safely(_write_input_files, files)
    before = _safely(_snapshot, OUT_DIR) or {}
    status = _run_user_code(code)
    _safely(_finish_streams)
    _safely(_close_all_figures)
    _Figures.shown = []
    _safely(_kill_and_reap)
    _safely(_collect_files, before)
    CHANNEL.end()
    return status


def _setup_session(env, files):
    """A session's setup: its environment variables, then its input files.

    Any failure is reported as one error frame and status "error": the supervisor
    then does not start the session, so nothing is half set up.
    """
    try:
        if not isinstance(env, dict) or not isinstance(files, list):
            raise ValueError("setup needs an env object and a files list")
        for name, value in env.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ValueError("environment names and values must be strings")
            os.environ[name] = value
        for item in files:
            path = item.get("path") if isinstance(item, dict) else None
            try:
                data = base64.b64decode(item.get("data_b64", ""), validate=True)
                _write_under(WORK_DIR, path, data)
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                raise ValueError("could not write the input file %r: %s" % (path, exc)) from None
    except Exception as exc:
        CHANNEL.send({
            "type": "error", "name": "SetupError", "value": str(exc), "traceback": [],
        })
        return "error"
    return "ok"


def _serve():
    while True:
        try:
            msg = CHANNEL.recv()
        except ValueError as exc:  # bad UTF-8 or JSON
            msg = {"type": "invalid", "detail": str(exc)}
        if msg is None:
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        code = msg.get("code") if kind == "execute" else None
        if kind == "setup":
            status = _setup_session(msg.get("env"), msg.get("files"))
        elif kind in _FILE_REQUESTS:
            status = _file_request(kind, msg)
        elif isinstance(code, str):
            status = _run_execution(code, msg.get("files"), msg.get("deny_imports"))
        else:
            CHANNEL.send({
                "type": "error", "name": "ProtocolError",
                "value": "expected {\"type\":\"execute\",\"code\":...}", "traceback": [],
            })
            status = "error"
        CHANNEL.send({"type": "done", "status": status})


# --- egress forwarder --------------------------------------------------------
# Only in a sandbox of an environment with an egress table (docs/egress.md):
# the network namespace holds nothing but lo; kiln's proxy runs outside the
# sandbox, reached through the unix socket KILN_EGRESS_SOCKET bound into it.
# HTTP clients only speak to a proxy over TCP, so this thread listens on
# 127.0.0.1:KILN_EGRESS_PORT (HTTP_PROXY points there) and relays each
# connection to the socket, byte for byte. It decides nothing: user code
# could reach the socket itself; the proxy outside is the one that checks.


def _egress_pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _egress_relay(conn, path):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
        back = threading.Thread(target=_egress_pipe, args=(upstream, conn), daemon=True)
        back.start()
        _egress_pipe(conn, upstream)
        back.join()
    except (OSError, RuntimeError):
        pass
    finally:
        conn.close()
        upstream.close()


def _egress_accept(server, path):
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            continue
        try:
            threading.Thread(target=_egress_relay, args=(conn, path), daemon=True).start()
        except RuntimeError:  # no thread left under the pids limit
            conn.close()


def _start_egress_forwarder():
    """Starts the forwarder thread when this sandbox has egress; before any user code."""
    path = os.environ.get("KILN_EGRESS_SOCKET", "")
    port = _env_int("KILN_EGRESS_PORT", 0)
    if not path or not port:
        return
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    threading.Thread(
        target=_egress_accept, args=(server, path), name="kiln-egress-forwarder", daemon=True
    ).start()


def main():
    global CHANNEL
    if not _IN_ZYGOTE_FORK:
        _set_not_dumpable()
        _add_site_dir()
    _add_library_tree()
    _prepare_matplotlib()
    CHANNEL = _open_channel()
    os.register_at_fork(after_in_child=CHANNEL.after_fork_in_child)
    _install_stdio()
    _start_egress_forwarder()
    builtins.display = display
    sys.meta_path.insert(0, _PostImportHook())
    sys.meta_path.append(_IPythonShim())
    _make_namespace()
    _ImportGuard.install()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        os.makedirs(OUT_DIR, exist_ok=True)
    except OSError:
        pass
    ready = {"type": "ready"}
    if _STARTUP_STEPS:
        ready["steps"] = _STARTUP_STEPS
    CHANNEL.send(ready)
    _serve()
    CHANNEL.flush()
    _os_exit(0)


if __name__ == "__main__":
    _RUNNER_MODULE = sys.modules[__name__]  # stays alive once __main__ is the user's
    main()
