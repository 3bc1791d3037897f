"""Run under libxsock_preload.so by tools/tests/preload.rs: `s PORT` serves
one connection, sends it 64 KiB and waits to be killed; `c HOST PORT`
reads those 64 KiB, then reports how its next read ends: 'eof', or
'reset: ...' (ConnectionResetError)."""

import socket
import sys
import time

if sys.argv[1] == "s":
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", int(sys.argv[2])))
    ls.listen(1)
    print("listening", flush=True)
    c, _ = ls.accept()
    c.sendall(b"x" * 65536)
    print("sent", flush=True)
    time.sleep(60)
else:
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])))
    got = 0
    while got < 65536:
        got += len(s.recv(65536))
    print("got all", flush=True)
    try:
        r = s.recv(100)
        print("eof" if r == b"" else "data")
    except ConnectionResetError as e:
        print("reset:", e)
