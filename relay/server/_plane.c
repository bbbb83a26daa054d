/* relay.server._plane — the relay's native data plane.
 *
 * Why: a message costs the relay four frames (SEND in, DELIVER out, DELIVER_ACK in, SEND_ACK out).
 * On uvloop + Python the floor of those four frames alone is ~2× mosquitto's CPU per message
 * (docs/relay.md, "What any implementation can reach"); the same path in C costs ~1.3×. So the
 * sockets live here: one thread, epoll, non-blocking sockets, TCP_NODELAY, and the GIL is never
 * taken on it.
 *
 * What it does itself, for a logged-in connection the Python server marked `fast` (not banned, not
 * restricted) — everything else goes up to Python unchanged (relay/server/plane.py):
 *   SEND        to an online recipient (a route set by `login`) that did not block the sender, within
 *               the sender's send bucket (and first-contact bucket when the two never talked and the
 *               recipient is not a contact: mirrors of the server's sets, `pair`), size and kind valid
 *               → DELIVER to the recipient, `message.sent` formatted as the contract's JSON
 *               (take_signals), H(mid, sender, recipient) (take_commits), and the message held in
 *               flight until the recipient acks it.
 *   DELIVER_ACK of messages it holds in flight → SEND_ACK DELIVERED to their senders; any other
 *               id in the frame goes up in a DELIVER_ACK of its own.
 *   PING        → PONG, within the frame budget (a PING past it goes up: the server answers FLOOD).
 * A message it holds goes up as a `requeue` event when its recipient's connection closes, and is
 * returned by `expire` after its ack deadline and by `take_inflight` at shutdown: the server queues
 * it (DESIGN.md's durability rule: the sender's ack waits for the recipient's ack or the queue).
 *
 * Framing: every connection's bytes are cut into complete frames here; the frames it does not
 * handle go up together as one `data` event per read. A length over the connection's limit or a
 * wrong version puts the connection in raw mode: what follows goes up as read, and Python's
 * FrameReader answers the error as it always did.
 *
 * Threading: one mutex guards all of it; the plane's thread holds it while it handles a batch of
 * epoll events, Python's calls hold it briefly. Events for Python wait in a list and an eventfd
 * wakes Python's loop (`fd`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "_uring.h" /* HAVE_URING: io_uring's headers (Linux 6.0 or later) are here */

/* relay/protocol/frames.py */
#define VERSION 1
#define HDR 11 /* u32 length, u8 version, u8 type, u8 flags, u32 request id */
#define TAIL 7 /* what `length` counts besides the payload */
#define MID 16
#define ACCT 21
#define SEND_FIXED (MID + ACCT + 1)
#define DELIVER_FIXED (MID + ACCT + 1 + 1 + 8) /* mid, sender, '' group, kind, ts */
#define T_PING 0x01
#define T_PONG 0x02
#define PING_COST 100 /* relay/server/connection.py: a PING costs this much of the frame budget */
#define T_SEND 0x30
#define T_SEND_ACK 0x31
#define T_DELIVER 0x32
#define T_DELIVER_ACK 0x33
#define STATUS_DELIVERED 1

#define RBUF (64 * 1024)
#define NBUCKETS (1u << 16)

/* librdkafka, from the library confluent-kafka ships (loaded by `produce_to`): the few calls the plane makes. */
typedef void *(*rd_conf_new_t)(void);
typedef int (*rd_conf_set_t)(void *conf, const char *name, const char *value, char *errstr, size_t errstr_size);
typedef void *(*rd_new_t)(int type, void *conf, char *errstr, size_t errstr_size);
typedef void *(*rd_topic_new_t)(void *rk, const char *topic, void *tconf);
typedef int (*rd_produce_t)(void *rkt, int32_t partition, int msgflags, void *payload, size_t len, const void *key,
                            size_t keylen, void *msg_opaque);
typedef int (*rd_int_t)(void *rk);
typedef int (*rd_flush_t)(void *rk, int timeout_ms);
typedef int (*rd_poll_t)(void *rk, int timeout_ms);
typedef void (*rd_destroy_t)(void *obj);
#define RD_PRODUCER 0
#define RD_PARTITION_UA (-1)
#define RD_MSG_F_COPY 0x2

enum { EV_CONNECT = 1, EV_DATA = 2, EV_CLOSED = 3, EV_REQUEUE = 4, EV_FLOOD = 5 };

/* -- BLAKE2b, 16-byte digest, no key: hashlib.blake2b(data, digest_size=16) for data ≤ 128 bytes -- */
static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};
static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};
#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define B2_G(a, b, c, d, x, y)          \
    do {                                \
        a = a + b + (x);                \
        d = ROTR64(d ^ a, 32);          \
        c = c + d;                      \
        b = ROTR64(b ^ c, 24);          \
        a = a + b + (y);                \
        d = ROTR64(d ^ a, 16);          \
        c = c + d;                      \
        b = ROTR64(b ^ c, 63);          \
    } while (0)

static void blake2b_16(const uint8_t *in, size_t len, uint8_t out[16]) {
    uint64_t h[8], v[16], m[16];
    uint8_t block[128];
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 16; /* digest length 16, no key, fanout 1, depth 1 */
    memset(block, 0, sizeof block);
    memcpy(block, in, len);
    for (int i = 0; i < 16; i++) {
        uint64_t w = 0;
        for (int j = 7; j >= 0; j--) w = (w << 8) | block[i * 8 + j];
        m[i] = w;
    }
    for (int i = 0; i < 8; i++) { v[i] = h[i]; v[i + 8] = B2_IV[i]; }
    v[12] ^= (uint64_t)len;
    v[14] = ~v[14]; /* the last block */
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = B2_SIGMA[r];
        B2_G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
        B2_G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
        B2_G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
        B2_G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
        B2_G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
        B2_G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
        B2_G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
        B2_G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 2; i++) {
        uint64_t w = h[i] ^ v[i] ^ v[i + 8];
        for (int j = 0; j < 8; j++) out[i * 8 + j] = (uint8_t)(w >> (8 * j));
    }
}

/* -- small helpers ------------------------------------------------------------------------------ */
static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void put64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}
static inline uint64_t hash_bytes(const uint8_t *p, size_t n) { /* 8 bytes a step, then a final mix */
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n, w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    if (n) {
        w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
    }
    h ^= h >> 29;
    h *= 0x94D049BB133111EBULL;
    return h ^ (h >> 32);
}
static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}
static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct { uint8_t *p; size_t len, cap; } buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}
static int buf_add(buf_t *b, const void *data, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}
static void buf_free(buf_t *b) { free(b->p); b->p = NULL; b->len = b->cap = 0; }

/* -- state -------------------------------------------------------------------------------------- */
typedef struct conn {
    int fd;
    uint32_t gen;
    uint8_t logged, fast, raw, flooded, dirty, want_out, paused_py, paused_out, in_armed;
    uint8_t acct[ACCT];
    uint32_t max_frame;
    uint8_t *rbuf; /* a partial frame carried over between reads */
    size_t rlen;
    buf_t out;     /* bytes the kernel has not taken yet, from out.p + woff */
    size_t woff;
    double tokens, last, capacity, refill;     /* the send bucket (Limit.send) */
    double ftokens, flast, fcapacity, frefill; /* the first-contact bucket (Limit.first_contact) */
    int64_t seen_gen, budget;
    uint32_t inflight; /* messages held for this connection as their recipient */
    struct conn *route_next; /* the routes table's chain: a logged-in connection is its account's route */
    /* io_uring: `out` gathers while a SEND reads `flight` (out's buffer, handed over), flight_off of it
     * taken so far; the struct outlives its close until the kernel answered each operation on it */
    uint8_t *flight;
    size_t flight_len, flight_off, flight_cap;
    uint8_t sending, receiving, cancelling, closed, sock_closed;
    struct conn *zombie_next, **zombie_pprev; /* closed, waiting for its last completions */
} conn_t;

typedef struct pair { struct pair *next; uint8_t key[2 * ACCT]; } pair_t;
/* A set of account pairs: `talked` (two accounts that exchanged a message, the lower id first), `blocks`
 * (blocker ‖ blocked) and `contacts` (account ‖ its contact) — mirrors of the server's own sets. */
typedef struct { pair_t **b; size_t mask, n; } pairset_t;
enum { SET_TALKED = 0, SET_BLOCKS = 1, SET_CONTACTS = 2 };
typedef struct held {
    struct held *next;
    uint8_t mid[MID];
    uint64_t rid_conn, sid_conn; /* recipient's and sender's connection ids */
    uint32_t rid;                /* the sender's SEND request id */
    double deadline;
    uint8_t kind;
    int64_t ts;
    uint8_t sender[ACCT], recipient[ACCT];
    uint32_t ct_len;
    uint8_t ct[];
} held_t;

