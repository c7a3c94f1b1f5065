#define _GNU_SOURCE
#include "stream_node/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SN_RING_MAGIC 0x31474E4952534E53ull /* "SNRING1" */
#define REDELIVER_MAX (SN_RING_MAX_MEMBERS * SN_RING_MAX_BATCH)
#define SLICE_NS 20000000LL /* waits wake at least this often to check peers and shutdown */
#define DEFAULT_SPIN_NS 20000
#define REAP_NS 50000000LL

typedef struct {
    _Atomic int32_t pid;      /* 0: entry free */
    _Atomic uint32_t held;    /* frames acquired and not yet released */
    _Atomic uint64_t lo, hi;  /* WORK: seqs [lo, hi) this member may hold */
    _Atomic uint64_t last;    /* LATEST: seq + 1 of the last frame delivered */
    _Atomic uint32_t pinned;  /* LATEST: slot + 1 pinned, 0 none */
    uint32_t pad0;
    uint64_t pad1[3];
} member_t;
_Static_assert(sizeof(member_t) == 64, "a member fills one cache line");

typedef struct {
    uint32_t kind;
    char name[SN_RING_GROUP_NAME_BYTES];
    uint32_t pad0;
    alignas(64) _Atomic uint64_t next_seq; /* WORK: next seq to hand out */
    _Atomic uint64_t tail;                 /* WORK: every seq below is released */
    _Atomic uint64_t consumed, skipped, redelivered;
    _Atomic uint32_t n_redeliver; /* guarded by the ring lock; read without it as a hint */
    uint32_t pad1;
    uint64_t redeliver[REDELIVER_MAX];
    member_t members[SN_RING_MAX_MEMBERS];
} group_t;

typedef struct {
    _Atomic uint32_t refs; /* see the slot states in ring.h */
    uint32_t pad;
    _Atomic uint64_t seq; /* the seq this slot was last published as */
} desc_t;

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t n_window;
    uint32_t n_slots;
    uint32_t n_groups;
    uint32_t n_work;
    uint32_t max_pins;
    uint64_t slot_bytes;
    uint64_t slot_stride;
    uint64_t segment_bytes;
    uint64_t off_desc, off_seqslot, off_done, off_data;
    _Atomic int32_t producer_pid;
    _Atomic uint32_t state;
    _Atomic uint32_t pins;
    uint32_t pad0;
    pthread_mutex_t lock; /* robust, process-shared: joins, reaping, redelivery */
    alignas(64) _Atomic uint64_t publish_seq;
    _Atomic uint32_t pub_futex;
    _Atomic uint32_t pub_waiters;
    alignas(64) _Atomic uint32_t free_futex;
    _Atomic uint32_t free_waiters;
    _Atomic uint64_t producer_waits;
    _Atomic uint32_t last_freed; /* slot + 1 freed last: reused first, so it is still in cache */
    uint32_t pad1;
    _Atomic int64_t last_reap_ns; /* any waiter reaps when nobody did for REAP_NS: a ring stalled
                                     by a dead member recovers even if every wait is short */
    alignas(64) group_t groups[SN_RING_MAX_GROUPS];
} shared_t;

struct sn_ring {
    shared_t *sh;
    size_t map_bytes;
    int creator;
    int ended;
    _Atomic int shutdown;
    int64_t spin_ns; /* busy-wait this long before sleeping on a futex */
    char name[SN_RING_NAME_MAX + 16];
};

/* ---- helpers ------------------------------------------------------------------------------ */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t ns) {
    struct timespec ts = {ns / 1000000000LL, ns % 1000000000LL};
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* A process that exited but was not yet reaped (a zombie) holds nothing: it counts as dead. */
static int pid_alive(int32_t pid) {
    if (pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH)) return 0;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 1;
    buf[n] = 0;
    const char *paren = strrchr(buf, ')');
    return !(paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'));
}

static desc_t *descs(const shared_t *sh) { return (desc_t *)((char *)sh + sh->off_desc); }
static _Atomic uint32_t *seq_slot(const shared_t *sh) {
    return (_Atomic uint32_t *)((char *)sh + sh->off_seqslot);
}
static _Atomic uint64_t *done_of(const shared_t *sh, uint32_t g) {
    return (_Atomic uint64_t *)((char *)sh + sh->off_done) + (size_t)g * sh->n_window;
}

static int make_shm_name(char *out, size_t len, const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > SN_RING_NAME_MAX) return SN_RING_EINVAL;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return SN_RING_EINVAL;
    }
    snprintf(out, len, "/sn-ring-%s", name);
    return SN_RING_OK;
}

static void lock(shared_t *sh) {
    if (pthread_mutex_lock(&sh->lock) == EOWNERDEAD) /* a holder died: state is kept consistent */
        pthread_mutex_consistent(&sh->lock);
}
static void unlock(shared_t *sh) { pthread_mutex_unlock(&sh->lock); }

