/*
 * manyconn: one process opens N connections at once without blocking and
 * serves them all from one thread with a poller — what an MPI progress
 * engine does with a connection per rank.
 *
 *   manyconn server IFACE ADDR        echo every message back, forever
 *   manyconn client IFACE ADDR N      N connects at once, one message each
 *
 * The client prints "connected=N echoed=N ms=..." and exits 0 when every
 * connection echoed its message intact.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xsock.h"

static int die(const char *what, int rc) {
    fprintf(stderr, "manyconn: %s: %s (%s)\n", what, xsock_strerror(rc), xsock_last_error());
    return 1;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s server IFACE ADDR | client IFACE ADDR N\n", argv[0]);
        return 2;
    }
    xsock_config cfg = {0};
    cfg.iface = strcmp(argv[2], "-") == 0 ? NULL : argv[2];
    cfg.inline_poll = 1;
    cfg.transport = XSOCK_TRANSPORT_AUTO;
    xsock_runtime *rt = NULL;
    int rc = xsock_runtime_new(&cfg, &rt);
    if (rc) return die("runtime", rc);
    xsock_poller *p = NULL;
    if ((rc = xsock_poller_new(rt, &p))) return die("poller", rc);
    xsock_event ev[256];
    char buf[4096];

    if (strcmp(argv[1], "server") == 0) {
        xsock_listener *l = NULL;
        if ((rc = xsock_listen(rt, argv[3], 1, &l))) return die("listen", rc);
        if ((rc = xsock_poller_add_listener(p, l, 0))) return die("poller add listener", rc);
        printf("listening\n");
        fflush(stdout);
        xsock_stream **conns = calloc(1 << 16, sizeof(*conns));
        uint64_t next = 1;
        for (;;) {
            int n = xsock_poller_wait(p, ev, 256, -1);
            if (n < 0) return die("wait", n);
            for (int i = 0; i < n; i++) {
                if (ev[i].token == 0) {
                    xsock_stream *s;
                    while (next < (1 << 16) && xsock_accept(l, 0, &s) == XSOCK_OK) {
                        conns[next] = s;
                        if ((rc = xsock_poller_add(p, s, next, XSOCK_POLLIN))) return die("poller add", rc);
                        next++;
                    }
                    continue;
                }
                xsock_stream *s = conns[ev[i].token];
                if (!s) continue;
                int64_t got = xsock_recv_msg(s, buf, sizeof buf);
                if (got > 0) {
                    if ((rc = (int)xsock_send_msg(s, buf, (size_t)got)) < 0) return die("send", rc);
                } else {
                    /* the end of the stream (or an error): done with it */
                    xsock_poller_del(p, ev[i].token);
                    xsock_close(s, 5000);
                    conns[ev[i].token] = NULL;
                }
            }
        }
    }

    int total = atoi(argv[4]);
    if (total < 1 || total > 60000) return die("client", XSOCK_EINVAL);
    xsock_stream **s = calloc((size_t)total, sizeof(*s));
    char *state = calloc((size_t)total, 1); /* 0 connecting, 1 sent, 2 echoed */
    double t0 = now_ms();
    for (int i = 0; i < total; i++) {
        if ((rc = xsock_connect_start(rt, argv[3], 1, 20000, &s[i]))) return die("connect_start", rc);
        if ((rc = xsock_poller_add(p, s[i], (uint64_t)i, XSOCK_POLLOUT))) return die("poller add", rc);
    }
    int connected = 0, echoed = 0;
    while (echoed < total) {
        if (now_ms() - t0 > 60000) {
            fprintf(stderr, "manyconn: timed out with %d connected, %d echoed\n", connected, echoed);
            return 1;
        }
        int n = xsock_poller_wait(p, ev, 256, 1000);
        if (n < 0) return die("wait", n);
        for (int k = 0; k < n; k++) {
            int i = (int)ev[k].token;
            if (state[i] == 0) {
                rc = xsock_connect_poll(s[i]);
                if (rc == XSOCK_EAGAIN) continue;
                if (rc) return die("connect", rc);
                connected++;
                int len = snprintf(buf, sizeof buf, "message from connection %d", i);
                if ((rc = (int)xsock_send_msg(s[i], buf, (size_t)len)) < 0) return die("send", rc);
                if ((rc = xsock_poller_modify(p, (uint64_t)i, XSOCK_POLLIN))) return die("modify", rc);
                state[i] = 1;
            } else if (state[i] == 1 && (ev[k].events & XSOCK_POLLIN)) {
                int64_t got = xsock_recv_msg(s[i], buf, sizeof buf);
                if (got < 0) return die("recv", (int)got);
                char want[64];
                int len = snprintf(want, sizeof want, "message from connection %d", i);
                if (got != len || memcmp(buf, want, (size_t)len) != 0) {
                    fprintf(stderr, "manyconn: connection %d echoed the wrong bytes\n", i);
                    return 1;
                }
                xsock_poller_del(p, (uint64_t)i);
                state[i] = 2;
                echoed++;
            }
        }
    }
    double ms = now_ms() - t0;
    int path = xsock_stream_path(s[0]);
    for (int i = 0; i < total; i++) {
        if ((rc = xsock_close(s[i], 5000))) return die("close", rc);
    }
    printf("connected=%d echoed=%d ms=%.1f path=%s\n", connected, echoed, ms,
           path == XSOCK_PATH_LINK ? "link" : path == XSOCK_PATH_KERNEL ? "kernel" : "other");
    xsock_poller_free(p);
    xsock_runtime_free(rt);
    free(s);
    free(state);
    return 0;
}