typedef struct event {
    int type;
    uint64_t id;
    void *data; /* DATA: bytes; REQUEUE: held_t*; CONNECT: peer string */
    size_t len;
    double a, b, c, d; /* CLOSED: the send and first-contact buckets' tokens and times */
} event_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_t thread;
    int running, started;
    int ep, lfd, wake_fd, notify_fd, notified;
    conn_t **conns;
    int maxfd;
    uint32_t next_gen;
    conn_t *routes[NBUCKETS];
    pairset_t sets[3];
    held_t *held[NBUCKETS];
    size_t nheld;
    event_t *events;
    size_t nevents, cevents;
    buf_t signals;
    size_t nsignals, max_signals;
    /* message.sent straight to Kafka when `produce_to` set these (else buffered for take_signals) */
    void *rk, *rkt;
    rd_produce_t rd_produce;
    rd_int_t rd_outq_len;
    rd_flush_t rd_flush;
    rd_poll_t rd_poll;
    rd_destroy_t rd_topic_destroy, rd_destroy;
    buf_t commits;
    /* config */
    uint32_t max_frame_unauth, max_frame, max_message, frame_budget;
    size_t high_water, max_wbuf;
    int nkinds;
    char kind_names[8][16];
    /* set by the server's sweep */
    int64_t gen;
    double ack_deadline;
    /* clocks, read once per batch */
    double now;
    int64_t now_ms;
    uint64_t rng[2];
    /* counters since take_stats */
    uint64_t frames_in, frames_out, sends, delivered, acks_delivered, slow_consumers, signals_dropped;
    conn_t **dirty;
    size_t ndirty, cdirty;
    uint8_t *scratch;
    /* the thread's I/O: io_uring when this kernel allows it (set up by the thread itself), else epoll */
    int uring, io_ready; /* io_ready: the thread chose (Plane_init waits for it) */
    char io_note[160];   /* why not io_uring, when not */
#ifdef HAVE_URING
    ring_t R;
    unsigned sends_queued; /* SENDs queued since the last wait */
#endif
    conn_t *zombies; /* closed connections whose last completions have not come */
} Plane;

static inline uint64_t conn_id(conn_t *c) { return ((uint64_t)c->gen << 32) | (uint32_t)c->fd; }
static conn_t *by_id(Plane *p, uint64_t id) {
    int fd = (int)(uint32_t)id;
    if (fd < 0 || fd >= p->maxfd) return NULL;
    conn_t *c = p->conns[fd];
    return (c && c->gen == (uint32_t)(id >> 32)) ? c : NULL;
}

static int push_event4(Plane *p, int type, uint64_t id, void *data, size_t len, double a, double b, double c,
                       double d) {
    if (p->nevents == p->cevents) {
        size_t cap = p->cevents ? p->cevents * 2 : 256;
        event_t *e = realloc(p->events, cap * sizeof *e);
        if (!e) return -1;
        p->events = e;
        p->cevents = cap;
    }
    p->events[p->nevents++] = (event_t){type, id, data, len, a, b, c, d};
    if (!p->notified) {
        uint64_t one = 1;
        p->notified = 1;
        if (write(p->notify_fd, &one, 8) < 0) { /* the counter cannot overflow at one write a poll */ }
    }
    return 0;
}
static int push_event(Plane *p, int type, uint64_t id, void *data, size_t len, double a, double b) {
    return push_event4(p, type, id, data, len, a, b, 0, 0);
}

/* routes: account → its logged-in connection (the connections themselves are the chain's nodes) */
static conn_t **route_slot(Plane *p, const uint8_t *acct) {
    conn_t **r = &p->routes[hash_bytes(acct, ACCT) & (NBUCKETS - 1)];
    while (*r && memcmp((*r)->acct, acct, ACCT)) r = &(*r)->route_next;
    return r;
}
static conn_t *route_get(Plane *p, const uint8_t *acct) { return *route_slot(p, acct); }
static void route_drop(Plane *p, conn_t *c) {
    conn_t **r = route_slot(p, c->acct);
    if (*r == c) *r = c->route_next;
    c->route_next = NULL;
}
static void route_set(Plane *p, conn_t *c) { /* one device per account: the newer login wins */
    conn_t **r = route_slot(p, c->acct);
    if (*r) {
        conn_t *old = *r;
        *r = old->route_next;
        old->route_next = NULL;
    }
    c->route_next = p->routes[hash_bytes(c->acct, ACCT) & (NBUCKETS - 1)];
    p->routes[hash_bytes(c->acct, ACCT) & (NBUCKETS - 1)] = c;
}

static int set_init(pairset_t *s, size_t buckets) {
    s->b = calloc(buckets, sizeof *s->b);
    s->mask = buckets - 1;
    s->n = 0;
    return s->b ? 0 : -1;
}
static pair_t **set_slot(pairset_t *s, const uint8_t *key) {
    pair_t **e = &s->b[hash_bytes(key, 2 * ACCT) & s->mask];
    while (*e && memcmp((*e)->key, key, 2 * ACCT)) e = &(*e)->next;
    return e;
}
static int set_has(pairset_t *s, const uint8_t *key) { return *set_slot(s, key) != NULL; }
static void set_put(pairset_t *s, const uint8_t *key, int on) {
    pair_t **e = set_slot(s, key);
    if (on && !*e && (*e = malloc(sizeof **e))) {
        memcpy((*e)->key, key, 2 * ACCT);
        (*e)->next = NULL;
        s->n++;
    } else if (!on && *e) {
        pair_t *dead = *e;
        *e = dead->next;
        free(dead);
        s->n--;
    }
}
static void set_free(pairset_t *s) {
    for (size_t i = 0; s->b && i <= s->mask; i++)
        for (pair_t *e = s->b[i]; e;) { pair_t *n = e->next; free(e); e = n; }
    free(s->b);
    s->b = NULL;
}
static void pair_of(uint8_t key[2 * ACCT], const uint8_t *a, const uint8_t *b, int sorted) {
    if (sorted && memcmp(a, b, ACCT) > 0) { const uint8_t *t = a; a = b; b = t; }
    memcpy(key, a, ACCT);
    memcpy(key + ACCT, b, ACCT);
}

/* messages in flight: (mid, recipient connection) */
static size_t held_hash(const uint8_t *mid, uint64_t rid_conn) {
    uint64_t h;
    memcpy(&h, mid, 8);
    h ^= rid_conn * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h ^ (h >> 29)) & (NBUCKETS - 1);
}
static held_t *held_take(Plane *p, const uint8_t *mid, uint64_t rid_conn) {
    held_t **e = &p->held[held_hash(mid, rid_conn)];
    for (; *e; e = &(*e)->next) {
        if ((*e)->rid_conn == rid_conn && !memcmp((*e)->mid, mid, MID)) {
            held_t *h = *e;
            *e = h->next;
            p->nheld--;
            conn_t *r = by_id(p, rid_conn);
            if (r && r->inflight) r->inflight--;
            return h;
        }
    }
    return NULL;
}

/* -- io_uring ----------------------------------------------------------------------------------- */
/* Why: per message the plane makes two reads and two writes; with epoll each is a syscall that takes
 * a reference on its file (the process has several threads) and each ready socket is polled by
 * epoll_wait, which together cost ~15% of a message (perf). With io_uring, one multishot RECV per
 * connection fills provided buffers as bytes arrive, and the SENDs a batch gathers go out in the
 * same io_uring_enter that waits for the next completions: bench/_floor_native.c --uring measured
 * the protocol's floor at 0.84 × its epoll floor (docs/relay.md). Only this thread submits
 * (SINGLE_ISSUER, DEFER_TASKRUN: completions run when it waits, no interrupts of the thread); Python's
 * calls only change state under the mutex, send directly when nothing is in flight, and wake it. */
#ifdef HAVE_URING
#define SQ_ENTRIES 4096
#define CQ_ENTRIES 65536  /* a multishot RECV per connection and their SENDs between two waits */
#define NBUFS 1024        /* provided buffers, recycled every batch: the pool is 1 MiB, whatever U */
#define BUFSZ 1024        /* a message is ~170 bytes; longer frames span buffers (carried in rbuf) */
enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3, OP_WAKE = 4, OP_CANCEL = 5 };

static void uring_arm(Plane *p, int opcode, int fd, uint64_t user_data) {
    struct io_uring_sqe *sqe = ring_sqe(&p->R);
    sqe->opcode = (uint8_t)opcode;
    sqe->fd = fd;
    sqe->user_data = user_data;
    if (opcode == IORING_OP_ACCEPT) {
        sqe->ioprio = IORING_ACCEPT_MULTISHOT;
        /* blocking sockets: io_uring waits for room or bytes itself (on a non-blocking one a SEND may
         * fail with EAGAIN), and every direct send says MSG_DONTWAIT */
        sqe->accept_flags = SOCK_CLOEXEC;
    } else if (opcode == IORING_OP_RECV) {
        sqe->flags = IOSQE_BUFFER_SELECT;
        sqe->ioprio = IORING_RECV_MULTISHOT;
        sqe->buf_group = 0;
    } else if (opcode == IORING_OP_POLL_ADD) {
        sqe->len = IORING_POLL_ADD_MULTI;
        sqe->poll32_events = POLLIN;
    }
}

/* The ring, made by the thread that will submit to it; -1 with p->io_note saying why not. */
static int uring_setup(Plane *p) {
    const char *what = "";
    if (ring_setup(&p->R, SQ_ENTRIES, CQ_ENTRIES, NBUFS, BUFSZ, &what) < 0) {
        snprintf(p->io_note, sizeof p->io_note, "%s: %s", what, strerror(errno));
        ring_teardown(&p->R);
        return -1;
    }
    uring_arm(p, IORING_OP_ACCEPT, p->lfd, OP_ACCEPT);
    uring_arm(p, IORING_OP_POLL_ADD, p->wake_fd, OP_WAKE);
    return 0;
}
#endif

/* -- writing ------------------------------------------------------------------------------------ */
static __thread int on_plane_thread; /* io_uring: only the plane's thread submits */
static void close_conn(Plane *p, conn_t *c);
static void queue_dirty(Plane *p, conn_t *c);