static void wake_producer(shared_t *sh) {
    atomic_fetch_add_explicit(&sh->free_futex, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&sh->free_waiters, memory_order_seq_cst)) futex_wake(&sh->free_futex);
}

/* Reap if no process did for REAP_NS; called by every wait after each sleep. */
static void maybe_reap(sn_ring *r, int64_t now) {
    int64_t last = atomic_load_explicit(&r->sh->last_reap_ns, memory_order_relaxed);
    if (now - last < REAP_NS) return;
    if (atomic_compare_exchange_strong(&r->sh->last_reap_ns, &last, now)) sn_ring_reap(r);
}

/* ---- lifetime ----------------------------------------------------------------------------- */

/* Is an existing segment a stale one (its producer gone) that may be removed? */
static int existing_is_live(const char *shm_name) {
    int fd = shm_open(shm_name, O_RDONLY, 0);
    if (fd < 0) return 0;
    struct stat st;
    int live = 0;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(shared_t)) {
        shared_t *sh = mmap(NULL, sizeof(shared_t), PROT_READ, MAP_SHARED, fd, 0);
        if (sh != MAP_FAILED) {
            live = sh->magic == SN_RING_MAGIC && atomic_load(&sh->state) == SN_RING_STATE_OPEN &&
                   pid_alive(atomic_load(&sh->producer_pid));
            if (live) live = atomic_load(&sh->producer_pid);
            munmap(sh, sizeof(shared_t));
        }
    }
    close(fd);
    return live;
}

/* Fault the whole mapping in now (Linux 5.14+; older kernels fault lazily, as before). A ring
 * touched lazily pays a page fault for every 4 KiB of its first pass, inside the run: on a VM that
 * gives freed memory back to its host, each one a host fault as well (a 384 MiB ring: ~0.4 s of
 * stalls in the first 48 frames of 8 MiB). The creator's populate allocates and zeroes the pages;
 * an attacher's only maps them. */
static void populate(void *addr, size_t len) {
#ifdef MADV_POPULATE_WRITE
    (void)madvise(addr, len, MADV_POPULATE_WRITE);
#else
    (void)addr;
    (void)len;
#endif
}

int sn_ring_create(sn_ring **out, const char *name, uint32_t n_window, uint64_t slot_bytes,
                   const sn_ring_group_spec *groups, uint32_t n_groups, uint32_t max_pins,
                   uint32_t mode) {
    char shm_name[SN_RING_NAME_MAX + 16];
    int rc = make_shm_name(shm_name, sizeof shm_name, name);
    if (rc) return rc;
    if (n_window < 1 || n_window > SN_RING_MAX_WINDOW || slot_bytes < 1 ||
        n_groups > SN_RING_MAX_GROUPS || max_pins > SN_RING_MAX_MEMBERS * SN_RING_MAX_GROUPS)
        return SN_RING_EINVAL;
    for (uint32_t g = 0; g < n_groups; g++)
        if (groups[g].kind != SN_GROUP_WORK && groups[g].kind != SN_GROUP_LATEST) return SN_RING_EINVAL;

    uint32_t n_slots = n_window + max_pins + 1;
    uint64_t align = slot_bytes + SN_RING_PAYLOAD_OFFSET >= 4096 ? 4096 : 64;
    uint64_t stride = (slot_bytes + SN_RING_PAYLOAD_OFFSET + align - 1) / align * align;
    uint64_t off_desc = (sizeof(shared_t) + 63) / 64 * 64;
    uint64_t off_seqslot = off_desc + (uint64_t)n_slots * sizeof(desc_t);
    uint64_t off_done = (off_seqslot + (uint64_t)n_window * 4 + 63) / 64 * 64;
    uint64_t off_data = (off_done + (uint64_t)SN_RING_MAX_GROUPS * n_window * 8 + 4095) / 4096 * 4096;
    if (stride > (UINT64_MAX - off_data) / n_slots) return SN_RING_EINVAL;
    uint64_t total = off_data + stride * n_slots;

    int fd = -1;
    for (int attempt = 0; attempt < 2 && fd < 0; attempt++) {
        fd = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, mode);
        if (fd < 0 && errno == EEXIST) {
            if (existing_is_live(shm_name)) return SN_RING_EINUSE;
            shm_unlink(shm_name); /* a stale segment of a crashed run */
        } else if (fd < 0) {
            return SN_RING_ESYS;
        }
    }
    if (fd < 0) return SN_RING_EINUSE;
    fchmod(fd, mode); /* the umask must not widen or narrow what the caller asked for */
    int err = posix_fallocate(fd, 0, (off_t)total); /* fails now, not with SIGBUS later */
    if (err) {
        close(fd);
        shm_unlink(shm_name);
        errno = err;
        return err == ENOSPC ? SN_RING_ENOSPC : SN_RING_ESYS;
    }
    shared_t *sh = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (sh == MAP_FAILED) {
        shm_unlink(shm_name);
        return SN_RING_ESYS;
    }
    populate(sh, total);
    memset(sh, 0, off_data);
    sh->version = SN_RING_VERSION;
    sh->n_window = n_window;
    sh->n_slots = n_slots;
    sh->n_groups = n_groups;
    sh->max_pins = max_pins;
    sh->slot_bytes = slot_bytes;
    sh->slot_stride = stride;
    sh->segment_bytes = total;
    sh->off_desc = off_desc;
    sh->off_seqslot = off_seqslot;
    sh->off_done = off_done;
    sh->off_data = off_data;
    for (uint32_t g = 0; g < n_groups; g++) {
        sh->groups[g].kind = groups[g].kind;
        memcpy(sh->groups[g].name, groups[g].name, sizeof sh->groups[g].name);
        sh->groups[g].name[SN_RING_GROUP_NAME_BYTES - 1] = 0;
        sh->n_work += groups[g].kind == SN_GROUP_WORK;
    }
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&sh->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    atomic_store(&sh->producer_pid, (int32_t)getpid());
    atomic_store(&sh->state, SN_RING_STATE_OPEN);
    atomic_thread_fence(memory_order_seq_cst);
    sh->magic = SN_RING_MAGIC; /* last: an attacher that sees the magic sees a whole ring */

    sn_ring *r = calloc(1, sizeof *r);
    if (!r) {
        munmap(sh, total);
        shm_unlink(shm_name);
        return SN_RING_ESYS;
    }
    r->sh = sh;
    r->map_bytes = total;
    r->creator = 1;
    r->spin_ns = DEFAULT_SPIN_NS;
    snprintf(r->name, sizeof r->name, "%s", shm_name);
    *out = r;
    return SN_RING_OK;
}

