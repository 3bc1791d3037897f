/*
 * A ping-pong over xsock's C ABI: the server echoes messages, the client
 * times round trips and checks every byte.
 *
 *   pingpong server IFACE ADDR
 *   pingpong client IFACE ADDR COUNT SIZE
 *
 * IFACE may be "-" for kernel sockets only. Prints one line:
 *   path=link count=N size=S rtt_p50_ns=...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xsock.h"

static int die(const char *what, int code) {
    fprintf(stderr, "pingpong: %s: %s (%s)\n", what, xsock_strerror(code), xsock_last_error());
    return 1;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s server IFACE ADDR | client IFACE ADDR COUNT SIZE\n", argv[0]);
        return 2;
    }
    xsock_config cfg = {0};
    cfg.iface = strcmp(argv[2], "-") == 0 ? NULL : argv[2];
    cfg.inline_poll = 1;
    cfg.busy_poll = 1;
    cfg.transport = XSOCK_TRANSPORT_AUTO;
    xsock_runtime *rt = NULL;
    int rc = xsock_runtime_new(&cfg, &rt);
    if (rc) return die("runtime", rc);

    uint32_t rank, size;
    if (xsock_rank(rt, &rank, &size) == 0) fprintf(stderr, "pingpong: rank %u of %u\n", rank, size);

    if (strcmp(argv[1], "server") == 0) {
        xsock_listener *l = NULL;
        if ((rc = xsock_listen(rt, argv[3], 1, &l))) return die("listen", rc);
        printf("listening\n");
        fflush(stdout);
        xsock_stream *s = NULL;
        if ((rc = xsock_accept(l, -1, &s))) return die("accept", rc);
        size_t cap = 1 << 20;
        char *buf = malloc(cap);
        for (;;) {
            int64_t n = xsock_recv_msg(s, buf, cap);
            if (n == 0) break;
            if (n < 0) return die("recv", (int)n);
            if ((rc = (int)xsock_send_msg(s, buf, (size_t)n)) < 0) return die("send", rc);
        }
        if ((rc = xsock_close(s, 5000))) return die("close", rc);
        xsock_listener_free(l);
        free(buf);
    } else {
        int count = argc > 4 ? atoi(argv[4]) : 1000;
        size_t len = argc > 5 ? (size_t)atol(argv[5]) : 64;
        xsock_stream *s = NULL;
        if ((rc = xsock_connect(rt, argv[3], 1, 10000, &s))) return die("connect", rc);
        char *msg = malloc(len), *back = malloc(len);
        long long *rtt = malloc(sizeof(long long) * (size_t)count);
        for (int i = 0; i < count; i++) {
            for (size_t j = 0; j < len; j++) msg[j] = (char)(i + j);
            long long t0 = now_ns();
            if ((rc = (int)xsock_send_msg(s, msg, len)) < 0) return die("send", rc);
            int64_t n = xsock_recv_msg(s, back, len);
            if (n < 0) return die("recv", (int)n);
            rtt[i] = now_ns() - t0;
            if ((size_t)n != len || memcmp(msg, back, len) != 0) {
                fprintf(stderr, "pingpong: round trip %d came back wrong\n", i);
                return 1;
            }
        }
        qsort(rtt, (size_t)count, sizeof(long long), cmp);
        printf("path=%s count=%d size=%zu rtt_p50_ns=%lld\n",
               xsock_stream_path(s) == XSOCK_PATH_LINK ? "link" : "kernel", count, len, rtt[count / 2]);
        if ((rc = xsock_shutdown(s))) return die("shutdown", rc);
        char tail[8];
        if (xsock_recv_msg(s, tail, sizeof tail) != 0) return die("end of stream", XSOCK_EPROTO);
        if ((rc = xsock_close(s, 5000))) return die("close", rc);
        free(msg);
        free(back);
        free(rtt);
    }
    xsock_runtime_free(rt);
    return 0;
}