/* Reading follows the connection's state: not while Python paused it, its output waits past the
 * high-water mark, or it flooded. epoll: the registration (edge-triggered); io_uring: the RECV is
 * armed or cancelled (by this thread only: Python's changes reach it through the dirty list). */
static void arm(Plane *p, conn_t *c) {
    int want_in = !(c->paused_py || c->paused_out || c->flooded);
#ifdef HAVE_URING
    if (p->uring) {
        if (on_plane_thread) {
            if (want_in && !c->receiving) {
                uring_arm(p, IORING_OP_RECV, c->fd, (uint64_t)(uintptr_t)c | OP_RECV);
                c->receiving = 1;
            } else if (!want_in && c->receiving && !c->cancelling) {
                struct io_uring_sqe *sqe = ring_sqe(&p->R);
                sqe->opcode = IORING_OP_ASYNC_CANCEL;
                sqe->addr = (uint64_t)(uintptr_t)c | OP_RECV;
                sqe->user_data = OP_CANCEL;
                c->cancelling = 1;
            }
        } else {
            queue_dirty(p, c);
        }
        c->in_armed = (uint8_t)want_in;
        return;
    }
#endif
    struct epoll_event ev = {.events = EPOLLET | (want_in ? EPOLLIN : 0) | (c->want_out ? EPOLLOUT : 0),
                             .data.u64 = conn_id(c)};
    epoll_ctl(p->ep, EPOLL_CTL_MOD, c->fd, &ev); /* a MOD polls the socket again: what waits is reported */
    c->in_armed = (uint8_t)want_in;
}

/* send(2) and recv(2) without libc's wrappers: those are thread-cancellation points, and enabling and
 * disabling asynchronous cancellation around every call cost ~1% of the plane's CPU (perf); nothing
 * ever cancels this thread. */
static inline ssize_t sys_send(int fd, const void *buf, size_t len, int flags) {
    return syscall(SYS_sendto, fd, buf, len, flags, NULL, 0);
}
static inline ssize_t sys_recv(int fd, void *buf, size_t len) {
    return syscall(SYS_recvfrom, fd, buf, len, 0, NULL, NULL);
}

/* Bytes written but not yet taken by the kernel. */
static size_t waiting(conn_t *c) { return c->out.len - c->woff + c->flight_len - c->flight_off; }

/* Backpressure and the slow-consumer drop, after the waiting bytes changed; -1 when it was dropped. */
static int after_write(Plane *p, conn_t *c) {
    size_t left = waiting(c);
    if (left > p->max_wbuf) { /* it reads nothing we send: drop it */
        p->slow_consumers++;
        close_conn(p, c);
        return -1;
    }
    int was_out = c->want_out, was_paused = c->paused_out;
    c->want_out = !p->uring && left > 0;
    c->paused_out = left > p->high_water; /* backpressure: stop reading a client that does not read */
    if (c->want_out != was_out || c->paused_out != was_paused) arm(p, c);
    return 0;
}

/* Write what `out` holds straight away (a send per call, as long as the kernel takes it): epoll's
 * way, and io_uring's for Python's writes when no SEND is in flight. */
static int send_now(Plane *p, conn_t *c) {
    size_t left = c->out.len - c->woff;
    while (left) {
        ssize_t n = sys_send(c->fd, c->out.p + c->woff, left, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            close_conn(p, c);
            return -1;
        }
        c->woff += (size_t)n;
        left -= (size_t)n;
    }
    if (!left) {
        c->woff = c->out.len = 0;
        if (c->out.cap > 64 * 1024) buf_free(&c->out); /* an idle connection holds no buffer */
    } else if (c->woff > c->out.len / 2) {
        memmove(c->out.p, c->out.p + c->woff, left);
        c->out.len = left;
        c->woff = 0;
    }
    return 0;
}

#ifdef HAVE_URING
/* A SEND of what `out` gathered: its buffer becomes `flight` (the kernel reads it until the
 * completion), `out` starts empty. MSG_WAITALL: the kernel itself waits for room and retries. */
static void uring_send(Plane *p, conn_t *c) {
    struct io_uring_sqe *sqe = ring_sqe(&p->R);
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = c->fd;
    sqe->addr = (uint64_t)(uintptr_t)(c->flight + c->flight_off);
    sqe->len = (uint32_t)(c->flight_len - c->flight_off);
    sqe->msg_flags = MSG_NOSIGNAL | MSG_WAITALL;
    sqe->user_data = (uint64_t)(uintptr_t)c | OP_SEND;
    c->sending = 1;
    p->sends_queued++;
}
static void uring_start_send(Plane *p, conn_t *c) {
    if (c->sending || c->out.len == c->woff) return;
    free(c->flight); /* an empty buffer kept from the last SEND, when `out` had its own */
    c->flight = c->out.p;
    c->flight_cap = c->out.cap;
    c->flight_len = c->out.len;
    c->flight_off = c->woff;
    c->out.p = NULL;
    c->out.len = c->out.cap = c->woff = 0;
    uring_send(p, c);
}
#endif

/* Write what waits; 0, or -1 when the connection was closed (error, or a slow consumer). */
static int flush_out(Plane *p, conn_t *c) {
#ifdef HAVE_URING
    if (p->uring) {
        if (!on_plane_thread) { /* Python: directly when nothing is in flight */
            if (!c->sending && send_now(p, c) < 0) return -1;
            if (c->out.len > c->woff) queue_dirty(p, c); /* the rest: a SEND from the thread */
        } else {
            uring_start_send(p, c);
        }
        return after_write(p, c);
    }
#endif
    if (send_now(p, c) < 0) return -1;
    return after_write(p, c);
}

/* Queue bytes for the end of this batch (the plane's own frames). */
static int queue_out(Plane *p, conn_t *c, const void *data, size_t n) {
    if (buf_add(&c->out, data, n)) return -1;
    if (!c->want_out) queue_dirty(p, c);
    return 0;
}

/* A connection to look at when the batch ends: its output, and (io_uring) its reading. */
static void queue_dirty(Plane *p, conn_t *c) {
    if (c->dirty) return;
    if (p->ndirty == p->cdirty) {
        size_t cap = p->cdirty ? p->cdirty * 2 : 1024;
        conn_t **d = realloc(p->dirty, cap * sizeof *d);
        if (!d) return;
        p->dirty = d;
        p->cdirty = cap;
    }
    p->dirty[p->ndirty++] = c;
    c->dirty = 1;
    if (p->uring && !on_plane_thread) { /* Python's: wake the thread */
        uint64_t one = 1;
        if (write(p->wake_fd, &one, 8) < 0) { /* already signalled */ }
    }
}

static void flush_dirty(Plane *p) {
    for (size_t i = 0; i < p->ndirty; i++) {
        conn_t *c = p->dirty[i];
        if (!c) continue;
        c->dirty = 0;
        if (flush_out(p, c) == 0 && p->uring) arm(p, c);
    }
    p->ndirty = 0;
}

/* -- closing ------------------------------------------------------------------------------------ */
static void requeue_for(Plane *p, uint64_t id) {
    for (size_t i = 0; i < NBUCKETS; i++) {
        held_t **e = &p->held[i];
        while (*e) {
            if ((*e)->rid_conn == id) {
                held_t *h = *e;
                *e = h->next;
                p->nheld--;
                push_event(p, EV_REQUEUE, id, h, 0, 0, 0);
            } else {
                e = &(*e)->next;
            }
        }
    }
}

/* The struct itself goes once the kernel has answered its last operation (io_uring; at once with epoll). */
static void release(Plane *p, conn_t *c) {
    if (c->sending || c->receiving) return;
    *c->zombie_pprev = c->zombie_next;
    if (c->zombie_next) c->zombie_next->zombie_pprev = c->zombie_pprev;
    free(c->flight);
    buf_free(&c->out);
    free(c);
}

/* io_uring: the socket of a closed connection, as transport.close() does — the last frames out,
 * then FIN. close() alone would not end the armed RECV (it holds the socket), so the client would
 * see no FIN: shutdown ends it, and a SEND waiting for room; their completions release the struct. */
