/*
 * A process attached to the host engine forks: the child's new connect
 * fails at once with a clear error (the control socket is its parent's),
 * the parent's connects keep working.
 *
 *   fork IFACE ADDR     prints "child: <error>" and "parent: connected"
 */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "xsock.h"

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    xsock_config cfg = {0};
    cfg.iface = argv[1];
    xsock_runtime *rt = NULL;
    if (xsock_runtime_new(&cfg, &rt)) {
        fprintf(stderr, "runtime: %s\n", xsock_last_error());
        return 1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        xsock_stream *s = NULL;
        int rc = xsock_connect(rt, argv[2], 1, 5000, &s);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        printf("child: rc=%d after %.1f ms: %s\n", rc, ms, rc ? xsock_last_error() : "connected");
        fflush(stdout);
        _exit(rc != 0 && ms < 1000 ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    xsock_stream *s = NULL;
    int rc = xsock_connect(rt, argv[2], 1, 5000, &s);
    printf("parent: %s\n", rc ? xsock_last_error() : "connected");
    return (WIFEXITED(status) && WEXITSTATUS(status) == 0 && rc == 0) ? 0 : 1;
}
