/* The relay protocol's floor in C: what any implementation of the four-frame message path costs.
 *
 * Why: bench/_floor_relay.py (the same path on uvloop + Python, no relay logic) costs about twice
 * mosquitto's CPU per message. This says how much of that is the protocol itself (four frames per
 * message: SEND in, DELIVER out, DELIVER_ACK in, SEND_ACK out; each a read or a write) and how much
 * Python/uvloop: it is the least a server of this protocol can cost on this machine.
 *
 * It does exactly what _floor_relay.py does, with a byte-identical wire format: accepts ANY login
 * (no signature is checked: never run it anywhere but a benchmark), routes a SEND to the
 * recipient's connection as a DELIVER (or answers SEND_ACK QUEUED and forgets the message when the
 * recipient is offline), and answers the sender's SEND_ACK DELIVERED when the recipient's
 * DELIVER_ACK names the message. CHALLENGE_REQ, REGISTER (any), LOGIN (any), PING and BYE as there.
 * A frame that breaks the framing (length, version, unknown type) or a malformed SEND, LOGIN or
 * DELIVER_ACK closes that connection only.
 *
 * Server: one thread, epoll (level-triggered, 1,024 events a wait), non-blocking sockets,
 * TCP_NODELAY, one read per readable event (64 KiB; again while it fills the buffer), as libuv does.
 *   default      every frame is written when it is produced (one write per frame, as the relay)
 *   --coalesce   frames are gathered per connection and written once per epoll iteration
 *   --uring      no epoll and no read/write calls: io_uring (below), frames gathered as --coalesce
 *
 * --uring asks whether the kernel time that is per syscall rather than TCP (fdget, the epoll
 * poll/ready-list walk, syscall entry, send/recv preparation) can be cut: one ring, one
 * io_uring_enter per loop iteration that both submits that iteration's SENDs (one per connection
 * with frames) and waits for completions; every socket a registered ("fixed") file, so no fd
 * lookup per operation; one multishot ACCEPT; one multishot RECV per connection into a ring of
 * provided buffers, so receiving costs no submission at all; SINGLE_ISSUER|DEFER_TASKRUN, so the
 * completions run in this thread when it waits, never as IPIs or task work that interrupts it.
 * No liburing: raw syscalls and the relay plane's ring helpers (relay/server/_uring.h). Falls back
 * to --coalesce (with a message on stderr) when io_uring is unavailable.
 *
 * Built by the benchmark itself (`gcc -O2`, into a temp dir): `sealguard bench relay
 * --floor-native`. By hand: gcc -O2 -o /tmp/floor bench/_floor_native.c && /tmp/floor [--coalesce|--uring]
 * It prints the relay's listening line (its metrics URL answers nothing) and stops on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "../relay/server/_uring.h"   /* the relay plane's ring helpers; HAVE_URING with Linux 6.0+ headers */

/* relay/protocol/frames.py */
enum {
    T_PING = 0x01, T_PONG = 0x02, T_BYE = 0x05,
    T_CHALLENGE_REQ = 0x10, T_CHALLENGE = 0x11, T_REGISTER = 0x12, T_REGISTERED = 0x13, T_LOGIN = 0x14,
    T_LOGGED_IN = 0x15,
    T_SEND = 0x30, T_SEND_ACK = 0x31, T_DELIVER = 0x32, T_DELIVER_ACK = 0x33,
};
#define VERSION 1
#define HEADER 11              /* u32 length, u8 version, u8 type, u8 flags, u32 request id */
#define HEADER_TAIL 7          /* what `length` counts besides the payload */
#define MID 16
#define ACCT 21
#define SEND_FIXED (MID + ACCT + 1)
#define MAX_FRAME (4 * 1024 * 1024 + 1024)
#define STATUS_DELIVERED 1
#define STATUS_QUEUED 2
#define RBUF (64 * 1024)
#define NBUCKETS (1 << 16)