static void close_socket(conn_t *c) {
    if (c->out.len > c->woff)
        (void)sys_send(c->fd, c->out.p + c->woff, c->out.len - c->woff, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(c->fd, SHUT_RDWR);
    close(c->fd);
    c->sock_closed = 1;
}

static void close_conn(Plane *p, conn_t *c) {
    uint64_t id = conn_id(c);
    if (p->uring) {
        /* With a SEND in flight the last frames (an error frame, say) must follow its bytes: the socket
         * goes when it completes (uring_on_send), or they would be lost with it. */
        if (!c->sending) close_socket(c);
    } else {
        epoll_ctl(p->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->sock_closed = 1;
    }
    if (c->logged) route_drop(p, c);
    if (c->inflight) requeue_for(p, id); /* before CLOSED: the server queues them, then forgets the connection */
    if (c->dirty)
        for (size_t i = 0; i < p->ndirty; i++)
            if (p->dirty[i] == c) p->dirty[i] = NULL;
    push_event4(p, EV_CLOSED, id, NULL, 0, c->tokens, c->last, c->ftokens, c->flast);
    p->conns[c->fd] = NULL;
    free(c->rbuf);
    c->rbuf = NULL;
    if (c->sock_closed) buf_free(&c->out);
    c->closed = 1;
    c->zombie_next = p->zombies;
    if (p->zombies) p->zombies->zombie_pprev = &c->zombie_next;
    c->zombie_pprev = &p->zombies;
    p->zombies = c;
    release(p, c);
}

/* -- the hot path ------------------------------------------------------------------------------- */
static char hexd[] = "0123456789abcdef";

static char *put_int(char *o, int64_t v) {
    char tmp[24];
    int n = 0;
    if (v < 0) { *o++ = '-'; v = -v; }
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *o++ = tmp[--n];
    return o;
}
#define PUT(o, lit) (memcpy(o, lit, sizeof(lit) - 1), o += sizeof(lit) - 1)

static uint64_t rng_next(Plane *p) { /* xorshift128+: event ids, as random.getrandbits does in Python */
    uint64_t s1 = p->rng[0];
    const uint64_t s0 = p->rng[1];
    p->rng[0] = s0;
    s1 ^= s1 << 23;
    p->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return p->rng[1] + s0;
}

/* `message.sent`, as relay/emitter.py's encode_message_sent writes it; key = the sender. */
static void signal_sent(Plane *p, const uint8_t *sender, const uint8_t *recipient, size_t size, int kind,
                        int64_t ts, int first) {
    if (!p->rkt && p->nsignals >= p->max_signals) { p->signals_dropped++; return; }
    char rec[512];
    char *o = rec;
    int bucket = 0;
    for (size_t s = size; s > 1; s >>= 1) bucket++;
    if (bucket > 40) bucket = 40;
    PUT(o, "{\"type\":\"message.sent\",\"v\":1,\"ts\":");
    o = put_int(o, ts);
    PUT(o, ",\"id\":\"");
    for (int w = 0; w < 2; w++) {
        uint64_t r = rng_next(p);
        for (int i = 15; i >= 0; i--) *o++ = hexd[(r >> (4 * i)) & 15];
    }
    PUT(o, "\",\"sender\":\"");
    memcpy(o, sender, ACCT); o += ACCT;
    PUT(o, "\",\"recipient\":\"");
    memcpy(o, recipient, ACCT); o += ACCT;
    PUT(o, "\",\"size_bucket\":");
    o = put_int(o, bucket);
    PUT(o, ",\"kind\":\"");
    size_t kl = strlen(p->kind_names[kind]);
    memcpy(o, p->kind_names[kind], kl); o += kl;
    if (first) PUT(o, "\",\"first_contact\":true,\"recipient_online\":true}");
    else PUT(o, "\",\"first_contact\":false,\"recipient_online\":true}");
    uint16_t vlen = (uint16_t)(o - rec);
    if (p->rkt) { /* librdkafka copies it; a full queue (the broker away too long) drops it, counted */
        if (p->rd_produce(p->rkt, RD_PARTITION_UA, RD_MSG_F_COPY, rec, vlen, sender, ACCT, NULL)) p->signals_dropped++;
        return;
    }
    if (buf_reserve(&p->signals, 2 + vlen)) { p->signals_dropped++; return; }
    buf_add(&p->signals, &vlen, 2);
    buf_add(&p->signals, rec, vlen);
    p->nsignals++;
}

/* A SEND handled here; 0 when it must go up (anything not the common case). */
static int on_send(Plane *p, conn_t *c, const uint8_t *f, uint32_t length) {
    const uint8_t *pl = f + HDR;
    size_t plen = length - TAIL;
    if (!c->fast || plen < SEND_FIXED) return 0;
    size_t size = plen - SEND_FIXED;
    int kind = pl[SEND_FIXED - 1];
    if (kind >= p->nkinds || size > p->max_message) return 0;
    const uint8_t *recipient = pl + MID;
    conn_t *r = route_get(p, recipient);
    if (!r || r->flooded) return 0;
    uint8_t blocked[2 * ACCT], talked[2 * ACCT], contact[2 * ACCT];
    pair_of(blocked, recipient, c->acct, 0);
    if (set_has(&p->sets[SET_BLOCKS], blocked)) return 0; /* up: refused there */
    pair_of(talked, c->acct, recipient, 1);
    pair_of(contact, c->acct, recipient, 0);
    int first = !set_has(&p->sets[SET_TALKED], talked) && !set_has(&p->sets[SET_CONTACTS], contact);
    /* Both buckets are checked before either is spent: anything refused goes up, where the server
     * takes the same tokens (take_send, take_first) and answers RATE_LIMITED with its signal. */
    double tokens = c->tokens + (p->now - c->last) * c->refill;
    if (tokens > c->capacity) tokens = c->capacity;
    double ftokens = c->ftokens + (p->now - c->flast) * c->frefill;
    if (ftokens > c->fcapacity) ftokens = c->fcapacity;
    if (tokens < 1.0 || (first && ftokens < 1.0)) return 0;
    held_t *h = malloc(sizeof *h + size);
    if (!h) return 0;
    c->tokens = tokens - 1.0;
    c->last = p->now;
    if (first) {
        c->ftokens = ftokens - 1.0;
        c->flast = p->now;
        set_put(&p->sets[SET_TALKED], talked, 1);
    }
    memcpy(h->mid, pl, MID);
    h->rid_conn = conn_id(r);
    h->sid_conn = conn_id(c);
    h->rid = be32(f + 7);
    h->deadline = p->ack_deadline;
    h->kind = (uint8_t)kind;
    h->ts = p->now_ms;
    memcpy(h->sender, c->acct, ACCT);
    memcpy(h->recipient, recipient, ACCT);
    h->ct_len = (uint32_t)size;
    memcpy(h->ct, pl + SEND_FIXED, size);
    /* A second DELIVER of the same (mid, recipient) replaces the first: the client dedups by id. */
    held_t *old = held_take(p, h->mid, h->rid_conn);
    free(old);
    size_t b = held_hash(h->mid, h->rid_conn);
    h->next = p->held[b];
    p->held[b] = h;
    p->nheld++;
    r->inflight++;
    uint8_t d[HDR + DELIVER_FIXED];
    put32(d, (uint32_t)(TAIL + DELIVER_FIXED + size));
    d[4] = VERSION; d[5] = T_DELIVER; d[6] = 0;
    put32(d + 7, 0);
    memcpy(d + HDR, h->mid, MID);
    memcpy(d + HDR + MID, c->acct, ACCT);
    d[HDR + MID + ACCT] = 0;
    d[HDR + MID + ACCT + 1] = (uint8_t)kind;
    put64(d + HDR + MID + ACCT + 2, (uint64_t)h->ts);
    queue_out(p, r, d, sizeof d);
    queue_out(p, r, h->ct, size);
    uint8_t commit_in[MID + 2 * ACCT], digest[16];
    memcpy(commit_in, h->mid, MID);
    memcpy(commit_in + MID, c->acct, ACCT);
    memcpy(commit_in + MID + ACCT, recipient, ACCT);
    blake2b_16(commit_in, sizeof commit_in, digest);
    buf_add(&p->commits, digest, 16);
    signal_sent(p, c->acct, recipient, size, kind, h->ts, first);
    p->sends++;
    p->frames_out++;
    return 1;
}

static void send_ack(Plane *p, held_t *h) {
    conn_t *s = by_id(p, h->sid_conn);
    p->delivered++;
    p->acks_delivered++;
    if (!s) return; /* the sender left: it learns nothing more of this message */
    uint8_t a[HDR + MID + 1];
    put32(a, TAIL + MID + 1);
    a[4] = VERSION; a[5] = T_SEND_ACK; a[6] = 0;
    put32(a + 7, h->rid);
    memcpy(a + HDR, h->mid, MID);
    a[HDR + MID] = STATUS_DELIVERED;
    queue_out(p, s, a, sizeof a);
}

/* A DELIVER_ACK: the ids held here are settled; 0 → the whole frame goes up, 1 → handled (any id not
 * held here went up in a DELIVER_ACK of its own, appended to `up`). */
static int on_deliver_ack(Plane *p, conn_t *c, const uint8_t *f, uint32_t length, buf_t *up) {
    const uint8_t *pl = f + HDR;
    size_t plen = length - TAIL;
    if (plen < 2 || !c->inflight) return 0;
    size_t count = ((size_t)pl[0] << 8) | pl[1];
    if (plen != 2 + count * MID) return 0;
    uint64_t id = conn_id(c);
    size_t rest = 0;
    uint8_t *restp = NULL;
    for (size_t i = 0; i < count; i++) {
        const uint8_t *mid = pl + 2 + i * MID;
        held_t *h = held_take(p, mid, id);
        if (h) {
            send_ack(p, h);
            free(h);
            continue;
        }
        if (!restp) { /* the first id not held here: start its frame */
            if (buf_reserve(up, HDR + 2 + (count - i) * MID)) return 0;
            restp = up->p + up->len;
            memcpy(restp, f, HDR);
            up->len += HDR + 2;
        }
        buf_add(up, mid, MID);
        rest++;
    }
    if (restp) {
        put32(restp, (uint32_t)(TAIL + 2 + rest * MID));
        restp[HDR] = (uint8_t)(rest >> 8);
        restp[HDR + 1] = (uint8_t)rest;
    }
    return 1;
}

/* -- reading ------------------------------------------------------------------------------------ */
static void go_raw(conn_t *c) { c->raw = 1; }

static void push_up(Plane *p, conn_t *c, buf_t *up) {
    if (!up->len) return;
    push_event(p, EV_DATA, conn_id(c), up->p, up->len, 0, 0); /* the event owns the buffer now */
    up->p = NULL;
    up->len = up->cap = 0;
}

/* One read and what it holds; the bytes read, or -1 when the connection was closed. */
/* The bytes of one read: frames cut and handled, the rest kept for the next; -1 when the connection
 * was closed. */
static int on_bytes(Plane *p, conn_t *c, const uint8_t *in, size_t r) {
    if (c->flooded) return 0;
    buf_t up = {0};
    if (c->raw) { /* after a framing error: everything as read, for Python's FrameReader */
        buf_add(&up, in, r);
        push_up(p, c, &up);
        return 0;
    }
    const uint8_t *data;
    size_t n;
    if (c->rlen) {
        uint8_t *nb = realloc(c->rbuf, c->rlen + r);
        if (!nb) { close_conn(p, c); return -1; }
        memcpy(nb + c->rlen, in, r);
        c->rbuf = nb;
        data = nb;
        n = c->rlen + r;
    } else {
        data = in;
        n = r;
    }
    size_t pos = 0;
    while (n - pos >= 4) {
        uint32_t length = be32(data + pos);
        if (length > c->max_frame || length < TAIL) { go_raw(c); break; }
        if (n - pos < 4 + (size_t)length) break;
        if (data[pos + 4] != VERSION) { go_raw(c); break; }
        p->frames_in++;
        if (c->seen_gen != p->gen) {
            c->seen_gen = p->gen;
            c->budget = p->frame_budget;
        }
        if (c->logged && --c->budget < 0) { /* a flood: the server answers FLOOD and closes it */
            c->flooded = 1;
            arm(p, c);
            push_up(p, c, &up);
            push_event(p, EV_FLOOD, conn_id(c), NULL, 0, 0, 0);
            pos = n;
            break;
        }
        const uint8_t *f = data + pos;
        int handled = 0;
        if (c->logged) {
            if (f[5] == T_SEND) handled = on_send(p, c, f, length);
            else if (f[5] == T_DELIVER_ACK) handled = on_deliver_ack(p, c, f, length, &up);
            else if (f[5] == T_PING && length == TAIL && c->budget >= PING_COST) { /* keepalive: PONG */
                uint8_t pong[HDR];
                memcpy(pong, f, HDR);
                pong[5] = T_PONG;
                pong[6] = 0;
                c->budget -= PING_COST - 1;
                queue_out(p, c, pong, HDR);
                handled = 1;
            }
        }
        if (!handled) buf_add(&up, f, 4 + (size_t)length);
        pos += 4 + (size_t)length;
    }
    if (c->raw && pos < n) {
        buf_add(&up, data + pos, n - pos);
        pos = n;
    }
    push_up(p, c, &up);
    size_t left = n - pos;
    if (!left) {
        free(c->rbuf);
        c->rbuf = NULL;
        c->rlen = 0;
    } else if (data == c->rbuf) {
        if (pos) memmove(c->rbuf, c->rbuf + pos, left);
        c->rlen = left;
    } else {
        free(c->rbuf);
        c->rbuf = malloc(left);
        if (!c->rbuf) { close_conn(p, c); return -1; }
        memcpy(c->rbuf, data + pos, left);
        c->rlen = left;
    }
    return 0;
}

/* epoll: one read into the scratch buffer; the bytes read, or -1 when the connection was closed. */
static ssize_t read_once(Plane *p, conn_t *c) {
    ssize_t r;
    for (;;) {
        r = sys_recv(c->fd, p->scratch, RBUF);
        if (r >= 0 || errno != EINTR) break;
    }
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        close_conn(p, c);
        return -1;
    }
    if (r < 0) return 0;
    return on_bytes(p, c, p->scratch, (size_t)r) < 0 ? -1 : r;
}

/* Sockets are edge-triggered (each ready socket is polled once per wait, not again in the next one
 * to find it drained): a read that fills the buffer may have left more, so read again; a shorter
 * one emptied the socket. A paused connection is read again when `arm` re-registers it. */
static void on_readable(Plane *p, conn_t *c) {
    while (read_once(p, c) == RBUF && c->in_armed) {}
}

#define ID_LISTEN UINT64_MAX
#define ID_WAKE (UINT64_MAX - 1)

/* A new connection: its state, its reading armed, and a `connect` event with its peer's address. */
static void accepted(Plane *p, int fd, const struct sockaddr_storage *ss) {
    conn_t *c = fd < p->maxfd ? calloc(1, sizeof *c) : NULL;
    if (!c) { close(fd); return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->gen = ++p->next_gen;
    c->max_frame = p->max_frame_unauth;
    c->seen_gen = p->gen;
    c->last = p->now;
    p->conns[fd] = c;
    if (p->uring) {
        arm(p, c);
    } else {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = conn_id(c)};
        epoll_ctl(p->ep, EPOLL_CTL_ADD, fd, &ev);
        c->in_armed = 1;
    }
    char *peer = calloc(1, INET6_ADDRSTRLEN + 1);
    if (peer) {
        if (ss->ss_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, peer, INET6_ADDRSTRLEN);
        else if (ss->ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, peer, INET6_ADDRSTRLEN);
    }
    push_event(p, EV_CONNECT, conn_id(c), peer, peer ? strlen(peer) : 0, 0, 0);
}

static void on_accept(Plane *p) {
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(p->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno == EMFILE || errno == ENFILE) usleep(10000); /* out of files: do not spin on it */
            return;
        }
        accepted(p, fd, &ss);
    }
}

