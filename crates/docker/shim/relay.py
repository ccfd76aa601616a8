"""kiln's relay: the container's main process (under the engine's init).

The engine gives a container three byte streams (stdin, stdout, stderr); the runner
wants four fds (an AF_UNIX channel on fd 3, raw stdout and stderr pipes on fds 1 and 2,
/dev/null on fd 0). This relay makes them, forks the runner onto them, and multiplexes:

    container stdin  -> the channel, byte for byte (the supervisor's frames)
    the channel      -> container stdout as   b"C" + u32 length + bytes
    raw stdout pipe  -> container stdout as   b"O" + u32 length + bytes
    raw stderr pipe  -> container stdout as   b"E" + u32 length + bytes

End of stdin shuts the channel's write side (the runner then exits by itself). SIGINT
(sent by the supervisor through the engine API, forwarded by the init) is passed on to
the runner. The relay exits with the runner's status (128 + signal when it was killed).
It runs as the sandbox user with the sandbox's seccomp filter: it is inside the wall,
and the host parses everything it writes as hostile input.

argv: the runner's argv (interpreter, flags, runner path).
"""

import os
import select
import signal
import socket
import struct
import sys

CHUNK = 65536


def _high(fd):
    """A duplicate of fd numbered 10 or more, so dup2 onto 0..3 cannot clobber it."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD, 10)


def start_runner(argv, channel, out_w, err_w):
    pid = os.fork()
    if pid:
        return pid
    try:
        keep = [_high(channel), _high(out_w), _high(err_w), os.open("/dev/null", os.O_RDONLY)]
        keep[3] = _high(keep[3])
        for target, fd in ((0, keep[3]), (1, keep[1]), (2, keep[2]), (3, keep[0])):
            os.dup2(fd, target, inheritable=True)
        os.closerange(4, 1 << 16)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(argv[0], argv)
    except BaseException as e:  # noqa: BLE001 - report anything, then die
        os.write(2, f"kiln relay: cannot start the runner: {e}\n".encode())
    os._exit(127)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main():
    argv = sys.argv[1:]
    if not argv:
        os.write(2, b"kiln relay: no runner command\n")
        return 2
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = start_runner(argv, theirs.fileno(), out_w, err_w)
    theirs.close()
    os.close(out_w)
    os.close(err_w)

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)

    sources = {mine.fileno(): b"C", out_r: b"O", err_r: b"E"}
    stdin_open = True
    while sources:
        watch = list(sources) + ([0] if stdin_open else [])
        try:
            ready, _, _ = select.select(watch, [], [])
        except InterruptedError:
            continue
        for fd in ready:
            try:
                data = os.read(fd, CHUNK)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if fd == 0:
                if data:
                    try:
                        mine.sendall(data)
                    except OSError:
                        stdin_open = False
                else:
                    stdin_open = False
                    try:
                        mine.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                continue
            if not data:
                del sources[fd]
                continue
            write_all(1, sources[fd] + struct.pack(">I", len(data)) + data)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