int sn_ring_attach(sn_ring **out, const char *name, uint32_t expect_window, uint64_t expect_slot_bytes) {
    char shm_name[SN_RING_NAME_MAX + 16];
    int rc = make_shm_name(shm_name, sizeof shm_name, name);
    if (rc) return rc;
    int fd = shm_open(shm_name, O_RDWR, 0);
    if (fd < 0) return errno == ENOENT ? SN_RING_ENOENT : SN_RING_ESYS;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return SN_RING_ESYS;
    }
    if ((size_t)st.st_size < sizeof(shared_t)) { /* created, not yet sized */
        close(fd);
        return st.st_size == 0 ? SN_RING_ENOTREADY : SN_RING_EVERSION;
    }
    shared_t *sh = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (sh == MAP_FAILED) return SN_RING_ESYS;
    rc = SN_RING_OK;
    if (__atomic_load_n(&sh->magic, __ATOMIC_ACQUIRE) == 0)
        rc = SN_RING_ENOTREADY; /* sized, not yet initialised: the magic is written last */
    else if (sh->magic != SN_RING_MAGIC || sh->version != SN_RING_VERSION ||
             sh->segment_bytes != (uint64_t)st.st_size)
        rc = SN_RING_EVERSION;
    else if ((expect_window && expect_window != sh->n_window) ||
             (expect_slot_bytes && expect_slot_bytes != sh->slot_bytes))
        rc = SN_RING_EGEOMETRY;
    sn_ring *r = rc ? NULL : calloc(1, sizeof *r);
    if (rc == SN_RING_OK && !r) rc = SN_RING_ESYS;
    if (rc) {
        munmap(sh, (size_t)st.st_size);
        return rc;
    }
    populate(sh, (size_t)st.st_size);
    r->sh = sh;
    r->map_bytes = (size_t)st.st_size;
    r->spin_ns = DEFAULT_SPIN_NS;
    snprintf(r->name, sizeof r->name, "%s", shm_name);
    *out = r;
    return SN_RING_OK;
}

void sn_ring_shutdown(sn_ring *r) {
    atomic_store(&r->shutdown, 1);
    futex_wake(&r->sh->pub_futex);
    futex_wake(&r->sh->free_futex);
}

void sn_ring_end(sn_ring *r) {
    shared_t *sh = r->sh;
    if (!r->creator || r->ended) return;
    r->ended = 1;
    atomic_store(&sh->state, SN_RING_STATE_CLOSED);
    atomic_fetch_add(&sh->pub_futex, 1);
    futex_wake(&sh->pub_futex);
    shm_unlink(r->name);
}

void sn_ring_close(sn_ring *r) {
    if (!r) return;
    sn_ring_end(r);
    munmap(r->sh, r->map_bytes);
    free(r);
}