/* Events are handled in chunks of CHUNK, each under the mutex and ending with its writes: a frame
 * read early in a long batch (after the thread waited for a CPU, say) is answered within a chunk,
 * not after the whole batch, and Python's calls wait at most a chunk for the mutex. */
#define CHUNK 32
#define PACE_S 0.00025

/* At most one wait per PACE_S: when the last one returned less than PACE_S ago, sleep out the rest
 * first, so the next finds more sockets ready (fewer wakeups, reads and writes a message). A busy
 * thread, whose batches take longer than PACE_S, never sleeps. */
static void pace(double woke) {
    double since = mono_now() - woke;
    if (since < PACE_S) {
        struct timespec ts = {0, (long)((PACE_S - since) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* Under the mutex at the start of a chunk: 0 when the plane stops. */
static int chunk_begin(Plane *p) {
    pthread_mutex_lock(&p->mu);
    if (!p->running) {
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    p->now = mono_now();
    p->now_ms = wall_ms();
    return 1;
}
static void chunk_end(Plane *p) {
    flush_dirty(p);
    if (p->rk) p->rd_poll(p->rk, 0);
    pthread_mutex_unlock(&p->mu);
}

static void run_epoll(Plane *p) {
    struct epoll_event evs[1024];
    double woke = 0;
    for (;;) {
        pace(woke);
        int n = epoll_wait(p->ep, evs, 1024, 100);
        woke = mono_now();
        for (int start = 0; start < (n > 0 ? n : 1); start += CHUNK) {
            if (!chunk_begin(p)) return;
            for (int i = start; i < n && i < start + CHUNK; i++) {
                uint64_t id = evs[i].data.u64;
                if (id == ID_LISTEN) { on_accept(p); continue; }
                if (id == ID_WAKE) {
                    uint64_t v;
                    if (read(p->wake_fd, &v, 8) < 0) { /* nothing to read: fine */ }
                    continue;
                }
                conn_t *c = by_id(p, id);
                if (!c) continue; /* closed earlier in this batch */
                if ((evs[i].events & EPOLLOUT) && flush_out(p, c) < 0) continue;
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(p, c);
            }
            chunk_end(p);
        }
    }
}

#ifdef HAVE_URING
static void uring_on_accept(Plane *p, int res, unsigned flags) {
    if (!(flags & IORING_CQE_F_MORE)) uring_arm(p, IORING_OP_ACCEPT, p->lfd, OP_ACCEPT); /* ended: again */
    if (res < 0) {
        if (res == -EMFILE || res == -ENFILE) usleep(10000); /* out of files: do not spin on it */
        return;
    }
    struct sockaddr_storage ss = {0};
    socklen_t sl = sizeof ss;
    getpeername(res, (struct sockaddr *)&ss, &sl);
    accepted(p, res, &ss);
}

static void uring_on_recv(Plane *p, conn_t *c, int res, unsigned flags) {
    int more = flags & IORING_CQE_F_MORE;
    if (!more) c->receiving = c->cancelling = 0;
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        if (!c->closed && res > 0) on_bytes(p, c, ring_buf(&p->R, bid), (size_t)res);
        ring_give_buf(&p->R, bid); /* handed back once the batch's completions are all handled */
        if (c->closed) { release(p, c); return; }
        if (!more) arm(p, c);
        return;
    }
    if (c->closed) { release(p, c); return; }
    if (res == -ENOBUFS || res == -ECANCELED || (res > 0 && !more)) { /* out of buffers, or paused */
        if (!more) arm(p, c);
        return;
    }
    close_conn(p, c); /* end of stream, or an error */
}

static void uring_on_send(Plane *p, conn_t *c, int res) {
    c->sending = 0;
    if (c->closed) {
        if (!c->sock_closed) close_socket(c); /* its close waited for this SEND */
        release(p, c);
        return;
    }
    if (res > 0 && (c->flight_off += (size_t)res) < c->flight_len) {
        uring_send(p, c); /* short: the rest, before anything gathered since */
        return;
    }
    if (res < 0 && res != -EINTR) { close_conn(p, c); return; }
    c->flight_len = c->flight_off = 0;
    if (!c->out.p && c->flight_cap <= 64 * 1024) { /* keep one buffer: out's next */
        c->out.p = c->flight;
        c->out.cap = c->flight_cap;
        c->flight = NULL;
        c->flight_cap = 0;
    } else {
        free(c->flight);
        c->flight = NULL;
        c->flight_cap = 0;
    }
    if (c->out.len > c->woff) queue_dirty(p, c);
    after_write(p, c);
}

static void run_uring(Plane *p) {
    double woke = 0;
    for (;;) {
        pace(woke);
        /* Wait for one completion more than the SENDs just submitted: most complete inline and post
         * theirs at once, and waiting for one would return with nothing to read. A SEND that waits for
         * room completes later and may be all that is coming: 1 ms is then the longest wait. */
        unsigned sends = p->sends_queued;
        p->sends_queued = 0;
        if (ring_enter(&p->R, sends + 1, sends ? 1000000 : 100000000) < 0 && errno != EINTR && errno != ETIME &&
            errno != EAGAIN && errno != EBUSY)
            usleep(1000);
        woke = mono_now();
        unsigned head = *p->R.cq_khead, tail = __atomic_load_n(p->R.cq_ktail, __ATOMIC_ACQUIRE);
        do {
            if (!chunk_begin(p)) return;
            for (unsigned i = 0; head != tail && i < CHUNK; head++, i++) {
                struct io_uring_cqe *cqe = &p->R.cqes[head & p->R.cq_mask];
                conn_t *c = (conn_t *)(uintptr_t)(cqe->user_data & ~(uint64_t)15);
                switch (cqe->user_data & 15) {
                case OP_ACCEPT: uring_on_accept(p, cqe->res, cqe->flags); break;
                case OP_RECV: uring_on_recv(p, c, cqe->res, cqe->flags); break;
                case OP_SEND: uring_on_send(p, c, cqe->res); break;
                case OP_WAKE: {
                    uint64_t v;
                    if (read(p->wake_fd, &v, 8) < 0) { /* nothing to read: fine */ }
                    if (!(cqe->flags & IORING_CQE_F_MORE)) uring_arm(p, IORING_OP_POLL_ADD, p->wake_fd, OP_WAKE);
                    break;
                }
                default: break; /* OP_CANCEL: the RECV's own completion says it ended */
                }
            }
            __atomic_store_n(p->R.cq_khead, head, __ATOMIC_RELEASE);
            ring_publish_bufs(&p->R);
            chunk_end(p);
        } while (head != tail);
    }
}
#endif

static void *run(void *arg) {
    Plane *p = arg;
    on_plane_thread = 1;
#ifdef HAVE_URING
    if (!getenv("SEALGUARD_RELAY_EPOLL") && uring_setup(p) == 0) {
        p->uring = 1;
        __atomic_store_n(&p->io_ready, 1, __ATOMIC_RELEASE);
        run_uring(p);
        return NULL;
    }
    if (getenv("SEALGUARD_RELAY_EPOLL")) snprintf(p->io_note, sizeof p->io_note, "SEALGUARD_RELAY_EPOLL is set");
    ring_teardown(&p->R);
#else
    snprintf(p->io_note, sizeof p->io_note, "built without <linux/io_uring.h> (6.0 or later)");
#endif
    __atomic_store_n(&p->io_ready, 1, __ATOMIC_RELEASE);
    run_epoll(p);
    return NULL;
}

/* -- Python ------------------------------------------------------------------------------------- */
#define LOCKED(p) pthread_mutex_lock(&(p)->mu)
#define UNLOCK(p) pthread_mutex_unlock(&(p)->mu)

static PyObject *held_tuple(held_t *h) {
    return Py_BuildValue("(y#s#KIs#iLy#)", (const char *)h->mid, (Py_ssize_t)MID, (const char *)h->recipient,
                         (Py_ssize_t)ACCT, (unsigned long long)h->sid_conn, h->rid, (const char *)h->sender,
                         (Py_ssize_t)ACCT, (int)h->kind, (long long)h->ts, (const char *)h->ct,
                         (Py_ssize_t)h->ct_len);
}

static int Plane_init(Plane *p, PyObject *args, PyObject *kw) {
    static char *names[] = {"listen_fd", "max_frame_unauth", "max_frame", "max_message", "frame_budget",
                            "high_water", "max_wbuf", "max_signals", "kind_names", NULL};
    int lfd;
    unsigned int mfu, mf, mm, fb;
    Py_ssize_t hw, mw, ms;
    PyObject *kinds;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iIIIInnnO!", names, &lfd, &mfu, &mf, &mm, &fb, &hw, &mw, &ms,
                                     &PyTuple_Type, &kinds))
        return -1;
    if (p->started) { PyErr_SetString(PyExc_RuntimeError, "a Plane is initialised once"); return -1; }
    Py_ssize_t nk = PyTuple_GET_SIZE(kinds);
    if (nk < 1 || nk > 8) { PyErr_SetString(PyExc_ValueError, "kind_names: 1 to 8 names"); return -1; }
    for (Py_ssize_t i = 0; i < nk; i++) {
        const char *s = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kinds, i));
        if (!s) return -1;
        if (strlen(s) >= sizeof p->kind_names[0]) { PyErr_SetString(PyExc_ValueError, "kind name too long"); return -1; }
        strcpy(p->kind_names[i], s);
    }
    p->nkinds = (int)nk;
    p->lfd = lfd;
    p->max_frame_unauth = mfu;
    p->max_frame = mf;
    p->max_message = mm;
    p->frame_budget = fb;
    p->high_water = (size_t)hw;
    p->max_wbuf = (size_t)mw;
    p->max_signals = (size_t)ms;
    p->gen = 1;
    struct rlimit rl;
    p->maxfd = (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (1u << 22))
                   ? (int)rl.rlim_cur : 65536;
    p->conns = calloc((size_t)p->maxfd, sizeof *p->conns);
    if (set_init(&p->sets[SET_TALKED], NBUCKETS << 2) || set_init(&p->sets[SET_BLOCKS], 1u << 12) ||
        set_init(&p->sets[SET_CONTACTS], NBUCKETS)) {
        PyErr_NoMemory();
        return -1;
    }
    p->scratch = malloc(RBUF);
    if (getrandom(p->rng, sizeof p->rng, 0) != sizeof p->rng) p->rng[0] = (uint64_t)time(NULL) | 1;
    p->rng[1] |= 1;
    p->ep = epoll_create1(EPOLL_CLOEXEC);
    p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    p->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!p->conns || !p->scratch || p->ep < 0 || p->wake_fd < 0 || p->notify_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ID_LISTEN};
    if (epoll_ctl(p->ep, EPOLL_CTL_ADD, lfd, &ev) < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    ev.data.u64 = ID_WAKE;
    epoll_ctl(p->ep, EPOLL_CTL_ADD, p->wake_fd, &ev);
    pthread_mutex_init(&p->mu, NULL);
    p->now = mono_now();
    p->now_ms = wall_ms();
    p->running = 1;
    if (pthread_create(&p->thread, NULL, run, p)) { PyErr_SetString(PyExc_OSError, "no thread"); return -1; }
    p->started = 1;
    Py_BEGIN_ALLOW_THREADS
    while (!__atomic_load_n(&p->io_ready, __ATOMIC_ACQUIRE)) usleep(100); /* io_uring or epoll: `io` says */
    Py_END_ALLOW_THREADS
    return 0;
}

