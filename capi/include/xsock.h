/*
 * xsock.h — the C ABI of the xsock userspace networking runtime.
 *
 * Link with -lxsock (libxsock.so), or statically with libxsock.a plus
 * -lelf -lz -lpthread -ldl -lm.
 *
 * Conventions
 *   - Calls return 0 (or a byte count) on success and a negative XSOCK_E*
 *     code on failure; xsock_last_error() then describes the failure (what
 *     went wrong and what to do), for the calling thread.
 *   - Addresses are "a.b.c.d:port" strings.
 *   - Timeouts are in milliseconds; -1 waits forever.
 *   - Objects are opaque and freed with their *_free / xsock_close /
 *     xsock_abort call; free streams and listeners before their runtime.
 *   - A stream may be used from one thread at a time.
 */
#ifndef XSOCK_H
#define XSOCK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (negative return values). */
#define XSOCK_OK            0
#define XSOCK_EAGAIN       -1  /* a non-blocking call found nothing to do */
#define XSOCK_ECONNREFUSED -2  /* nothing listens at the address */
#define XSOCK_ECONNRESET   -3  /* the peer reset or aborted the connection */
#define XSOCK_ETIMEDOUT    -4  /* the peer stopped answering, or a wait ran out */
#define XSOCK_ECLOSED      -5  /* the connection or stream is closed */
#define XSOCK_EINVAL       -6  /* a bad argument (address, size, null pointer) */
#define XSOCK_ENOLINK      -7  /* reliable-link requested but no interface is driven */
#define XSOCK_ENOTPEER     -8  /* the peer does not run xsock on this segment */
#define XSOCK_EADDRINUSE   -9  /* the address is already listened on */
#define XSOCK_EMSGSIZE    -10  /* a message did not fit the buffer (it is dropped) */
#define XSOCK_EIO         -11  /* a system or device error */
#define XSOCK_EPERM       -12  /* missing privileges (root or CAP_NET_RAW/ADMIN, CAP_BPF) */
#define XSOCK_ENOTLAUNCHED -13 /* not started by Slurm or an MPI launcher */
#define XSOCK_EPROTO      -14  /* the peer broke the protocol */
#define XSOCK_ENOMEM      -15  /* the memory limit for connection buffers is reached: no new connection */

/* Transports. */
#define XSOCK_TRANSPORT_AUTO   0 /* reliable-link for xsock peers on the segment, else kernel TCP */
#define XSOCK_TRANSPORT_LINK   1 /* reliable-link only */
#define XSOCK_TRANSPORT_KERNEL 2 /* the kernel's TCP only */

/* Paths a stream can take. */
#define XSOCK_PATH_CONNECTING 0 /* still connecting (xsock_connect_start) */
#define XSOCK_PATH_LINK   1
#define XSOCK_PATH_KERNEL 2
#define XSOCK_PATH_TCP    3     /* the TCP mode */

typedef struct xsock_runtime xsock_runtime;
typedef struct xsock_listener xsock_listener;
typedef struct xsock_stream xsock_stream;
typedef struct xsock_poller xsock_poller;

typedef struct xsock_config {
    const char *iface;   /* interface to drive with AF_XDP; NULL = kernel sockets only */
    int inline_poll;     /* 1: the calling threads drive the datapath (lowest latency) */
    int busy_poll;       /* 1: spin while waiting; 0: sleep when idle */
    size_t buffer_bytes; /* most a connection buffers each way (windows grow to it on demand); 0 = 4 MiB */
    int transport;       /* XSOCK_TRANSPORT_* used by xsock_connect and xsock_listen */
    size_t max_message;  /* largest message xsock_recv_msg accepts from a peer (longer: XSOCK_EMSGSIZE and
                            the connection is reset); 0 = 1 GiB */
    size_t memory_limit; /* most all connection buffers may reserve together (beyond: XSOCK_ENOMEM for new
                            connections); 0 = an eighth of the machine's memory */
} xsock_config;

/* Runtime. */
int xsock_runtime_new(const xsock_config *cfg, xsock_runtime **out);
void xsock_runtime_free(xsock_runtime *rt);
/* One pass of the poll loop (inline_poll runtimes); the work done, >= 0. */
int xsock_poll(xsock_runtime *rt);
/* Rank and size under Slurm / PMI / Open MPI; XSOCK_ENOTLAUNCHED otherwise. */
int xsock_rank(const xsock_runtime *rt, uint32_t *rank, uint32_t *size);