int sn_ring_unlink(const char *name) {
    char shm_name[SN_RING_NAME_MAX + 16];
    int rc = make_shm_name(shm_name, sizeof shm_name, name);
    if (rc) return rc;
    if (shm_unlink(shm_name) != 0) return errno == ENOENT ? SN_RING_ENOENT : SN_RING_ESYS;
    return SN_RING_OK;
}

void sn_ring_set_spin(sn_ring *r, int64_t spin_ns) { r->spin_ns = spin_ns < 0 ? 0 : spin_ns; }

uint32_t sn_ring_n_slots(const sn_ring *r) { return r->sh->n_slots; }
uint32_t sn_ring_n_window(const sn_ring *r) { return r->sh->n_window; }
uint64_t sn_ring_slot_bytes(const sn_ring *r) { return r->sh->slot_bytes; }

uint8_t *sn_ring_slot_ptr(const sn_ring *r, uint32_t slot) {
    return (uint8_t *)r->sh + r->sh->off_data + (uint64_t)slot * r->sh->slot_stride;
}

int sn_ring_group_index(const sn_ring *r, const char *name, uint32_t *kind) {
    for (uint32_t g = 0; g < r->sh->n_groups; g++) {
        if (strncmp(r->sh->groups[g].name, name, SN_RING_GROUP_NAME_BYTES - 1) == 0) {
            if (kind) *kind = r->sh->groups[g].kind;
            return (int)g;
        }
    }
    return SN_RING_EINVAL;
}

/* ---- producer ----------------------------------------------------------------------------- */

static int window_open(const shared_t *sh, uint64_t p) {
    for (uint32_t g = 0; g < sh->n_groups; g++) {
        if (sh->groups[g].kind != SN_GROUP_WORK) continue;
        if (p - atomic_load_explicit(&sh->groups[g].tail, memory_order_acquire) >= sh->n_window)
            return 0;
    }
    return 1;
}

static int claim_slot(desc_t *d, uint32_t k) {
    uint32_t expected = 0;
    return atomic_load_explicit(&d[k].refs, memory_order_relaxed) == 0 &&
           atomic_compare_exchange_strong_explicit(&d[k].refs, &expected, SN_RING_WRITING,
                                                   memory_order_acquire, memory_order_relaxed);
}

/* The slot freed last first (its memory is still in cache), then the lowest free one, so a
   producer that consumers keep up with cycles through as few slots as possible. */
static int try_claim_ahead(shared_t *sh, uint32_t ahead, uint32_t *slot) {
    uint64_t p = atomic_load_explicit(&sh->publish_seq, memory_order_relaxed) + ahead;
    if (!window_open(sh, p)) return 0;
    desc_t *d = descs(sh);
    uint32_t hint = atomic_load_explicit(&sh->last_freed, memory_order_relaxed);
    if (hint && claim_slot(d, hint - 1)) {
        *slot = hint - 1;
        return 1;
    }
    for (uint32_t k = 0; k < sh->n_slots; k++) {
        if (claim_slot(d, k)) {
            *slot = k;
            return 1;
        }
    }
    return 0;
}

static int try_claim(shared_t *sh, uint32_t *slot) { return try_claim_ahead(sh, 0, slot); }

int sn_ring_claim(sn_ring *r, int64_t timeout_ns, uint32_t *slot) {
    shared_t *sh = r->sh;
    if (try_claim(sh, slot)) return SN_RING_OK;
    if (timeout_ns == 0) return SN_RING_ETIMEDOUT;
    for (int64_t spin_end = now_ns() + r->spin_ns; now_ns() < spin_end;) {
        for (int i = 0; i < 64; i++) cpu_relax();
        if (try_claim(sh, slot)) return SN_RING_OK;
    }
    atomic_fetch_add_explicit(&sh->producer_waits, 1, memory_order_relaxed);
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : now_ns() + timeout_ns;
    for (;;) {
        if (atomic_load(&r->shutdown)) return SN_RING_ESHUTDOWN;
        uint32_t v = atomic_load_explicit(&sh->free_futex, memory_order_seq_cst);
        atomic_fetch_add_explicit(&sh->free_waiters, 1, memory_order_seq_cst);
        int ok = try_claim(sh, slot);
        int64_t t = now_ns();
        if (!ok && t < deadline) {
            int64_t left = deadline - t;
            futex_wait(&sh->free_futex, v, left < SLICE_NS ? left : SLICE_NS);
        }
        atomic_fetch_sub_explicit(&sh->free_waiters, 1, memory_order_seq_cst);
        if (ok || try_claim(sh, slot)) return SN_RING_OK;
        t = now_ns();
        maybe_reap(r, t); /* a stalled ring may be held by a dead member */
        if (try_claim(sh, slot)) return SN_RING_OK;
        if (t >= deadline) return SN_RING_ETIMEDOUT;
    }
}