static PyObject *Plane_stop(Plane *p, PyObject *unused) {
    if (!p->started || !p->running) Py_RETURN_NONE;
    LOCKED(p);
    p->running = 0;
    UNLOCK(p);
    uint64_t one = 1;
    if (write(p->wake_fd, &one, 8) < 0) { /* the thread also wakes within 100 ms */ }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(p->thread, NULL);
    Py_END_ALLOW_THREADS
    for (int fd = 0; fd < p->maxfd; fd++)
        if (p->conns[fd]) close_conn(p, p->conns[fd]);
    if (p->rk) { /* what it formatted reaches the broker first (10 s at most), as the emitter's own close */
        void *rk = p->rk, *rkt = p->rkt;
        p->rk = p->rkt = NULL;
        Py_BEGIN_ALLOW_THREADS
        p->rd_flush(rk, 10000);
        p->rd_topic_destroy(rkt);
        p->rd_destroy(rk);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static void free_events(event_t *evs, size_t n) {
    for (size_t i = 0; i < n; i++) free(evs[i].data);
    free(evs);
}

static void Plane_dealloc(Plane *p) {
    if (p->started) {
        Plane_stop(p, NULL);
        for (size_t i = 0; i < NBUCKETS; i++) {
            for (held_t *h = p->held[i]; h;) { held_t *n = h->next; free(h); h = n; }
        }
        free_events(p->events, p->nevents);
        close(p->ep);
        close(p->wake_fd);
        close(p->notify_fd);
        pthread_mutex_destroy(&p->mu);
    }
#ifdef HAVE_URING
    if (p->uring) ring_teardown(&p->R); /* the kernel is done with the buffers below once the ring is gone */
#endif
    while (p->zombies) {
        conn_t *z = p->zombies;
        p->zombies = z->zombie_next;
        if (!z->sock_closed) close(z->fd);
        free(z->flight);
        buf_free(&z->out);
        free(z);
    }
    for (int i = 0; i < 3; i++) set_free(&p->sets[i]);
    free(p->conns);
    free(p->scratch);
    free(p->dirty);
    buf_free(&p->signals);
    buf_free(&p->commits);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyObject *Plane_poll(Plane *p, PyObject *unused) {
    LOCKED(p);
    uint64_t v;
    if (read(p->notify_fd, &v, 8) < 0) { /* not signalled: nothing new, or already read */ }
    p->notified = 0;
    event_t *evs = p->events;
    size_t n = p->nevents;
    p->events = NULL;
    p->nevents = p->cevents = 0;
    UNLOCK(p);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out && i < n; i++) {
        event_t *e = &evs[i];
        PyObject *t = NULL;
        switch (e->type) {
        case EV_CONNECT: t = Py_BuildValue("(iKs#)", e->type, (unsigned long long)e->id, e->data ? (char *)e->data : "",
                                           (Py_ssize_t)e->len); break;
        case EV_DATA: t = Py_BuildValue("(iKy#)", e->type, (unsigned long long)e->id, (char *)e->data,
                                        (Py_ssize_t)e->len); break;
        case EV_CLOSED: t = Py_BuildValue("(iKdddd)", e->type, (unsigned long long)e->id, e->a, e->b, e->c, e->d); break;
        case EV_REQUEUE: {
            PyObject *h = held_tuple((held_t *)e->data);
            t = h ? Py_BuildValue("(iKN)", e->type, (unsigned long long)e->id, h) : NULL;
            break;
        }
        default: t = Py_BuildValue("(iK)", e->type, (unsigned long long)e->id); break;
        }
        if (!t) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
    }
    free_events(evs, n);
    return out;
}

static PyObject *Plane_write(Plane *p, PyObject *args) {
    unsigned long long id;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "Ky*", &id, &b)) return NULL;
    long long size = -1;
    LOCKED(p);
    conn_t *c = by_id(p, id);
    if (c && !buf_add(&c->out, b.buf, (size_t)b.len)) {
        if (!c->want_out) flush_out(p, c);
        c = by_id(p, id);
        if (c) size = (long long)(c->out.len - c->woff);
    }
    UNLOCK(p);
    PyBuffer_Release(&b);
    return PyLong_FromLongLong(size);
}

