"""Non-blocking connects, run by tools/tests/preload.rs both on plain
kernel TCP (what Linux does) and under libxsock_preload.so (which must do
the same): many connects at once, each returning EINPROGRESS at once and
reported writable with SO_ERROR 0 by epoll; a refused port reported by
SO_ERROR; an address nobody holds returns at once and fails later; with
the peer's engine pid given (preload only), a connect while that engine
is stopped returns at once and completes once it runs again.
Every check is an assert: any failure exits non-zero."""

import errno
import selectors
import socket
import sys
import time

from echo import echo  # the same directory


def wait_writable(socks, within):
    """Waits until every socket in `socks` is reported writable (epoll,
    selectors' default here); returns {sock: SO_ERROR}."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    errors = {}
    deadline = time.monotonic() + within
    while len(errors) < len(socks):
        left = deadline - time.monotonic()
        assert left > 0, f"{len(socks) - len(errors)} connects never reported"
        for key, _ in sel.select(left):
            s = key.fileobj
            errors[s] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            sel.unregister(s)
    sel.close()
    return errors


def name(e):
    return errno.errorcode.get(e, str(e))


def start(dest):
    """A non-blocking connect to `dest`, which must return EINPROGRESS at
    once (under half a second); the socket and how long it took."""
    s = socket.socket()
    s.setblocking(False)
    t0 = time.monotonic()
    r = s.connect_ex(dest)
    took = time.monotonic() - t0
    assert r == errno.EINPROGRESS, f"connect to {dest}: {name(r)}"
    assert took < 0.5, f"connect to {dest} took {took:.3f} s"
    return s, took




def main(host, port, nobody, n):
    # Many at once: each connect returns EINPROGRESS without waiting for
    # the handshake (a program opening a connection to every rank opens
    # them all in parallel).
    socks = []
    t0 = time.monotonic()
    for _ in range(n):
        socks.append(start((host, port))[0])
    issued = time.monotonic() - t0
    # A second connect while the first is under way: EALREADY (or, if it
    # is done already, 0 once then EISCONN, as Linux says).
    r = socks[0].connect_ex((host, port))
    assert r in (errno.EALREADY, 0, errno.EISCONN), name(r)
    errors = wait_writable(socks, 20)
    connected = time.monotonic() - t0
    for s, e in errors.items():
        assert e == 0, f"SO_ERROR {name(e)}"
    for i, s in enumerate(socks):
        assert s.getpeername() == (host, port), s.getpeername()
        assert s.getsockname()[1] != 0, s.getsockname()
        r = s.connect_ex((host, port))
        assert r in (0, errno.EISCONN), f"connect again: {name(r)}"
        s.setblocking(True)
        echo(s, f"hello from {i}".encode() * 100)
        s.close()
    print(f"{n} connects issued in {issued * 1e3:.2f} ms, all connected in {connected * 1e3:.2f} ms", flush=True)

    # A port nobody listens on: writable (and hung up), SO_ERROR says
    # ECONNREFUSED once, then 0.
    s, _ = start((host, port + 1))
    e = wait_writable([s], 20)[s]
    assert e == errno.ECONNREFUSED, name(e)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    s.close()
    print("refused ok", flush=True)

    # An address on the subnet nobody holds: the connect returns at once
    # (no waiting on discovery or ARP), the failure comes later.
    s, took = start((nobody, port))
    e = wait_writable([s], 60)[s]
    assert e in (errno.EHOSTUNREACH, errno.ETIMEDOUT), name(e)
    s.close()
    print(f"nobody ok: returned in {took * 1e3:.2f} ms, failed with {name(e)}", flush=True)
    if stopped_engine:
        stalled(host, port, stopped_engine)
    print("nonblocking ok", flush=True)


def stalled(host, port, engine):
    """The peer's engine stopped (SIGSTOP) mid-handshake: the connect
    still returns at once, stays in progress (not writable, SO_ERROR 0,
    no peer name) while the peer cannot answer, and completes once it
    runs again."""
    import os
    import signal

    os.kill(engine, signal.SIGSTOP)
    try:
        s, took = start((host, port))
        time.sleep(1)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_WRITE)
        assert sel.select(0) == [], "writable while the peer cannot answer"
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert s.connect_ex((host, port)) == errno.EALREADY
        try:
            s.getpeername()
            raise AssertionError("a peer name while connecting")
        except OSError as e:
            assert e.errno == errno.ENOTCONN, name(e.errno)
    finally:
        os.kill(engine, signal.SIGCONT)
    e = wait_writable([s], 20)[s]
    assert e == 0, name(e)
    s.setblocking(True)
    echo(s, b"after the stop")
    s.close()
    print(f"stalled ok: returned in {took * 1e3:.2f} ms", flush=True)


def timing(host, port, n):
    """perf/preload.sh: `n` non-blocking connects at once, echoed once
    each; prints the milliseconds until every connect returned and until
    every one was connected."""
    t0 = time.monotonic()
    socks = [start((host, port))[0] for _ in range(n)]
    issued = time.monotonic() - t0
    errors = wait_writable(socks, 30)
    connected = time.monotonic() - t0
    assert all(e == 0 for e in errors.values()), errors
    for s in socks:
        s.setblocking(True)
        echo(s, b"x")
        s.close()
    print(f"{issued * 1e3:.2f} {connected * 1e3:.2f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "time":
        timing(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    stopped_engine = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