int sn_ring_claim_n(sn_ring *r, uint32_t max, int64_t timeout_ns, uint32_t *slots) {
    if (max == 0) return SN_RING_EINVAL;
    int rc = sn_ring_claim(r, timeout_ns, &slots[0]);
    if (rc) return rc;
    uint32_t n = 1;
    while (n < max && try_claim_ahead(r->sh, n, &slots[n])) n++;
    return (int)n;
}

int sn_ring_publish_n(sn_ring *r, const uint32_t *slots, uint32_t n, uint64_t *first_seq) {
    shared_t *sh = r->sh;
    desc_t *d = descs(sh);
    for (uint32_t i = 0; i < n; i++)
        if (slots[i] >= sh->n_slots ||
            atomic_load_explicit(&d[slots[i]].refs, memory_order_relaxed) != SN_RING_WRITING)
            return SN_RING_EINVAL;
    uint64_t s = atomic_load_explicit(&sh->publish_seq, memory_order_relaxed);
    for (uint32_t i = 0; i < n; i++) {
        atomic_store_explicit(&d[slots[i]].seq, s + i, memory_order_relaxed);
        atomic_store_explicit(&seq_slot(sh)[(s + i) % sh->n_window], slots[i], memory_order_relaxed);
        atomic_store_explicit(&d[slots[i]].refs, sh->n_work, memory_order_release);
    }
    /* One store makes the whole batch visible, one wake tells the consumers. */
    atomic_store_explicit(&sh->publish_seq, s + n, memory_order_seq_cst);
    atomic_fetch_add_explicit(&sh->pub_futex, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&sh->pub_waiters, memory_order_seq_cst)) futex_wake(&sh->pub_futex);
    if (first_seq) *first_seq = s;
    return SN_RING_OK;
}

int sn_ring_try_claim(sn_ring *r, uint32_t outstanding, uint32_t *slot) {
    return try_claim_ahead(r->sh, outstanding, slot) ? SN_RING_OK : SN_RING_ETIMEDOUT;
}

int sn_ring_unclaim(sn_ring *r, uint32_t slot) {
    shared_t *sh = r->sh;
    if (slot >= sh->n_slots) return SN_RING_EINVAL;
    uint32_t expected = SN_RING_WRITING;
    if (!atomic_compare_exchange_strong(&descs(sh)[slot].refs, &expected, 0)) return SN_RING_EINVAL;
    return SN_RING_OK;
}

int sn_ring_publish(sn_ring *r, uint32_t slot, uint64_t *seq) {
    return sn_ring_publish_n(r, &slot, 1, seq);
}

/* ---- consumers ---------------------------------------------------------------------------- */

int sn_ring_join(sn_ring *r, uint32_t group, uint32_t *member) {
    shared_t *sh = r->sh;
    if (group >= sh->n_groups) return SN_RING_EINVAL;
    group_t *g = &sh->groups[group];
    int rc = SN_RING_EBUSY;
    lock(sh);
    for (uint32_t m = 0; m < SN_RING_MAX_MEMBERS; m++) {
        if (atomic_load(&g->members[m].pid) != 0) continue;
        if (g->kind == SN_GROUP_LATEST) {
            if (atomic_load(&sh->pins) >= sh->max_pins) break;
            atomic_fetch_add(&sh->pins, 1);
        }
        member_t *mem = &g->members[m];
        atomic_store(&mem->held, 0);
        atomic_store(&mem->lo, 0);
        atomic_store(&mem->hi, 0);
        atomic_store(&mem->pinned, 0);
        /* A late latest member starts at the newest frame, not at the ring's first. */
        atomic_store(&mem->last, atomic_load(&sh->publish_seq));
        atomic_store(&mem->pid, (int32_t)getpid());
        *member = m;
        rc = SN_RING_OK;
        break;
    }
    unlock(sh);
    return rc;
}

void sn_ring_leave(sn_ring *r, uint32_t group, uint32_t member) {
    shared_t *sh = r->sh;
    if (group >= sh->n_groups || member >= SN_RING_MAX_MEMBERS) return;
    group_t *g = &sh->groups[group];
    member_t *mem = &g->members[member];
    lock(sh);
    if (atomic_load(&mem->pid) == (int32_t)getpid()) {
        uint32_t pinned = atomic_exchange(&mem->pinned, 0);
        if (pinned) atomic_fetch_sub(&descs(sh)[pinned - 1].refs, 1);
        if (g->kind == SN_GROUP_LATEST) atomic_fetch_sub(&sh->pins, 1);
        /* Frames still held go back to the group, as if this member had died. */
        atomic_store(&mem->pid, 0);
    }
    unlock(sh);
    if (g->kind == SN_GROUP_WORK) sn_ring_reap(r);
    wake_producer(sh);
}

