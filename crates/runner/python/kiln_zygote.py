"""kiln's zygote template: imports and warms the data libraries once, then
hands control to the fork loop in libkiln_zygote.so (Rust). It never runs
user code: each fork returns here only after the Rust containment sealed it,
and then becomes a sandbox's runner.

Started by kiln as `python3 -I -B /kiln-zygote/kiln_zygote.py` with fd 3
the control socket, and only the sandbox environment (no secrets).
"""

import ctypes
import gc
import importlib.util
import io
import json
import os
import sys
import types


def _warm():
    import site

    site.addsitedir(os.environ["KILN_SITE"])
    os.makedirs(os.environ.get("MPLCONFIGDIR", "/tmp/.mpl"), exist_ok=True)
    cache = os.environ.get("KILN_MPL_CACHE", "")
    if cache and os.path.isdir(cache):
        import shutil

        for name in os.listdir(cache):
            if name.endswith(".json"):
                shutil.copy(os.path.join(cache, name), os.environ["MPLCONFIGDIR"])
    import numpy as np
    import pandas as pd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.stats  # noqa: F401
    import seaborn  # noqa: F401

    frame = pd.DataFrame(np.random.rand(64, 4), columns=list("abcd"))
    frame.describe().to_html()
    fig, ax = plt.subplots()
    ax.plot(frame["a"])
    fig.savefig(io.BytesIO(), format="png")
    plt.close("all")
    # FreeType keeps each font it rendered open: let go of them, so the
    # template holds no file (a child closes every fd; an object still
    # holding one would later close a number user code reuses).
    import matplotlib.font_manager

    matplotlib.font_manager._get_font.cache_clear()


def _check_no_files():
    """The template holds no file: only stdio, the control socket (3) and
    the error pipe (4, close-on-exec) are open."""
    gc.collect()
    extra = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 4:
            try:
                extra.append((fd, os.readlink(f"/proc/self/fd/{fd}")))
            except OSError:
                pass  # the listdir's own fd, gone by now
    if extra:
        print(f"kiln zygote: the template holds open files: {extra}", file=sys.stderr)
        sys.exit(3)


def _load_runner():
    """The runner module, executed here once (its functions and classes
    defined, nothing started) so each sandbox only calls main()."""
    path = os.environ["KILN_RUNNER"]
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    module = types.ModuleType("kiln_runner")
    module.__file__ = path
    exec(code, module.__dict__)
    module._RUNNER_MODULE = module
    return module


def _set_environment(env):
    """os.environ becomes exactly `env`, changing only what differs from
    the template's: every object a fork writes to (even a reference count)
    costs it a private copy of that page, so clearing and refilling the
    whole mapping would cost a sandbox ~200 pages for nothing."""
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _reseed_numpy(np):
    """numpy's global generator (np.random.rand, np.random.seed's
    RandomState) gets a fresh MT19937 key of 624 words from the kernel, and
    position 624 so the next draw regenerates from it. Half the pages of
    np.random.seed(), which derives the key through a SeedSequence; the
    key here holds more entropy than that seed. (np.random.default_rng()
    seeds each new generator from the kernel itself: nothing inherited.)"""
    key = np.frombuffer(os.urandom(624 * 4), dtype=np.uint32)
    np.random.set_state(("MT19937", key, 624))


class _ArenaAllocator(ctypes.Structure):
    """Python's PyObjectArenaAllocator."""

    _fields_ = [
        ("ctx", ctypes.c_void_p),
        ("alloc", ctypes.c_void_p),
        ("free", ctypes.c_void_p),
    ]


# Address space for the template's object arenas; only what they use is
# kept once the fork loop starts.
_ARENA_RESERVE = 1 << 30


def _use_huge_page_arenas(lib):
    """Python's object arenas come from one 2 MiB-aligned region of the
    library (kiln_native::zygote::arena) instead of one mmap each, so the
    fork loop can move them into huge pages: a fork then copies one page
    table entry per 2 MiB of objects instead of 512. Before any import,
    so the warmed libraries' objects land there."""
    if lib.kiln_zygote_arena_reserve(ctypes.c_size_t(_ARENA_RESERVE)) != 0:
        return  # Python's own arenas, as in a fresh sandbox
    allocator = _ArenaAllocator(
        None,
        ctypes.cast(lib.kiln_zygote_arena_alloc, ctypes.c_void_p),
        ctypes.cast(lib.kiln_zygote_arena_free, ctypes.c_void_p),
    )
    # Python copies the structure; the functions live as long as the library.
    ctypes.pythonapi.PyObject_SetArenaAllocator(ctypes.byref(allocator))


def _become_sandbox(runner, lib):
    """In a sealed child: this sandbox's environment and randomness, then the runner."""
    # The fork was Rust's clone3, not os.fork(): let the interpreter redo
    # what it does after a fork (locks, thread state, at-fork hooks — the
    # random module reseeds itself there).
    ctypes.pythonapi.PyOS_AfterFork_Child()
    env = dict(json.loads(lib.kiln_zygote_child_env().decode("utf-8")))
    _set_environment(env)
    # Forked children share the template's random state: reseed every
    # generator from the kernel before any user code runs.
    import random

    random.seed()
    if "numpy" in sys.modules:
        _reseed_numpy(sys.modules["numpy"])
    # Settings the runner read from the template's environment at import:
    # read them again from this sandbox's.
    if hasattr(runner, "_configure"):
        runner._configure()
    # When each containment step ended, for the ready frame (kiln bench).
    runner._STARTUP_STEPS = json.loads(lib.kiln_zygote_child_steps())
    runner.main()


def main():
    lib = ctypes.CDLL(os.environ["KILN_ZYGOTE_LIB"])
    _use_huge_page_arenas(lib)
    _warm()
    runner = _load_runner()
    # What each sandbox would otherwise write into shared pages, done once.
    sys.modules["kiln_runner"] = runner
    runner._IN_ZYGOTE_FORK = True
    lib.kiln_zygote_child_env.restype = ctypes.c_char_p
    lib.kiln_zygote_child_steps.restype = ctypes.c_char_p
    _check_no_files()
    gc.freeze()  # keep the warmed objects' pages shared, copy-on-write
    rc = lib.kiln_zygote_serve(3)
    if rc != 0:
        os._exit(0)
    _become_sandbox(runner, lib)


main()