/* Listening. message_mode: 1 = each send is one message, 0 = byte stream. */
int xsock_listen(xsock_runtime *rt, const char *addr, int message_mode, xsock_listener **out);
int xsock_accept(xsock_listener *l, int timeout_ms, xsock_stream **out);
void xsock_listener_free(xsock_listener *l);

/* Connecting. */
int xsock_connect(xsock_runtime *rt, const char *addr, int message_mode, int timeout_ms, xsock_stream **out);
/* Connecting without blocking: connect_start returns at once with *out
 * connecting; connect_poll returns XSOCK_OK once connected, XSOCK_EAGAIN
 * while connecting, or the error. A poller reports the stream
 * XSOCK_POLLOUT when the connect has finished either way. */
int xsock_connect_start(xsock_runtime *rt, const char *addr, int message_mode, int timeout_ms, xsock_stream **out);
int xsock_connect_poll(xsock_stream *s);
/* XSOCK_PATH_*. */
int xsock_stream_path(const xsock_stream *s);

/* Blocking transfer: send returns len; recv returns >= 1 byte, 0 at the end of the stream. */
int64_t xsock_send(xsock_stream *s, const void *buf, size_t len);
int64_t xsock_recv(xsock_stream *s, void *buf, size_t len);
/* Messages: recv_msg returns the message length (XSOCK_EMSGSIZE if it is
 * longer than cap; the message is then dropped), 0 at the end of the stream. */
int64_t xsock_send_msg(xsock_stream *s, const void *buf, size_t len);
int64_t xsock_recv_msg(xsock_stream *s, void *buf, size_t cap);

/* Non-blocking transfer: XSOCK_EAGAIN when nothing can be done now. */
int64_t xsock_try_send(xsock_stream *s, const void *buf, size_t len);
int64_t xsock_try_recv(xsock_stream *s, void *buf, size_t len);

/* Ending: shutdown half-closes (the peer reads the end of the stream);
 * close half-closes, waits up to timeout_ms for the peer to have
 * everything, and frees; abort resets the connection and frees. */
int xsock_shutdown(xsock_stream *s);
int xsock_close(xsock_stream *s, int timeout_ms);
void xsock_abort(xsock_stream *s);

/* Readiness of many streams at once (level-triggered, like poll(2)).
 * A poller watches streams and listeners under 64-bit tokens; wait fills
 * up to max events and returns their number (0 on timeout). With a
 * datapath thread (inline_poll 0), xsock_poller_fd is a descriptor for
 * your own poll/epoll/select: readable when a watched source may be ready.
 * With inline_poll 1, xsock_poller_wait drives the datapath while it waits.
 * Remove a stream (xsock_poller_del) before freeing it. */
#define XSOCK_POLLIN  1 /* readable, or the end of the stream; a listener: a connection waits */
#define XSOCK_POLLOUT 2 /* writable; a connecting stream: the connect finished */
#define XSOCK_POLLHUP 4 /* the connection ended or the connect failed (the next call says how) */
typedef struct xsock_event { uint64_t token; short events; } xsock_event;
int xsock_poller_new(xsock_runtime *rt, xsock_poller **out);
void xsock_poller_free(xsock_poller *p);
int xsock_poller_add(xsock_poller *p, const xsock_stream *s, uint64_t token, short events);
int xsock_poller_add_listener(xsock_poller *p, const xsock_listener *l, uint64_t token);
int xsock_poller_modify(xsock_poller *p, uint64_t token, short events);
int xsock_poller_del(xsock_poller *p, uint64_t token);
int xsock_poller_wait(xsock_poller *p, xsock_event *out, int max, int timeout_ms);
int xsock_poller_fd(const xsock_poller *p);
/* poll(2) over an array of streams: sets revents, returns how many are ready. */
typedef struct xsock_pollitem { xsock_stream *stream; short events; short revents; } xsock_pollitem;
int xsock_poll_streams(xsock_runtime *rt, xsock_pollitem *items, size_t n, int timeout_ms);

/* Errors. */
const char *xsock_strerror(int code);
/* The calling thread's last failure, described (valid until its next call). */
const char *xsock_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* XSOCK_H */