static int end_of_stream(sn_ring *r) {
    shared_t *sh = r->sh;
    uint32_t st = atomic_load(&sh->state);
    if (st == SN_RING_STATE_OPEN && !pid_alive(atomic_load(&sh->producer_pid))) {
        uint32_t open = SN_RING_STATE_OPEN;
        atomic_compare_exchange_strong(&sh->state, &open, SN_RING_STATE_DEAD);
        st = atomic_load(&sh->state);
    }
    if (st == SN_RING_STATE_CLOSED) return SN_RING_ECLOSED;
    return st == SN_RING_STATE_DEAD ? SN_RING_EDEAD : SN_RING_OK;
}

static int pop_redelivery(shared_t *sh, group_t *g, member_t *mem, uint64_t *seq) {
    int got = 0;
    lock(sh);
    uint32_t n = atomic_load(&g->n_redeliver);
    if (n > 0) {
        *seq = g->redeliver[n - 1];
        atomic_store(&mem->lo, *seq);
        atomic_store(&mem->hi, *seq + 1);
        atomic_store(&g->n_redeliver, n - 1);
        got = 1;
    }
    unlock(sh);
    return got;
}

/* One non-blocking attempt; returns frames taken (>0), 0 if none is there. */
static int try_acquire_work(shared_t *sh, group_t *g, member_t *mem, uint32_t max, uint32_t *slots,
                            uint64_t *seqs) {
    if (atomic_load_explicit(&g->n_redeliver, memory_order_acquire) &&
        pop_redelivery(sh, g, mem, &seqs[0])) {
        slots[0] = atomic_load(&seq_slot(sh)[seqs[0] % sh->n_window]);
        return 1;
    }
    for (;;) {
        uint64_t s = atomic_load_explicit(&g->next_seq, memory_order_acquire);
        uint64_t p = atomic_load_explicit(&sh->publish_seq, memory_order_acquire);
        if (s >= p) return 0;
        uint64_t n = p - s < max ? p - s : max;
        /* Say what we may hold before taking it, so a reaper never mistakes it for orphaned. */
        atomic_store_explicit(&mem->lo, s, memory_order_seq_cst);
        atomic_store_explicit(&mem->hi, s + n, memory_order_seq_cst);
        if (atomic_compare_exchange_weak_explicit(&g->next_seq, &s, s + n, memory_order_seq_cst,
                                                  memory_order_relaxed)) {
            _Atomic uint32_t *ss = seq_slot(sh);
            for (uint64_t i = 0; i < n; i++) {
                seqs[i] = s + i;
                slots[i] = atomic_load_explicit(&ss[(s + i) % sh->n_window], memory_order_relaxed);
            }
            return (int)n;
        }
    }
}

static int try_acquire_latest(shared_t *sh, member_t *mem, uint32_t *slots, uint64_t *seqs,
                              group_t *g) {
    desc_t *d = descs(sh);
    for (;;) {
        uint64_t p = atomic_load_explicit(&sh->publish_seq, memory_order_acquire);
        uint64_t last = atomic_load_explicit(&mem->last, memory_order_relaxed);
        if (p <= last) return 0;
        uint64_t s = p - 1;
        uint32_t k = atomic_load_explicit(&seq_slot(sh)[s % sh->n_window], memory_order_relaxed);
        uint32_t refs = atomic_load_explicit(&d[k].refs, memory_order_acquire);
        if (refs & SN_RING_WRITING) continue; /* being rewritten: a newer frame is coming */
        if (!atomic_compare_exchange_weak_explicit(&d[k].refs, &refs, refs + 1,
                                                   memory_order_acquire, memory_order_relaxed))
            continue;
        if (atomic_load_explicit(&d[k].seq, memory_order_acquire) != s) { /* recycled meanwhile */
            atomic_fetch_sub_explicit(&d[k].refs, 1, memory_order_release);
            continue;
        }
        atomic_store(&mem->pinned, k + 1);
        atomic_fetch_add_explicit(&g->skipped, s - last, memory_order_relaxed);
        atomic_store(&mem->last, s + 1);
        slots[0] = k;
        seqs[0] = s;
        return 1;
    }
}

