"""A client of the host engine that breaks the Dial rules (run by
tools/tests/preload.rs): each misuse must cost only this client its
connection or its stream, never the engine. Speaks the control protocol
by hand (attach/src/wire.rs)."""

import socket
import struct
import sys
import time

VERSION = 5
HELLO, DIAL = 1, 10
WELCOME, FAILED, DIALED = 64, 67, 74


def attach(path):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c.connect(path)
    c.send(struct.pack("<BHB", HELLO, VERSION, 0))
    assert c.recv(65536)[0] == WELCOME
    return c


def dial(req, dest, port, filler):
    ip = socket.inet_aton(dest)
    # tag, req, ip, port, transport (1: link), timeout ms, filler
    return struct.pack("<BI4sHBII", DIAL, req, ip, port, 1, 5000, filler)


def closed_by_engine(c):
    c.settimeout(10)
    try:
        return c.recv(65536) == b""
    except ConnectionResetError:
        return True


def main(path, dest, port):
    # A proper dial connects.
    c = attach(path)
    a, b = socket.socketpair()
    socket.send_fds(c, [dial(16, dest, port, 0)], [b.fileno()])
    b.close()
    c.settimeout(10)
    m = c.recv(65536)
    assert m[0] == DIALED, m
    a.sendall(b"ping")
    got = a.recv(100)
    assert got == b"ping", (got, m)
    a.close()
    print("proper dial ok", flush=True)
    # Fewer filler bytes than announced: the answer comes, then the stream
    # is reset (the program's end hangs up; the server at port + 1 sees a
    # reset); the client stays attached and is served.
    a, b = socket.socketpair()
    a.send(b"x" * 10)
    socket.send_fds(c, [dial(17, dest, port + 1, 1_000_000)], [b.fileno()])
    b.close()
    m = c.recv(65536)
    assert m[0] in (DIALED, FAILED), m
    a.settimeout(10)
    assert a.recv(100) == b"", "the short-filled stream hung up"
    a, b = socket.socketpair()
    socket.send_fds(c, [dial(18, dest, port, 0)], [b.fileno()])
    b.close()
    m = c.recv(65536)
    assert m[0] == DIALED, m
    a.close()
    print("short filler ok", flush=True)
    # The same request number twice before the first was answered: this
    # client's connection closes.
    for fd_kind in ["tcp", "none", "two", "twice"]:
        c = attach(path)
        a, b = socket.socketpair()
        if fd_kind == "tcp":
            t = socket.socket()
            socket.send_fds(c, [dial(16, dest, port, 0)], [t.fileno()])
        elif fd_kind == "none":
            c.send(dial(16, dest, port, 0))
        elif fd_kind == "two":
            socket.send_fds(c, [dial(16, dest, port, 0)], [a.fileno(), b.fileno()])
        else:
            socket.send_fds(c, [dial(16, "10.255.255.1", port, 0)], [a.fileno()])
            socket.send_fds(c, [dial(16, "10.255.255.1", port, 0)], [b.fileno()])
        deadline = time.monotonic() + 10
        while True:
            c.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                m = c.recv(65536)
            except ConnectionResetError:
                m = b""
            if m == b"":
                break
            assert m[0] == FAILED and fd_kind == "twice", (fd_kind, m)
        print(f"{fd_kind} ok", flush=True)
    print("hostile ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