static int known_type(unsigned t) {
    return (t >= 0x01 && t <= 0x05) || (t >= 0x10 && t <= 0x15) || (t >= 0x20 && t <= 0x22) ||
           (t >= 0x30 && t <= 0x35) || (t >= 0x40 && t <= 0x49) || (t >= 0x50 && t <= 0x54) ||
           (t >= 0x60 && t <= 0x63) || (t >= 0x70 && t <= 0x71);
}

struct pending {               /* a DELIVER awaiting its recipient's DELIVER_ACK */
    uint8_t mid[MID];
    int sender_fd;
    uint32_t sender_gen;
    uint32_t rid;              /* the sender's SEND request id */
};

struct conn {
    int fd;
    uint32_t gen;              /* tells a reused fd's new connection from the one a pending ack names */
    int logged_in;
    int dirty;                 /* --coalesce: in this iteration's flush list */
    int want_out;              /* EPOLLOUT armed: the kernel did not take everything */
    char account[ACCT];
    struct conn *next;         /* account hash chain */
    uint8_t *in;               /* the bytes of an incomplete frame */
    size_t in_len, in_cap;
    uint8_t *out;              /* frames not yet written */
    size_t out_len, out_cap;
    struct pending *pend;
    uint32_t npend, cappend;
    /* --uring: `out` gathers, `flight` is what the SEND in flight reads; they swap when a SEND
     * starts, so frames produced meanwhile never touch bytes the kernel has yet to copy. */
    uint8_t *flight;
    size_t flight_len, flight_off, flight_cap;
    int sending;               /* a SEND is in flight */
    int receiving;             /* the multishot RECV is armed */
    int closed;                /* closed: the struct lives on until its SEND and RECV complete */
};

static struct conn **conns;    /* by fd */
static int max_fds;
static uint32_t next_gen = 1;
static struct conn *buckets[NBUCKETS];
static int *dirty;             /* fds */
static int ndirty;
static int coalesce;
static int uring;
static int epfd;
static uint64_t next_account;
static volatile sig_atomic_t stop;
static uint8_t rbuf[RBUF];
static uint8_t *scratch;       /* one outgoing DELIVER, up to a whole frame */

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) die("realloc");
    return q;
}

/* -- accounts ------------------------------------------------------------------------------ */

static uint32_t hash_account(const char *a) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < ACCT; i++) h = (h ^ (uint8_t)a[i]) * 16777619u;
    return h & (NBUCKETS - 1);
}

static struct conn *find_account(const uint8_t *a) {
    for (struct conn *c = buckets[hash_account((const char *)a)]; c; c = c->next)
        if (memcmp(c->account, a, ACCT) == 0) return c;
    return NULL;
}

static void unlink_account(struct conn *c) {
    if (!c->logged_in) return;
    struct conn **p = &buckets[hash_account(c->account)];
    while (*p && *p != c) p = &(*p)->next;
    if (*p) *p = c->next;
    c->next = NULL;
    c->logged_in = 0;
}

/* -- output -------------------------------------------------------------------------------- */

static void append(uint8_t **buf, size_t *len, size_t *cap, const uint8_t *data, size_t n) {
    if (*len + n > *cap) {
        size_t want = *cap ? *cap : 256;
        while (want < *len + n) want *= 2;
        *buf = xrealloc(*buf, want);
        *cap = want;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
}

static void arm_out(struct conn *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = c->fd};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = on;
}

/* Write what is buffered; keep what the kernel did not take (EPOLLOUT tells when to go on).
 * Returns -1 when the connection is broken. */