int sn_ring_acquire(sn_ring *r, uint32_t group, uint32_t member, uint32_t max, int64_t timeout_ns,
                    uint32_t *slots, uint64_t *seqs) {
    shared_t *sh = r->sh;
    if (group >= sh->n_groups || member >= SN_RING_MAX_MEMBERS || max == 0) return SN_RING_EINVAL;
    group_t *g = &sh->groups[group];
    member_t *mem = &g->members[member];
    if (atomic_load_explicit(&mem->pid, memory_order_relaxed) != (int32_t)getpid()) return SN_RING_EINVAL;
    if (atomic_load_explicit(&mem->held, memory_order_relaxed)) return SN_RING_EBUSY;
    if (max > SN_RING_MAX_BATCH) max = SN_RING_MAX_BATCH;
    int latest = g->kind == SN_GROUP_LATEST;
    int n = latest ? try_acquire_latest(sh, mem, slots, seqs, g)
                   : try_acquire_work(sh, g, mem, max, slots, seqs);
    if (n == 0 && timeout_ns == 0) return SN_RING_ETIMEDOUT;
    for (int64_t spin_end = now_ns() + r->spin_ns; n == 0 && now_ns() < spin_end;) {
        for (int i = 0; i < 64; i++) cpu_relax();
        n = latest ? try_acquire_latest(sh, mem, slots, seqs, g)
                   : try_acquire_work(sh, g, mem, max, slots, seqs);
    }
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : now_ns() + timeout_ns;
    while (n == 0) {
        int eos = end_of_stream(r);
        if (eos) {
            if (!latest) sn_ring_reap(r); /* frames of dead members are still ours to take */
            n = latest ? try_acquire_latest(sh, mem, slots, seqs, g)
                       : try_acquire_work(sh, g, mem, max, slots, seqs);
            if (n) break;
            return eos;
        }
        if (atomic_load(&r->shutdown)) return SN_RING_ESHUTDOWN;
        int64_t t = now_ns();
        maybe_reap(r, t);
        if (t >= deadline) {
            n = latest ? try_acquire_latest(sh, mem, slots, seqs, g)
                       : try_acquire_work(sh, g, mem, max, slots, seqs);
            if (n) break;
            return SN_RING_ETIMEDOUT;
        }
        uint32_t v = atomic_load_explicit(&sh->pub_futex, memory_order_seq_cst);
        atomic_fetch_add_explicit(&sh->pub_waiters, 1, memory_order_seq_cst);
        n = latest ? try_acquire_latest(sh, mem, slots, seqs, g)
                   : try_acquire_work(sh, g, mem, max, slots, seqs);
        if (n == 0) {
            int64_t left = deadline - t;
            futex_wait(&sh->pub_futex, v, left < SLICE_NS ? left : SLICE_NS);
            n = latest ? try_acquire_latest(sh, mem, slots, seqs, g)
                       : try_acquire_work(sh, g, mem, max, slots, seqs);
        }
        atomic_fetch_sub_explicit(&sh->pub_waiters, 1, memory_order_seq_cst);
    }
    atomic_store_explicit(&mem->held, (uint32_t)n, memory_order_relaxed);
    return n;
}