static PyObject *Plane_close(Plane *p, PyObject *args) {
    unsigned long long id;
    int flush = 1;
    if (!PyArg_ParseTuple(args, "K|p", &id, &flush)) return NULL;
    LOCKED(p);
    conn_t *c = by_id(p, id);
    if (c && !(flush && c->out.len > c->woff && flush_out(p, c) < 0)) {
        c = by_id(p, id);
        if (c) close_conn(p, c);
    }
    UNLOCK(p);
    Py_RETURN_NONE;
}

static PyObject *Plane_login(Plane *p, PyObject *args) {
    unsigned long long id;
    const char *acct;
    Py_ssize_t alen;
    int fast;
    double capacity, refill, tokens, last, fcapacity, frefill, ftokens, flast;
    if (!PyArg_ParseTuple(args, "Ky#p(dddd)(dddd)", &id, &acct, &alen, &fast, &capacity, &refill, &tokens, &last,
                          &fcapacity, &frefill, &ftokens, &flast))
        return NULL;
    if (alen != ACCT) { PyErr_SetString(PyExc_ValueError, "an account id is 21 bytes"); return NULL; }
    LOCKED(p);
    conn_t *c = by_id(p, id);
    if (c) {
        if (c->logged) route_drop(p, c);
        c->logged = 1;
        c->fast = (uint8_t)fast;
        memcpy(c->acct, acct, ACCT);
        c->max_frame = p->max_frame;
        c->seen_gen = p->gen;
        c->budget = p->frame_budget;
        c->capacity = capacity;
        c->refill = refill;
        c->tokens = tokens;
        c->last = last;
        c->fcapacity = fcapacity;
        c->frefill = frefill;
        c->ftokens = ftokens;
        c->flast = flast;
        route_set(p, c);
    }
    UNLOCK(p);
    return PyBool_FromLong(c != NULL);
}

static PyObject *Plane_set_fast(Plane *p, PyObject *args) {
    unsigned long long id;
    int fast;
    if (!PyArg_ParseTuple(args, "Kp", &id, &fast)) return NULL;
    LOCKED(p);
    conn_t *c = by_id(p, id);
    if (c) c->fast = (uint8_t)fast;
    UNLOCK(p);
    Py_RETURN_NONE;
}

static PyObject *Plane_pause(Plane *p, PyObject *args) {
    unsigned long long id;
    int paused;
    if (!PyArg_ParseTuple(args, "Kp", &id, &paused)) return NULL;
    LOCKED(p);
    conn_t *c = by_id(p, id);
    if (c && c->paused_py != paused) {
        c->paused_py = (uint8_t)paused;
        arm(p, c);
    }
    UNLOCK(p);
    Py_RETURN_NONE;
}

/* pair(set, a, b, on): SET_TALKED (a and b exchanged a message), SET_BLOCKS (a blocked b), SET_CONTACTS
 * (b is a's contact). has_pair(set, a, b). Ids that are not 21 bytes are never in a set. */
static int pair_args(PyObject *args, int *set, uint8_t key[2 * ACCT], int *on) {
    const char *a, *b;
    Py_ssize_t al, bl;
    *on = 1;
    if (!PyArg_ParseTuple(args, "iy#y#|p", set, &a, &al, &b, &bl, on)) return -1;
    if (*set < 0 || *set > 2) { PyErr_SetString(PyExc_ValueError, "set: 0, 1 or 2"); return -1; }
    if (al != ACCT || bl != ACCT) return 1;
    pair_of(key, (const uint8_t *)a, (const uint8_t *)b, *set == SET_TALKED);
    return 0;
}

static PyObject *Plane_pair(Plane *p, PyObject *args) {
    uint8_t key[2 * ACCT];
    int set, on, k = pair_args(args, &set, key, &on);
    if (k < 0) return NULL;
    if (k == 0) {
        LOCKED(p);
        set_put(&p->sets[set], key, on);
        UNLOCK(p);
    }
    Py_RETURN_NONE;
}

static PyObject *Plane_has_pair(Plane *p, PyObject *args) {
    uint8_t key[2 * ACCT];
    int set, on, k = pair_args(args, &set, key, &on), has = 0;
    if (k < 0) return NULL;
    if (k == 0) {
        LOCKED(p);
        has = set_has(&p->sets[set], key);
        UNLOCK(p);
    }
    return PyBool_FromLong(has);
}

static int take(double *tokens, double *last, double capacity, double refill, double now, double cost) {
    double t = *tokens + (now - *last) * refill;
    if (t > capacity) t = capacity;
    *last = now;
    int ok = t >= cost;
    *tokens = ok ? t - cost : t;
    return ok;
}

/* take(id, first_contact, now, cost=1.0) -> bool: spend from the connection's send or first-contact bucket. */
static PyObject *Plane_take(Plane *p, PyObject *args) {
    unsigned long long id;
    int first;
    double now, cost = 1.0;
    if (!PyArg_ParseTuple(args, "Kpd|d", &id, &first, &now, &cost)) return NULL;
    int ok = 0;
    LOCKED(p);
    conn_t *c = by_id(p, id);
    if (c)
        ok = first ? take(&c->ftokens, &c->flast, c->fcapacity, c->frefill, now, cost)
                   : take(&c->tokens, &c->last, c->capacity, c->refill, now, cost);
    UNLOCK(p);
    return PyBool_FromLong(ok);
}

static PyObject *Plane_set_sweep(Plane *p, PyObject *args) {
    long long gen;
    double deadline;
    if (!PyArg_ParseTuple(args, "Ld", &gen, &deadline)) return NULL;
    LOCKED(p);
    p->gen = gen;
    p->ack_deadline = deadline;
    UNLOCK(p);
    Py_RETURN_NONE;
}

static PyObject *Plane_seen(Plane *p, PyObject *args) {
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id)) return NULL;
    LOCKED(p);
    conn_t *c = by_id(p, id);
    long long gen = c ? c->seen_gen : -1;
    UNLOCK(p);
    return PyLong_FromLongLong(gen);
}

/* Messages held past `now` (or all of them when now is None), removed: the server queues them. */
static PyObject *take_held(Plane *p, int all, double now) {
    held_t *list = NULL;
    LOCKED(p);
    for (size_t i = 0; i < NBUCKETS; i++) {
        held_t **e = &p->held[i];
        while (*e) {
            if (all || (*e)->deadline <= now) {
                held_t *h = *e;
                *e = h->next;
                p->nheld--;
                conn_t *r = by_id(p, h->rid_conn);
                if (r && r->inflight) r->inflight--;
                h->next = list;
                list = h;
            } else {
                e = &(*e)->next;
            }
        }
    }
    UNLOCK(p);
    PyObject *out = PyList_New(0);
    while (list) {
        held_t *h = list;
        list = h->next;
        if (out) {
            PyObject *t = held_tuple(h);
            if (!t || PyList_Append(out, t) < 0) Py_CLEAR(out);
            Py_XDECREF(t);
        }
        free(h);
    }
    return out;
}

static PyObject *Plane_expire(Plane *p, PyObject *args) {
    double now;
    if (!PyArg_ParseTuple(args, "d", &now)) return NULL;
    return take_held(p, 0, now);
}

static PyObject *Plane_take_inflight(Plane *p, PyObject *unused) { return take_held(p, 1, 0); }

static PyObject *Plane_take_signals(Plane *p, PyObject *unused) {
    LOCKED(p);
    buf_t s = p->signals;
    size_t n = p->nsignals;
    p->signals = (buf_t){0};
    p->nsignals = 0;
    UNLOCK(p);
    PyObject *out = PyList_New((Py_ssize_t)n);
    size_t pos = 0;
    for (size_t i = 0; out && i < n; i++) {
        uint16_t vlen;
        memcpy(&vlen, s.p + pos, 2);
        PyObject *t = PyBytes_FromStringAndSize((const char *)s.p + pos + 2, (Py_ssize_t)vlen);
        if (!t) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
        pos += 2 + vlen;
    }
    buf_free(&s);
    return out;
}

