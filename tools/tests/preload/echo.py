"""Run under libxsock_preload.so by tools/tests/preload.rs, unmodified:
a `selectors` echo server, and clients using plain `socket` and `asyncio`.
Every check is an assert: any failure exits non-zero."""

import asyncio
import selectors
import socket
import sys


def server(host, port, conns):
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(128)
    ls.setblocking(False)
    assert ls.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    assert ls.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    sel.register(ls, selectors.EVENT_READ)
    print("listening", ls.getsockname(), flush=True)
    done = 0
    while done < conns:
        events = sel.select(timeout=30)
        assert events, "nothing happened for 30 s"
        for key, _ in events:
            if key.fileobj is ls:
                try:
                    c, addr = ls.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                assert c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert c.getpeername() == addr, (c.getpeername(), addr)
                assert c.getsockname()[0] == host, c.getsockname()
                sel.register(c, selectors.EVENT_READ)
            else:
                c = key.fileobj
                try:
                    data = c.recv(65536)
                except BlockingIOError:
                    continue
                if data:
                    c.setblocking(True)
                    c.sendall(data)
                    c.setblocking(False)
                else:
                    sel.unregister(c)
                    c.close()
                    done += 1
    ls.close()
    print("server done", done, flush=True)


async def echo_async(host, port, n):
    r, w = await asyncio.open_connection(host, port)
    payload = bytes(range(256)) * (n // 256)

    async def send():
        w.write(payload)
        await w.drain()

    _, got = await asyncio.gather(send(), r.readexactly(len(payload)))
    assert got == payload
    w.close()
    await w.wait_closed()


def client(host, port):
    s = socket.create_connection((host, port), timeout=10)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET
    assert s.getpeername() == (host, port), s.getpeername()
    s.sendall(b"x" * 100000)
    got = b""
    while len(got) < 100000:
        got += s.recv(65536)
    assert got == b"x" * 100000
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b""
    s.close()

    async def all_four():
        streams = [echo_async(host, port, 256 * 1024) for _ in range(4)]
        await asyncio.wait_for(asyncio.gather(*streams), 30)

    asyncio.run(all_four())
    print("client ok", flush=True)


def echo(s, msg):
    """Sends `msg` on blocking `s` and checks the echo."""
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        part = s.recv(65536)
        assert part, "the stream ended early"
        got += part
    assert got == msg, (got, msg)


def forks(host, port):
    """An inherited stream keeps working in a forked child; the child opens
    streams of its own; a child started with subprocess (posix_spawn or
    vfork) runs under the preload too; the parent's stream still works
    after all of them."""
    import os
    import subprocess

    s = socket.create_connection((host, port), timeout=10)
    echo(s, b"parent before fork")
    pid = os.fork()
    if pid == 0:
        try:
            echo(s, b"child on the inherited stream")
            own = socket.create_connection((host, port), timeout=10)
            echo(own, b"child on its own stream")
            own.close()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - any failure fails the child
            print("child failed:", repr(e), flush=True)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    code = "import socket; s = socket.create_connection(('%s', %d)); s.sendall(b'spawned'); assert s.recv(7) == b'spawned'" % (host, port)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)
    echo(s, b"parent after the children")
    s.close()
    print("forks ok", flush=True)


if __name__ == "__main__":
    role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role == "server":
        server(host, port, int(sys.argv[4]) if len(sys.argv) > 4 else 5)
    elif role == "forks":
        forks(host, port)
    else:
        client(host, port)