int sn_ring_release(sn_ring *r, uint32_t group, uint32_t member, uint64_t seq, uint32_t slot) {
    shared_t *sh = r->sh;
    if (group >= sh->n_groups || member >= SN_RING_MAX_MEMBERS || slot >= sh->n_slots)
        return SN_RING_EINVAL;
    group_t *g = &sh->groups[group];
    member_t *mem = &g->members[member];
    if (atomic_load(&mem->held) == 0) return SN_RING_EINVAL;
    desc_t *d = &descs(sh)[slot];
    if (g->kind == SN_GROUP_LATEST) {
        if (atomic_load(&mem->pinned) != slot + 1) return SN_RING_EINVAL;
        atomic_store(&mem->pinned, 0);
        atomic_store(&mem->held, 0);
        atomic_fetch_add_explicit(&g->consumed, 1, memory_order_relaxed);
        if (atomic_fetch_sub_explicit(&d->refs, 1, memory_order_release) == 1) {
            atomic_store_explicit(&sh->last_freed, slot + 1, memory_order_relaxed);
            wake_producer(sh);
        }
        return SN_RING_OK;
    }
    _Atomic uint64_t *done = done_of(sh, group);
    uint32_t idx = (uint32_t)(seq % sh->n_window);
    if (seq < atomic_load(&mem->lo) || seq >= atomic_load(&mem->hi) ||
        atomic_load(&done[idx]) == seq + 1 || atomic_load(&seq_slot(sh)[idx]) != slot)
        return SN_RING_EINVAL;
    atomic_store_explicit(&done[idx], seq + 1, memory_order_release);
    if (atomic_fetch_sub_explicit(&d->refs, 1, memory_order_release) == 1)
        atomic_store_explicit(&sh->last_freed, slot + 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&mem->held, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&g->consumed, 1, memory_order_relaxed);
    /* Move the group's tail past every contiguous released seq. */
    uint64_t t = atomic_load_explicit(&g->tail, memory_order_acquire);
    while (t < atomic_load_explicit(&g->next_seq, memory_order_acquire) &&
           atomic_load_explicit(&done[t % sh->n_window], memory_order_acquire) == t + 1) {
        if (atomic_compare_exchange_weak_explicit(&g->tail, &t, t + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            t++;
    }
    wake_producer(sh);
    return SN_RING_OK;
}

int sn_ring_release_n(sn_ring *r, uint32_t group, uint32_t member, const uint64_t *seqs,
                      const uint32_t *slots, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        int rc = sn_ring_release(r, group, member, seqs[i], slots[i]);
        if (rc) return rc;
    }
    return SN_RING_OK;
}

/* ---- crash recovery ----------------------------------------------------------------------- */

int sn_ring_reap(sn_ring *r) {
    shared_t *sh = r->sh;
    int found = 0;
    lock(sh);
    for (uint32_t gi = 0; gi < sh->n_groups; gi++) {
        group_t *g = &sh->groups[gi];
        int alive[SN_RING_MAX_MEMBERS];
        for (uint32_t m = 0; m < SN_RING_MAX_MEMBERS; m++) {
            member_t *mem = &g->members[m];
            int32_t pid = atomic_load(&mem->pid);
            alive[m] = pid != 0 && pid_alive(pid);
            if (pid != 0 && !alive[m]) {
                uint32_t pinned = atomic_exchange(&mem->pinned, 0);
                if (pinned) atomic_fetch_sub(&descs(sh)[pinned - 1].refs, 1);
                if (g->kind == SN_GROUP_LATEST) atomic_fetch_sub(&sh->pins, 1);
                atomic_store(&mem->pid, 0);
                atomic_store(&mem->held, 0);
            }
        }
        if (g->kind != SN_GROUP_WORK) continue;
        _Atomic uint64_t *done = done_of(sh, gi);
        uint64_t end = atomic_load(&g->next_seq);
        for (uint64_t s = atomic_load(&g->tail); s < end; s++) {
            if (atomic_load(&done[s % sh->n_window]) == s + 1) continue;
            int covered = 0;
            for (uint32_t m = 0; m < SN_RING_MAX_MEMBERS && !covered; m++)
                covered = alive[m] && atomic_load(&g->members[m].lo) <= s &&
                          s < atomic_load(&g->members[m].hi);
            uint32_t n = atomic_load(&g->n_redeliver);
            for (uint32_t i = 0; i < n && !covered; i++) covered = g->redeliver[i] == s;
            if (covered || n >= REDELIVER_MAX) continue;
            g->redeliver[n] = s;
            atomic_store(&g->n_redeliver, n + 1);
            atomic_fetch_add(&g->redelivered, 1);
            found++;
        }
    }
    unlock(sh);
    if (found) {
        atomic_fetch_add(&sh->pub_futex, 1);
        futex_wake(&sh->pub_futex);
    }
    return found;
}

void sn_ring_stats_get(const sn_ring *r, sn_ring_stats *out) {
    const shared_t *sh = r->sh;
    memset(out, 0, sizeof *out);
    out->published = atomic_load(&sh->publish_seq);
    out->producer_waits = atomic_load(&sh->producer_waits);
    out->n_groups = sh->n_groups;
    out->state = atomic_load(&sh->state);
    uint64_t min_tail = out->published;
    for (uint32_t g = 0; g < sh->n_groups; g++) {
        const group_t *gr = &sh->groups[g];
        out->consumed[g] = atomic_load(&gr->consumed);
        out->skipped[g] = atomic_load(&gr->skipped);
        out->redelivered[g] = atomic_load(&gr->redelivered);
        if (gr->kind == SN_GROUP_WORK && atomic_load(&gr->tail) < min_tail)
            min_tail = atomic_load(&gr->tail);
    }
    out->occupancy = out->published - min_tail;
}

const char *sn_ring_strerror(int code) {
    switch (code) {
    case SN_RING_OK: return "ok";
    case SN_RING_ETIMEDOUT: return "timed out";
    case SN_RING_ECLOSED: return "end of stream: the producer closed the ring";
    case SN_RING_EDEAD: return "end of stream: the producer process died";
    case SN_RING_EINUSE: return "a live producer already owns a ring of that name";
    case SN_RING_ENOENT: return "no ring of that name (is the producer running?)";
    case SN_RING_EGEOMETRY: return "the ring's geometry differs from the expected one";
    case SN_RING_EVERSION: return "not a stream-node ring of this version";
    case SN_RING_ENOTREADY: return "the ring is still being made by its producer";
    case SN_RING_ENOSPC: return "no room in /dev/shm for the ring (make it smaller or free space)";
    case SN_RING_ETOOBIG: return "frame larger than a ring slot";
    case SN_RING_EBUSY: return "busy: release held frames first, or no free member entry";
    case SN_RING_EINVAL: return "invalid argument";
    case SN_RING_ESYS: return "system call failed";
    case SN_RING_ESHUTDOWN: return "shut down";
    default: return "unknown error code";
    }
}