static int flush_out(struct conn *c) {
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = write(c->fd, c->out + off, c->out_len - off);
        if (n > 0) { off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return -1;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    if (c->out_len == 0 && c->out_cap > 64 * 1024) { free(c->out); c->out = NULL; c->out_cap = 0; }
    arm_out(c, c->out_len > 0);
    return 0;
}

/* One frame to one connection: written now (default) or at the end of this epoll iteration. */
static void send_frame(struct conn *c, const uint8_t *frame, size_t n) {
    if (coalesce || uring) {
        append(&c->out, &c->out_len, &c->out_cap, frame, n);
        if (!c->dirty) { c->dirty = 1; dirty[ndirty++] = c->fd; }
        return;
    }
    if (c->out_len) {          /* earlier frames still queued: keep the order */
        append(&c->out, &c->out_len, &c->out_cap, frame, n);
        return;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(c->fd, frame + off, n - off);
        if (w > 0) { off += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return;                /* broken: its read side reports it and closes */
    }
    if (off < n) {
        append(&c->out, &c->out_len, &c->out_cap, frame + off, n - off);
        arm_out(c, 1);
    }
}

static uint8_t *put_header(uint8_t *p, uint32_t payload_len, uint8_t type, uint8_t flags, uint32_t rid) {
    uint32_t len = htonl(HEADER_TAIL + payload_len), r = htonl(rid);
    memcpy(p, &len, 4);
    p[4] = VERSION;
    p[5] = type;
    p[6] = flags;
    memcpy(p + 7, &r, 4);
    return p + HEADER;
}

static void uring_close_conn(struct conn *c);

static void close_conn(struct conn *c) {
    if (uring) { uring_close_conn(c); return; }
    if (c->out_len) (void)write(c->fd, c->out, c->out_len);   /* as transport.close(): last frames out */
    unlink_account(c);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->in);
    free(c->out);
    free(c->pend);
    free(c);
}

/* -- frames -------------------------------------------------------------------------------- */

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void on_send(struct conn *c, uint32_t rid, const uint8_t *p, size_t n) {
    const uint8_t *mid = p, *recipient = p + MID;
    struct conn *r = find_account(recipient);
    if (!r) {
        uint8_t f[HEADER + MID + 1];
        uint8_t *q = put_header(f, MID + 1, T_SEND_ACK, 0, rid);
        memcpy(q, mid, MID);
        q[MID] = STATUS_QUEUED;
        send_frame(c, f, sizeof f);
        return;
    }
    if (r->npend == r->cappend) {
        r->cappend = r->cappend ? 2 * r->cappend : 4;
        r->pend = xrealloc(r->pend, r->cappend * sizeof *r->pend);
    }
    struct pending *pe = &r->pend[r->npend++];
    memcpy(pe->mid, mid, MID);
    pe->sender_fd = c->fd;
    pe->sender_gen = c->gen;
    pe->rid = rid;
    /* DELIVER: message_id, sender, group '' (u8 0), kind, ts u64 ms, ciphertext */
    size_t ct = n - SEND_FIXED;
    uint8_t *q = put_header(scratch, MID + ACCT + 1 + 1 + 8 + (uint32_t)ct, T_DELIVER, 0, 0);
    memcpy(q, mid, MID);
    memcpy(q + MID, c->account, ACCT);   /* zeros before login, as the floor's struct packs b"" */
    q[MID + ACCT] = 0;
    q[MID + ACCT + 1] = p[SEND_FIXED - 1];
    uint64_t ts = now_ms();
    for (int i = 0; i < 8; i++) q[MID + ACCT + 2 + i] = (uint8_t)(ts >> (56 - 8 * i));
    memcpy(q + MID + ACCT + 10, p + SEND_FIXED, ct);
    send_frame(r, scratch, (size_t)(q + MID + ACCT + 10 + ct - scratch));
}

static void on_deliver_ack(struct conn *c, const uint8_t *p, size_t n) {
    uint32_t count = (uint32_t)p[0] << 8 | p[1];
    for (uint32_t k = 0; k < count; k++) {
        const uint8_t *mid = p + 2 + (size_t)k * MID;
        for (uint32_t i = 0; i < c->npend; i++) {
            struct pending *pe = &c->pend[i];
            if (memcmp(pe->mid, mid, MID) != 0) continue;
            struct conn *s = pe->sender_fd < max_fds ? conns[pe->sender_fd] : NULL;
            if (s && s->gen == pe->sender_gen) {
                uint8_t f[HEADER + MID + 1];
                uint8_t *q = put_header(f, MID + 1, T_SEND_ACK, 0, pe->rid);
                memcpy(q, mid, MID);
                q[MID] = STATUS_DELIVERED;
                send_frame(s, f, sizeof f);
            }
            *pe = c->pend[--c->npend];
            break;
        }
    }
    (void)n;
}

/* LOGIN: account (21 ASCII bytes), signature (u8 length + that many bytes), nothing after. */
static int valid_login(const uint8_t *p, size_t n) {
    if (n < ACCT + 1) return 0;
    for (int i = 0; i < ACCT; i++)
        if (p[i] >= 0x80) return 0;
    return n == (size_t)ACCT + 1 + p[ACCT];
}

/* Returns -1 when the connection must close. */
static int on_frame(struct conn *c, uint8_t type, uint32_t rid, const uint8_t *p, size_t n) {
    uint8_t f[HEADER + 64];
    switch (type) {
    case T_SEND:
        if (n < SEND_FIXED) return -1;
        on_send(c, rid, p, n);
        return 0;
    case T_DELIVER_ACK:
        if (n < 2 || n != 2 + (size_t)(p[0] << 8 | p[1]) * MID) return -1;
        on_deliver_ack(c, p, n);
        return 0;
    case T_CHALLENGE_REQ: {
        uint8_t *q = put_header(f, 4 + 32, T_CHALLENGE, 0, rid);
        uint32_t len = htonl(32);
        memcpy(q, &len, 4);
        if (getrandom(q + 4, 32, 0) != 32) die("getrandom");
        send_frame(c, f, HEADER + 36);
        return 0;
    }
    case T_REGISTER: {
        uint8_t *q = put_header(f, ACCT, T_REGISTERED, 0, rid);
        char acct[ACCT + 1];
        snprintf(acct, sizeof acct, "a%020llx", (unsigned long long)++next_account);
        memcpy(q, acct, ACCT);
        send_frame(c, f, HEADER + ACCT);
        return 0;
    }
    case T_LOGIN: {
        if (!valid_login(p, n)) return -1;
        unlink_account(c);
        struct conn *old = find_account(p);
        if (old) unlink_account(old);      /* the newest login of an account gets its messages */
        memcpy(c->account, p, ACCT);
        uint32_t h = hash_account(c->account);
        c->next = buckets[h];
        buckets[h] = c;
        c->logged_in = 1;
        uint8_t *q = put_header(f, ACCT + 4, T_LOGGED_IN, 0, rid);
        memcpy(q, p, ACCT);
        memset(q + ACCT, 0, 4);
        send_frame(c, f, HEADER + ACCT + 4);
        return 0;
    }
    case T_PING:
        put_header(f, 0, T_PONG, 0, rid);
        send_frame(c, f, HEADER);
        return 0;
    case T_BYE:
        return -1;
    default:
        return 0;              /* a known frame the floor does not serve: ignored, as there */
    }
}

/* Parse every complete frame of `data`; keep an incomplete one. Returns -1 to close. */
static int on_bytes(struct conn *c, const uint8_t *data, size_t n) {
    if (c->in_len) {
        append(&c->in, &c->in_len, &c->in_cap, data, n);
        data = c->in;
        n = c->in_len;
    }
    size_t pos = 0;
    while (n - pos >= 4) {
        uint32_t length = (uint32_t)data[pos] << 24 | (uint32_t)data[pos + 1] << 16 |
                          (uint32_t)data[pos + 2] << 8 | data[pos + 3];
        if (length > MAX_FRAME || length < HEADER_TAIL) return -1;
        if (n - pos < 4 + (size_t)length) break;
        const uint8_t *h = data + pos;
        if (h[4] != VERSION || !known_type(h[5])) return -1;
        uint32_t rid = (uint32_t)h[7] << 24 | (uint32_t)h[8] << 16 | (uint32_t)h[9] << 8 | h[10];
        if (on_frame(c, h[5], rid, h + HEADER, length - HEADER_TAIL) < 0) return -1;
        pos += 4 + (size_t)length;
    }
    size_t left = n - pos;
    if (data == c->in) {
        memmove(c->in, c->in + pos, left);
        c->in_len = left;
        if (!left && c->in_cap > 64 * 1024) { free(c->in); c->in = NULL; c->in_cap = 0; }
    } else if (left) {
        append(&c->in, &c->in_len, &c->in_cap, data + pos, left);
    }
    return 0;
}

static void on_readable(struct conn *c) {
    for (;;) {
        ssize_t n = read(c->fd, rbuf, RBUF);
        if (n > 0) {
            if (on_bytes(c, rbuf, (size_t)n) < 0) { close_conn(c); return; }
            if (n < RBUF) return;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        close_conn(c);          /* EOF or error */
        return;
    }
}

static void on_accept(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            return;             /* EAGAIN, or out of files: the backlog keeps the rest */
        }
        if (fd >= max_fds) { close(fd); continue; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = fd;
        c->gen = next_gen++;
        conns[fd] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
}

/* -- io_uring (--uring) -------------------------------------------------------------------- */

#ifdef HAVE_URING
#define SQ_ENTRIES 4096        /* SQEs a loop iteration can queue before they are submitted early */
#define CQ_ENTRIES 65536       /* room for a multishot RECV of every connection and their SENDs */
#define NBUFS 4096             /* provided receive buffers: more than the frames of one iteration */
#define BUFSZ 2048             /* a message is ~170 bytes; larger frames span buffers (on_bytes joins them) */
#define MAX_FIXED (1 << 18)    /* registered-file slots (slot = fd); a connection above it is refused */

/* user_data: the connection's address with the operation in its low bits (calloc aligns to 16).
 * The address, not fd + generation: a closed connection's struct (and the buffer its SEND reads)
 * lives on until the kernel has answered each of its operations, so a late completion always
 * finds valid memory and only has to be recognised as late (c->closed). */
enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };

static ring_t R;
static unsigned nfixed;        /* registered-file slots (slot = fd) */
static int ring_lfd;

/* The ring, a sparse table of registered files and the provided buffers; -1 (errno set, what
 * failed in *what) when this kernel cannot. */
static int uring_setup(const char **what) {
    if (ring_setup(&R, SQ_ENTRIES, CQ_ENTRIES, NBUFS, BUFSZ, what) < 0) return -1;
    nfixed = max_fds < MAX_FIXED ? (unsigned)max_fds : MAX_FIXED;
    struct io_uring_rsrc_register rr = {.nr = nfixed, .flags = IORING_RSRC_REGISTER_SPARSE};
    *what = "IORING_REGISTER_FILES2 (sparse)";
    return ring_register(&R, IORING_REGISTER_FILES2, &rr, sizeof rr) < 0 ? -1 : 0;
}

static void uring_arm_accept(void) {
    struct io_uring_sqe *sqe = ring_sqe(&R);
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = ring_lfd;
    sqe->ioprio = IORING_ACCEPT_MULTISHOT;
    sqe->accept_flags = SOCK_CLOEXEC;   /* blocking sockets: io_uring never blocks on them, and the
                                           best-effort send at close says MSG_DONTWAIT itself */
    sqe->user_data = OP_ACCEPT;
}

static void uring_arm_recv(struct conn *c) {
    struct io_uring_sqe *sqe = ring_sqe(&R);
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = c->fd;                    /* the registered-file slot (slot = fd) */
    sqe->flags = IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->buf_group = 0;
    sqe->user_data = (uint64_t)(uintptr_t)c | OP_RECV;
    c->receiving = 1;
}

/* SEND of flight[flight_off, flight_len): a new batch or the rest of a short send. */
static void uring_send(struct conn *c) {
    struct io_uring_sqe *sqe = ring_sqe(&R);
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = c->fd;
    sqe->flags = IOSQE_FIXED_FILE;
    sqe->addr = (uint64_t)(uintptr_t)(c->flight + c->flight_off);
    sqe->len = (uint32_t)(c->flight_len - c->flight_off);
    sqe->msg_flags = MSG_NOSIGNAL | MSG_WAITALL;   /* WAITALL: the kernel itself retries a partial send */
    sqe->user_data = (uint64_t)(uintptr_t)c | OP_SEND;
    c->sending = 1;
}

/* Start a SEND of what `out` gathered: swap it into `flight`. Returns 1 when one was queued. */
static int uring_start_send(struct conn *c) {
    if (c->sending || !c->out_len) return 0;
    uint8_t *b = c->flight;
    size_t cap = c->flight_cap;
    c->flight = c->out;
    c->flight_cap = c->out_cap;
    c->flight_len = c->out_len;
    c->flight_off = 0;
    c->out = b;
    c->out_cap = cap;
    c->out_len = 0;
    uring_send(c);
    return 1;
}

static void mark_dirty(struct conn *c) {
    if (!c->dirty) { c->dirty = 1; dirty[ndirty++] = c->fd; }
}

/* The struct goes once the kernel has answered its last operation. */
static void uring_release(struct conn *c) {
    if (!c->closed || c->sending || c->receiving) return;
    free(c->flight);
    free(c);
}

static void uring_close_conn(struct conn *c) {
    /* as transport.close(): last frames out, unless a SEND is still in flight (then the socket is
     * full and they would go out after bytes the kernel has not taken: dropped, as a full socket's) */
    if (c->out_len && !c->sending) (void)send(c->fd, c->out, c->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    unlink_account(c);
    /* close() alone would not end the armed RECV (it holds the socket), so the peer would see no
     * FIN: shutdown ends it (and a SEND waiting for room); their completions release the struct. */
    shutdown(c->fd, SHUT_RDWR);
    struct io_uring_files_update fu = {.offset = (unsigned)c->fd, .fds = (uint64_t)(uintptr_t)&(int){-1}};
    ring_register(&R, IORING_REGISTER_FILES_UPDATE, &fu, 1);
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->in);
    free(c->out);
    free(c->pend);
    c->in = c->out = NULL;
    c->pend = NULL;
    c->closed = 1;
    uring_release(c);
}

static void uring_on_accept(int res, unsigned flags) {
    if (!(flags & IORING_CQE_F_MORE)) uring_arm_accept();   /* the multishot ended (an error): again */
    if (res < 0) return;
    int fd = res;
    if (fd >= (int)nfixed) { close(fd); return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct io_uring_files_update fu = {.offset = (unsigned)fd, .fds = (uint64_t)(uintptr_t)&fd};
    if (ring_register(&R, IORING_REGISTER_FILES_UPDATE, &fu, 1) != 1) { close(fd); return; }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    c->fd = fd;
    c->gen = next_gen++;
    conns[fd] = c;
    uring_arm_recv(c);
}

static void uring_on_recv(struct conn *c, int res, unsigned flags) {
    int more = flags & IORING_CQE_F_MORE;
    if (!more) c->receiving = 0;
    if (c->closed) {                    /* late: its buffer goes back, nothing else */
        if (flags & IORING_CQE_F_BUFFER) ring_give_buf(&R, flags >> IORING_CQE_BUFFER_SHIFT);
        uring_release(c);
        return;
    }
    if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        int bad = on_bytes(c, ring_buf(&R, bid), (size_t)res) < 0;   /* keeps a partial frame */
        ring_give_buf(&R, bid);
        if (bad) close_conn(c);
        else if (!more) uring_arm_recv(c);
        return;
    }
    if (res == -ENOBUFS) {              /* the buffers ran out; this iteration returns them */
        if (!more) uring_arm_recv(c);
        return;
    }
    close_conn(c);                      /* EOF or error */
}

static void uring_on_send(struct conn *c, int res) {
    c->sending = 0;
    if (c->closed) { uring_release(c); return; }
    if (res > 0 && (c->flight_off += (size_t)res) < c->flight_len) {
        uring_send(c);                  /* short: the rest, before anything gathered since */
        return;
    }
    /* done, or broken (the RECV side reports that and closes) */
    c->flight_len = c->flight_off = 0;
    if (c->flight_cap > 64 * 1024) { free(c->flight); c->flight = NULL; c->flight_cap = 0; }
    if (c->out_len) mark_dirty(c);
}

/* One loop iteration: handle every completion, then queue one SEND per connection that gathered
 * frames, and submit them in the same io_uring_enter that waits for the next completions. */
static void uring_loop(void) {
    uring_arm_accept();
    ring_publish_bufs(&R);
    unsigned sends = 0;
    while (!stop) {
        /* Wait for one completion more than the SENDs just submitted: most of them complete inline
         * and post their completion at once, and waiting for 1 would return at once for those, an
         * extra io_uring_enter per iteration that brings nothing to read. But a SEND that has to
         * wait for room completes later and may be all that is coming: then 1 ms is the most it
         * waits. Idle, 1 s (a stop signal interrupts it anyway). */
        if (ring_enter(&R, sends + 1, sends ? 1000000 : 1000000000) < 0 && errno != EINTR && errno != ETIME &&
            errno != EAGAIN && errno != EBUSY)
            die("io_uring_enter");
        sends = 0;
        unsigned head = *R.cq_khead, tail = __atomic_load_n(R.cq_ktail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &R.cqes[head & R.cq_mask];
            struct conn *c = (struct conn *)(uintptr_t)(cqe->user_data & ~(uint64_t)15);
            switch (cqe->user_data & 15) {
            case OP_ACCEPT: uring_on_accept(cqe->res, cqe->flags); break;
            case OP_RECV: uring_on_recv(c, cqe->res, cqe->flags); break;
            case OP_SEND: uring_on_send(c, cqe->res); break;
            }
        }
        __atomic_store_n(R.cq_khead, head, __ATOMIC_RELEASE);
        ring_publish_bufs(&R);
        for (int i = 0; i < ndirty; i++) {
            struct conn *c = conns[dirty[i]];
            if (!c || !c->dirty) continue;
            c->dirty = 0;
            sends += (unsigned)uring_start_send(c);
        }
        ndirty = 0;
    }
}
#endif

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--coalesce") == 0) coalesce = 1;
        else if (strcmp(argv[i], "--uring") == 0) uring = 1;
        else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--coalesce|--uring] [--host H] [--port P] (unknown argument %s)\n", argv[0],
                    argv[i]);
            return 2;
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        max_fds = rl.rlim_cur > 1 << 20 ? 1 << 20 : (int)rl.rlim_cur;
    } else {
        max_fds = 1024;
    }
    conns = calloc((size_t)max_fds, sizeof *conns);
    dirty = calloc((size_t)max_fds, sizeof *dirty);
    scratch = malloc(4 + MAX_FRAME + 64);
    if (!conns || !dirty || !scratch) die("calloc");
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "--host %s is not an IPv4 address\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    if (uring) {
#ifdef HAVE_URING
        const char *what = "";
        ring_lfd = lfd;
        if (uring_setup(&what) < 0) {
            fprintf(stderr, "floor: --uring: %s failed (%s): the epoll path with --coalesce instead\n", what,
                    strerror(errno));
            uring = 0;
            coalesce = 1;
        }
