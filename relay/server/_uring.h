/* io_uring without liburing: the ring, its submission and completion queues, and a provided-buffer
 * ring for multishot receives — what relay/server/_plane.c and bench/_floor_native.c share.
 *
 * Why not liburing: it is not on the machines this builds on (the build needs only gcc and the
 * kernel's headers), and the few calls here are all either needs. Needs the headers of Linux 6.0 or
 * later (multishot receive, provided-buffer rings): HAVE_URING is defined when they are there.
 *
 * One thread submits (the ring is set up with SINGLE_ISSUER and DEFER_TASKRUN by that thread):
 * completions run when it waits, with no interrupt of it. */
#ifndef SEALGUARD_URING_H
#define SEALGUARD_URING_H

#if defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#endif
#endif

#ifdef IORING_RECV_MULTISHOT
#define HAVE_URING 1
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
    int fd, enter_fd; /* enter_fd: the ring's registered index when REGISTER_RING_FDS worked */
    unsigned enter_flags;
    unsigned *sq_khead, *sq_ktail, sq_mask, sq_entries, sq_tail;
    struct io_uring_sqe *sqes;
    unsigned *cq_khead, *cq_ktail, cq_mask;
    struct io_uring_cqe *cqes;
    void *sq_map, *sqe_map;
    size_t sq_map_len, sqe_map_len;
    struct io_uring_buf_ring *br; /* the provided-buffer ring (group 0) */
    uint8_t *bufs;
    unsigned nbufs, bufsz;
    unsigned short br_tail;
} ring_t;

static inline int ring_register(ring_t *r, unsigned op, void *arg, unsigned nr) {
    return (int)syscall(__NR_io_uring_register, r->fd, op, arg, nr);
}

/* Hand receive buffer `bid` (back) to the kernel; visible once ring_publish_bufs() runs. */
static inline void ring_give_buf(ring_t *r, unsigned bid) {
    struct io_uring_buf *b = &r->br->bufs[r->br_tail & (r->nbufs - 1)];
    b->addr = (uint64_t)(uintptr_t)(r->bufs + (size_t)bid * r->bufsz); /* not b->resv: the tail lives there */
    b->len = r->bufsz;
    b->bid = (uint16_t)bid;
    r->br_tail++;
}
static inline void ring_publish_bufs(ring_t *r) { __atomic_store_n(&r->br->tail, r->br_tail, __ATOMIC_RELEASE); }
static inline uint8_t *ring_buf(ring_t *r, unsigned bid) { return r->bufs + (size_t)bid * r->bufsz; }

static inline void ring_teardown(ring_t *r) {
    if (r->fd > 0) close(r->fd);
    if (r->sq_map && r->sq_map != MAP_FAILED) munmap(r->sq_map, r->sq_map_len);
    if (r->sqe_map && r->sqe_map != MAP_FAILED) munmap(r->sqe_map, r->sqe_map_len);
    if (r->br && r->br != MAP_FAILED) munmap(r->br, r->nbufs * sizeof(struct io_uring_buf));
    free(r->bufs);
    memset(r, 0, sizeof *r);
}

/* The ring (SINGLE_ISSUER, DEFER_TASKRUN: call it on the thread that will submit), its registered
 * fd, and `nbufs` (a power of two) receive buffers of `bufsz` bytes, all handed to the kernel.
 * Returns -1 (errno set, what failed in *what) when this kernel cannot. */
static inline int ring_setup(ring_t *r, unsigned sq_entries, unsigned cq_entries, unsigned nbufs, unsigned bufsz,
                      const char **what) {
    memset(r, 0, sizeof *r);
    r->fd = -1;
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
              IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = cq_entries;
    *what = "io_uring_setup";
    r->fd = (int)syscall(__NR_io_uring_setup, sq_entries, &p);
    if (r->fd < 0) return -1;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_EXT_ARG)) {
        *what = "io_uring features (SINGLE_MMAP, EXT_ARG)";
        errno = ENOSYS;
        return -1;
    }
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    *what = "mmap of the io_uring rings";
    r->sq_map_len = sq_sz > cq_sz ? sq_sz : cq_sz;
    uint8_t *q = mmap(NULL, r->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                      IORING_OFF_SQ_RING);
    if (q == MAP_FAILED) return -1;
    r->sq_map = q;
    r->sqe_map_len = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqe_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) return -1;
    r->sqe_map = r->sqes;
    r->sq_khead = (unsigned *)(q + p.sq_off.head);
    r->sq_ktail = (unsigned *)(q + p.sq_off.tail);
    r->sq_mask = *(unsigned *)(q + p.sq_off.ring_mask);
    r->sq_entries = p.sq_entries;
    unsigned *array = (unsigned *)(q + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++) array[i] = i; /* SQE i is always slot i */
    r->sq_tail = *r->sq_ktail;
    r->cq_khead = (unsigned *)(q + p.cq_off.head);
    r->cq_ktail = (unsigned *)(q + p.cq_off.tail);
    r->cq_mask = *(unsigned *)(q + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(q + p.cq_off.cqes);

    /* The ring's own fd registered too: io_uring_enter then takes no file reference either. */
    struct io_uring_rsrc_update ru = {.offset = -1U, .data = (uint64_t)r->fd};
    r->enter_fd = r->fd;
    if (ring_register(r, IORING_REGISTER_RING_FDS, &ru, 1) == 1) {
        r->enter_fd = (int)ru.offset;
        r->enter_flags = IORING_ENTER_REGISTERED_RING;
    }

    *what = "IORING_REGISTER_PBUF_RING";
    r->nbufs = nbufs;
    r->bufsz = bufsz;
    r->br = mmap(NULL, nbufs * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
    r->bufs = malloc((size_t)nbufs * bufsz);
    if (r->br == MAP_FAILED || !r->bufs) return -1;
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)r->br, .ring_entries = nbufs, .bgid = 0};
    if (ring_register(r, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) return -1;
    for (unsigned bid = 0; bid < nbufs; bid++) ring_give_buf(r, bid);
    ring_publish_bufs(r);
    return 0;
}

/* Submit what is queued and, with a timeout (ns; < 0: do not wait), wait for `min_complete`
 * completions or that long. Returns the syscall's result (-1 and errno on error). */
static inline int ring_enter(ring_t *r, unsigned min_complete, long long timeout_ns) {
    unsigned to_submit = r->sq_tail - *r->sq_khead; /* the kernel moves the head only inside enter */
    __atomic_store_n(r->sq_ktail, r->sq_tail, __ATOMIC_RELEASE);
    if (timeout_ns < 0)
        return (int)syscall(__NR_io_uring_enter, r->enter_fd, to_submit, 0, r->enter_flags, NULL, 0);
    struct __kernel_timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    struct io_uring_getevents_arg arg = {.ts = (uint64_t)(uintptr_t)&ts};
    return (int)syscall(__NR_io_uring_enter, r->enter_fd, to_submit, min_complete,
                        r->enter_flags | IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof arg);
}

/* The next free SQE, zeroed (the queue is submitted first when it is full). */
static inline struct io_uring_sqe *ring_sqe(ring_t *r) {
    while (r->sq_tail - __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE) >= r->sq_entries)
        if (ring_enter(r, 0, -1) < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) usleep(1000);
    struct io_uring_sqe *sqe = &r->sqes[r->sq_tail++ & r->sq_mask];
    memset(sqe, 0, sizeof *sqe);
    return sqe;
}
#endif /* IORING_RECV_MULTISHOT */
#endif /* SEALGUARD_URING_H */