/* produce_to(library, topic, config): message.sent from now on go to `topic` through a librdkafka
 * producer of `config` ({name: value} strings), made with the library at path `library`. */
static PyObject *Plane_produce_to(Plane *p, PyObject *args) {
    const char *lib, *topic;
    PyObject *conf;
    if (!PyArg_ParseTuple(args, "ssO!", &lib, &topic, &PyDict_Type, &conf)) return NULL;
    if (p->rk) { PyErr_SetString(PyExc_RuntimeError, "the plane has a producer already"); return NULL; }
    void *h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
    if (!h) { PyErr_Format(PyExc_OSError, "cannot load librdkafka: %s", dlerror()); return NULL; }
    rd_conf_new_t conf_new = (rd_conf_new_t)dlsym(h, "rd_kafka_conf_new");
    rd_conf_set_t conf_set = (rd_conf_set_t)dlsym(h, "rd_kafka_conf_set");
    rd_new_t rk_new = (rd_new_t)dlsym(h, "rd_kafka_new");
    rd_topic_new_t topic_new = (rd_topic_new_t)dlsym(h, "rd_kafka_topic_new");
    rd_destroy_t conf_destroy = (rd_destroy_t)dlsym(h, "rd_kafka_conf_destroy");
    p->rd_produce = (rd_produce_t)dlsym(h, "rd_kafka_produce");
    p->rd_outq_len = (rd_int_t)dlsym(h, "rd_kafka_outq_len");
    p->rd_flush = (rd_flush_t)dlsym(h, "rd_kafka_flush");
    p->rd_poll = (rd_poll_t)dlsym(h, "rd_kafka_poll");
    p->rd_topic_destroy = (rd_destroy_t)dlsym(h, "rd_kafka_topic_destroy");
    p->rd_destroy = (rd_destroy_t)dlsym(h, "rd_kafka_destroy");
    if (!conf_new || !conf_set || !rk_new || !topic_new || !conf_destroy || !p->rd_produce || !p->rd_outq_len ||
        !p->rd_flush || !p->rd_poll || !p->rd_topic_destroy || !p->rd_destroy) {
        PyErr_SetString(PyExc_OSError, "librdkafka lacks a call the plane needs");
        return NULL;
    }
    char err[512];
    void *c = conf_new();
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(conf, &pos, &k, &v)) {
        const char *ks = PyUnicode_AsUTF8(k), *vs = PyUnicode_AsUTF8(v);
        if (!ks || !vs) { conf_destroy(c); return NULL; }
        if (conf_set(c, ks, vs, err, sizeof err)) {
            conf_destroy(c);
            PyErr_Format(PyExc_ValueError, "producer setting %s=%s: %s", ks, vs, err);
            return NULL;
        }
    }
    void *rk = rk_new(RD_PRODUCER, c, err, sizeof err); /* it owns `c` from here when it succeeds */
    if (!rk) { conf_destroy(c); PyErr_Format(PyExc_OSError, "cannot make a producer: %s", err); return NULL; }
    void *rkt = topic_new(rk, topic, NULL);
    if (!rkt) { p->rd_destroy(rk); PyErr_SetString(PyExc_OSError, "cannot make the topic handle"); return NULL; }
    LOCKED(p);
    p->rk = rk;
    p->rkt = rkt;
    UNLOCK(p);
    Py_RETURN_NONE;
}

static PyObject *Plane_take_commits(Plane *p, PyObject *unused) {
    LOCKED(p);
    PyObject *out = PyBytes_FromStringAndSize((const char *)p->commits.p, (Py_ssize_t)p->commits.len);
    p->commits.len = 0;
    UNLOCK(p);
    return out;
}

static PyObject *Plane_take_stats(Plane *p, PyObject *unused) {
    LOCKED(p);
    PyObject *out = Py_BuildValue("{sKsKsKsKsKsKsKsnsnsn}", "frames_in", p->frames_in, "frames_out", p->frames_out,
                                  "sends", p->sends, "delivered", p->delivered, "acks_delivered", p->acks_delivered,
                                  "slow_consumers", p->slow_consumers, "signals_dropped", p->signals_dropped,
                                  "inflight", (Py_ssize_t)p->nheld,
                                  "signal_buffer", (Py_ssize_t)p->nsignals + (p->rk ? p->rd_outq_len(p->rk) : 0),
                                  "commits", (Py_ssize_t)(p->commits.len / 16));
    p->frames_in = p->frames_out = p->sends = p->delivered = p->acks_delivered = p->slow_consumers = 0;
    p->signals_dropped = 0;
    UNLOCK(p);
    return out;
}

static PyObject *Plane_fd(Plane *p, void *unused) { return PyLong_FromLong(p->notify_fd); }
static PyObject *Plane_io(Plane *p, void *unused) {
    return p->uring ? PyUnicode_FromString("io_uring") : PyUnicode_FromFormat("epoll (%s)", p->io_note);
}

static PyMethodDef Plane_methods[] = {
    {"poll", (PyCFunction)Plane_poll, METH_NOARGS, "Events since the last poll: (type, connection id, ...)."},
    {"write", (PyCFunction)Plane_write, METH_VARARGS, "write(id, data) -> bytes still waiting, -1 if closed."},
    {"close", (PyCFunction)Plane_close, METH_VARARGS, "close(id, flush=True)."},
    {"login", (PyCFunction)Plane_login, METH_VARARGS,
     "login(id, account, fast, send_bucket, first_bucket): route to it, raise its frame limit; a bucket is "
     "(capacity, refill_per_s, tokens, last)."},
    {"set_fast", (PyCFunction)Plane_set_fast, METH_VARARGS, "set_fast(id, fast): may its SENDs stay here."},
    {"pause", (PyCFunction)Plane_pause, METH_VARARGS, "pause(id, paused): stop or resume reading it."},
    {"pair", (PyCFunction)Plane_pair, METH_VARARGS, "pair(set, a, b, on=True): SET_TALKED, SET_BLOCKS, SET_CONTACTS."},
    {"has_pair", (PyCFunction)Plane_has_pair, METH_VARARGS, "has_pair(set, a, b) -> bool."},
    {"take", (PyCFunction)Plane_take, METH_VARARGS, "take(id, first_contact, now, cost=1.0) -> bool."},
    {"set_sweep", (PyCFunction)Plane_set_sweep, METH_VARARGS, "set_sweep(generation, ack_deadline)."},
    {"seen", (PyCFunction)Plane_seen, METH_VARARGS, "seen(id) -> sweep generation of its last frame, -1 if gone."},
    {"expire", (PyCFunction)Plane_expire, METH_VARARGS, "expire(now) -> held messages past their deadline."},
    {"take_inflight", (PyCFunction)Plane_take_inflight, METH_NOARGS, "Every held message, removed."},
    {"take_signals", (PyCFunction)Plane_take_signals, METH_NOARGS, "The JSON of each message.sent since the last call (no producer)."},
    {"produce_to", (PyCFunction)Plane_produce_to, METH_VARARGS,
     "produce_to(library, topic, config): message.sent straight to Kafka through librdkafka."},
    {"take_commits", (PyCFunction)Plane_take_commits, METH_NOARGS, "16-byte commitments since the last call."},
    {"take_stats", (PyCFunction)Plane_take_stats, METH_NOARGS, "Counters since the last call, and gauges."},
    {"stop", (PyCFunction)Plane_stop, METH_NOARGS, "Stop the thread and close every connection."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Plane_getset[] = {{"fd", (getter)Plane_fd, NULL, "eventfd readable when poll() has events", NULL},
                                     {"io", (getter)Plane_io, NULL, "io_uring, or epoll and why not io_uring", NULL},
                                     {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject PlaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.server._plane.Plane",
    .tp_basicsize = sizeof(Plane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The relay's native data plane (relay/server/_plane.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Plane_init,
    .tp_dealloc = (destructor)Plane_dealloc,
    .tp_methods = Plane_methods,
    .tp_getset = Plane_getset,
};

static PyObject *py_blake2b_16(PyObject *self, PyObject *args) {
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b)) return NULL;
    if (b.len > 128) { PyBuffer_Release(&b); PyErr_SetString(PyExc_ValueError, "at most 128 bytes"); return NULL; }
    uint8_t out[16];
    blake2b_16(b.buf, (size_t)b.len, out);
    PyBuffer_Release(&b);
    return PyBytes_FromStringAndSize((const char *)out, 16);
}

static PyMethodDef module_methods[] = {
    {"blake2b_16", py_blake2b_16, METH_VARARGS, "The plane's commitment hash (for tests: equals hashlib's)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "relay.server._plane", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit__plane(void) {
    if (PyType_Ready(&PlaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&PlaneType);
    PyModule_AddObject(m, "Plane", (PyObject *)&PlaneType);
    PyModule_AddIntConstant(m, "EV_CONNECT", EV_CONNECT);
    PyModule_AddIntConstant(m, "EV_DATA", EV_DATA);
    PyModule_AddIntConstant(m, "EV_CLOSED", EV_CLOSED);
    PyModule_AddIntConstant(m, "EV_REQUEUE", EV_REQUEUE);
    PyModule_AddIntConstant(m, "EV_FLOOD", EV_FLOOD);
    PyModule_AddIntConstant(m, "SET_TALKED", SET_TALKED);
    PyModule_AddIntConstant(m, "SET_BLOCKS", SET_BLOCKS);
    PyModule_AddIntConstant(m, "SET_CONTACTS", SET_CONTACTS);
    return m;
}