#else
        fprintf(stderr, "floor: --uring: built without <linux/io_uring.h> of Linux 6.0+: the epoll path with "
                        "--coalesce instead\n");
        uring = 0;
        coalesce = 1;
#endif
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) < 0) die("epoll_ctl");
    printf("relay: listening=%s:%d metrics=http://127.0.0.1:9/metrics node=floor-native%s\n", host,
           ntohs(addr.sin_port), uring ? "-uring" : coalesce ? "-coalesce" : "");
    fflush(stdout);
#ifdef HAVE_URING
    if (uring) uring_loop();
#endif

    struct epoll_event evs[1024];
    while (!stop) {
        int n = epoll_wait(epfd, evs, 1024, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) { on_accept(lfd); continue; }
            struct conn *c = conns[fd];
            if (!c) continue;
            if (evs[i].events & EPOLLOUT) {
                if (flush_out(c) < 0) { close_conn(c); continue; }
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
        }
        if (ndirty) {          /* --coalesce: one write per connection per iteration */
            for (int i = 0; i < ndirty; i++) {
                struct conn *c = conns[dirty[i]];
                if (!c || !c->dirty) continue;
                c->dirty = 0;
                if (!c->want_out && flush_out(c) < 0) close_conn(c);
            }
            ndirty = 0;
        }
    }
    for (int fd = 0; fd < max_fds; fd++)
        if (conns[fd]) close_conn(conns[fd]);
    close(lfd);
    return 0;
}
