/* stream-node UDP receiver: see udp_receiver.h for what it does and why. */
#define _GNU_SOURCE
#include "stream_node/udp_receiver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "stream_node/frame_header.h"

#define MAX_ROWS_PER_PACKET 32 /* iovecs per message: header + one per module row */

typedef struct sls_header {
    uint64_t frame;
    uint32_t exp_length;
    uint32_t packet;
    uint64_t bunch_id;
    uint64_t timestamp;
    uint16_t module_id, row, column, reserved;
    uint32_t debug;
    uint16_t round_robin;
    uint8_t detector_type, header_version;
} __attribute__((packed)) sls_header;
_Static_assert(sizeof(sls_header) == SN_UDP_HEADER_BYTES, "SLS header is 48 bytes");

/* LOST: packets came, no slot was free. DONE: published or reported, kept until `low` passes
   it, so its late packets are known as late and it is not taken for a frame that never came. */
enum { E_FREE = 0, E_OPEN = 1, E_LOST = 2, E_DONE = 3 };

typedef struct entry {
    uint64_t frame;
    uint32_t state, slot, parts, pins, closing;
    int64_t first_ns;      /* monotonic time of its first packet (frame_timeout counts from it) */
    int64_t realtime_ns;   /* wall clock of its first packet: the frame's timestamp */
    uint8_t *bits;         /* received bitmap: module * ppf + packet */
} entry;

typedef struct module {
    struct sn_udp_receiver *r;
    uint32_t index;
    int fd;
    pthread_t thread;
    int known;                 /* a valid packet arrived: position and prediction are set */
    uint32_t grid_row, grid_col;
    uint64_t next_frame;       /* predicted next packet */
    uint32_t next_packet;
    uint64_t last_frame;       /* highest frame number this module sent (restart detection) */
    struct mmsghdr *msgs;
    struct iovec *iovs;        /* batch * (1 + rows) */
    uint8_t *headers;          /* batch * 48 */
    uint8_t *scratch;          /* batch * payload: where unpredictable packets land */
    uint8_t *stage;            /* batch * payload: moves go through here (no overlap) */
    entry **pinned;            /* frames this batch receives into */
    uint32_t n_pinned;
    sn_udp_module_stats st;
} module;

struct sn_udp_receiver {
    sn_udp_config cfg;
    sn_ring *ring;
    pthread_mutex_t lock;
    pthread_cond_t freed;      /* an entry was released (a thread may wait for its index) */
    atomic_int stop;
    int started_threads;
    uint32_t rows_per_packet, iov_per_msg, table_size, bitmap_bytes, total_parts;
    uint64_t frame_bytes, row_bytes, image_row_bytes;
    entry *table;              /* table_size entries, frame % table_size */
    uint32_t claimed;          /* slots claimed, not published */
    int have_base, advancing, started;
    uint64_t base, low, highest;
    uint64_t frames_complete, frames_partial, frames_missing, frames_ring_full, events_lost;
    uint8_t *events;           /* queue of fixed-size records */
    uint32_t ev_head, ev_count, ev_bytes;
    int64_t rcvbuf_granted;
    module mods[SN_UDP_MAX_MODULES];
};

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int bit_get(const uint8_t *b, uint32_t k) { return (b[k >> 3] >> (k & 7)) & 1; }
static void bit_set(uint8_t *b, uint32_t k) { b[k >> 3] |= (uint8_t)(1u << (k & 7)); }

/* Where row `i` of packet `p` of a module at (grid_row, grid_col) lives in a frame's payload. */
static uint8_t *row_ptr(const struct sn_udp_receiver *r, uint8_t *payload, uint32_t grid_row,
                        uint32_t grid_col, uint32_t p, uint32_t i) {
    const sn_udp_geometry *g = &r->cfg.geo;
    uint64_t image_row = (uint64_t)grid_row * g->module_rows + (uint64_t)p * r->rows_per_packet + i;
    return payload + image_row * r->image_row_bytes + (uint64_t)grid_col * r->row_bytes;
}

static uint8_t *slot_payload(const struct sn_udp_receiver *r, uint32_t slot) {
    return sn_ring_slot_ptr(r->ring, slot) + SN_RING_PAYLOAD_OFFSET;
}

/* ---- events ------------------------------------------------------------------------------- */

static void push_event(struct sn_udp_receiver *r, uint64_t frame, uint32_t kind, uint32_t parts,
                       const uint8_t *bits) {
    if (r->ev_count == r->cfg.max_events) {
        r->events_lost++;
        return;
    }
    uint32_t at = (r->ev_head + r->ev_count) % r->cfg.max_events;
    uint8_t *rec = r->events + (uint64_t)at * r->ev_bytes;
    sn_udp_event ev = {frame, kind, parts};
    memcpy(rec, &ev, sizeof ev);
    if (bits)
        for (uint32_t k = 0; k < r->bitmap_bytes; k++) rec[sizeof ev + k] = (uint8_t)~bits[k];
    else
        memset(rec + sizeof ev, 0xff, r->bitmap_bytes);
    if (r->total_parts & 7) /* bits past the last packet are not packets */
        rec[sizeof ev + r->bitmap_bytes - 1] &= (uint8_t)((1u << (r->total_parts & 7)) - 1);
    r->ev_count++;
}

/* ---- frames ------------------------------------------------------------------------------- */

static void fill_missing(struct sn_udp_receiver *r, entry *e) {
    const sn_udp_geometry *g = &r->cfg.geo;
    uint8_t *payload = slot_payload(r, e->slot);
    uint32_t ppf = g->packets_per_frame;
    for (uint32_t k = 0; k < r->total_parts; k++) {
        if (bit_get(e->bits, k)) continue;
        /* A module that never sent has no known place: its grid position is its index. */
        module *m = &r->mods[k / ppf];
        uint32_t gr = m->known ? m->grid_row : (k / ppf) / r->cfg.grid_cols;
        uint32_t gc = m->known ? m->grid_col : (k / ppf) % r->cfg.grid_cols;
        for (uint32_t i = 0; i < r->rows_per_packet; i++) {
            uint8_t *row = row_ptr(r, payload, gr, gc, k % ppf, i);
            switch (g->bytes_per_pixel) {
            case 1: memset(row, (int)(r->cfg.fill & 0xff), r->row_bytes); break;
            case 2:
                for (uint64_t j = 0; j < r->row_bytes / 2; j++) ((uint16_t *)row)[j] = (uint16_t)r->cfg.fill;
                break;
            default:
                for (uint64_t j = 0; j < r->row_bytes / 4; j++) ((uint32_t *)row)[j] = r->cfg.fill;
            }
        }
    }
}

static void report_missing(struct sn_udp_receiver *r, uint64_t first, uint64_t count) {
    while (count) { /* one record per run of consecutive frames */
        uint32_t n = count > 0xffffffffu ? 0xffffffffu : (uint32_t)count;
        r->frames_missing += n;
        push_event(r, first, SN_UDP_EV_MISSING, n, NULL);
        first += n;
        count -= n;
    }
}

static void release_entry(struct sn_udp_receiver *r, entry *e) {
    e->state = E_FREE;
    e->closing = 0;
    e->parts = 0;
    pthread_cond_broadcast(&r->freed);
}

static entry *lookup(struct sn_udp_receiver *r, uint64_t frame) {
    entry *e = &r->table[frame % r->table_size];
    return (e->state != E_FREE && e->frame == frame) ? e : NULL;
}

/* The frame is resolved: `low` moves past it and every resolved frame after it. */
static void resolved(struct sn_udp_receiver *r, entry *e) {
    if (e->frame < r->low) { /* `low` passed it while its last receive finished */
        release_entry(r, e);
        return;
    }
    e->state = E_DONE;
    if (r->advancing) return;
    entry *d;
    while ((d = lookup(r, r->low)) && d->state == E_DONE) {
        release_entry(r, d);
        r->low++;
    }
}

/* The frame leaves: published (complete or partial), or reported. Caller holds the lock, and
   no thread receives into it any more (pins == 0). */
static void finish(struct sn_udp_receiver *r, entry *e) {
    const sn_udp_geometry *g = &r->cfg.geo;
    if (e->state == E_LOST) {
        r->frames_ring_full++;
        push_event(r, e->frame, SN_UDP_EV_RING_FULL, e->parts, e->bits);
        resolved(r, e);
        return;
    }
    if (e->parts == 0) { /* opened ahead by prediction, no packet came */
        sn_ring_unclaim(r->ring, e->slot);
        r->claimed--;
        if (e->frame < r->highest) report_missing(r, e->frame, 1);
        resolved(r, e);
        return;
    }
    uint32_t flags = 0;
    if (e->parts < r->total_parts) {
        fill_missing(r, e);
        flags = SN_FLAG_PARTIAL;
        r->frames_partial++;
        push_event(r, e->frame, SN_UDP_EV_PARTIAL, e->parts, e->bits);
    } else {
        r->frames_complete++;
    }
    sn_frame_header h;
    memset(&h, 0, sizeof h);
    h.magic = SN_HEADER_MAGIC;
    h.version = SN_HEADER_VERSION;
    h.header_size = SN_HEADER_SIZE;
    h.msg_type = SN_MSG_FRAME;
    h.dtype = g->bytes_per_pixel == 1 ? SN_DTYPE_UINT8
            : g->bytes_per_pixel == 2 ? SN_DTYPE_UINT16 : SN_DTYPE_UINT32;
    h.encoding = SN_ENC_RAW;
    h.ndim = 2;
    h.flags = flags;
    h.run_id = r->cfg.run_id;
    h.frame_id = e->frame - r->base;
    h.shape[0] = r->cfg.grid_rows * g->module_rows;
    h.shape[1] = r->cfg.grid_cols * g->module_cols;
    h.payload_bytes = h.uncompressed_bytes = r->frame_bytes;
    h.timestamp_ns = (uint64_t)e->realtime_ns;
    h.parts = e->parts;
    sn_header_pack(&h, sn_ring_slot_ptr(r->ring, e->slot), SN_HEADER_SIZE);
    sn_ring_publish(r->ring, e->slot, NULL);
    r->claimed--;
    resolved(r, e);
}

static void close_entry(struct sn_udp_receiver *r, entry *e) {
    e->closing = 1;
    if (e->pins == 0) finish(r, e);
}

/* Resolve every frame below `new_low`: publish what is open, report what never came. */
static void advance_low(struct sn_udp_receiver *r, uint64_t new_low) {
    uint64_t run = 0, run_start = 0;
    r->advancing = 1;
    for (uint64_t f = r->low; f < new_low; f++) {
        entry *e = lookup(r, f);
        if (!e && f <= r->highest) {
            if (!run++) run_start = f;
            continue;
        }
        report_missing(r, run_start, run);
        run = 0;
        if (e && !e->closing && e->state != E_DONE) close_entry(r, e);
        if (e && e->state == E_DONE) release_entry(r, e);
    }
    report_missing(r, run_start, run);
    r->advancing = 0;
    if (new_low > r->low) r->low = new_low;
    entry *d;
    while ((d = lookup(r, r->low)) && d->state == E_DONE) {
        release_entry(r, d);
        r->low++;
    }
}

/* The entry of `frame`, opened (slot claimed) if needed; NULL if it cannot be (outside the
   window). A frame with no free slot gets a LOST entry: its packets are counted, not kept. */
static entry *open_frame(struct sn_udp_receiver *r, uint64_t frame, int64_t now) {
    if (frame < r->low || frame >= r->low + r->cfg.window) return NULL;
    if (r->cfg.n_frames && frame >= r->base + r->cfg.n_frames) return NULL;
    entry *e = lookup(r, frame);
    if (e) return (e->closing || e->state == E_DONE) ? NULL : e;
    e = &r->table[frame % r->table_size];
    /* Still held by an older frame some thread receives into: wait until it leaves. */
    while (e->state != E_FREE && !atomic_load(&r->stop)) pthread_cond_wait(&r->freed, &r->lock);
    if (e->state != E_FREE) return NULL;
    e->frame = frame;
    e->parts = e->pins = e->closing = 0;
    e->first_ns = now;
    e->realtime_ns = real_ns();
    memset(e->bits, 0, r->bitmap_bytes);
    if (sn_ring_try_claim(r->ring, r->claimed, &e->slot) == SN_RING_OK) {
        r->claimed++;
        e->state = E_OPEN;
    } else {
        e->state = E_LOST;
    }
    return e;
}

/* Frames whose first packet is older than the timeout are published as they are. */
static void expire(struct sn_udp_receiver *r, int64_t now) {
    uint64_t upto = r->low;
    for (uint64_t f = r->low; f < r->low + r->cfg.window && f <= r->highest; f++) {
        entry *e = lookup(r, f);
        if (e && e->parts && now - e->first_ns > r->cfg.frame_timeout_ns) upto = f + 1;
    }
    if (upto > r->low) advance_low(r, upto);
}

static void check_done(struct sn_udp_receiver *r) {
    if (r->cfg.n_frames && r->have_base && r->low >= r->base + r->cfg.n_frames)
        atomic_store(&r->stop, 1);
}

/* ---- one module's thread ------------------------------------------------------------------ */

static void pin(module *m, entry *e) {
    for (uint32_t i = 0; i < m->n_pinned; i++)
        if (m->pinned[i] == e) return;
    e->pins++;
    m->pinned[m->n_pinned++] = e;
}

/* Point each message's payload at where the packet after the previous one belongs. */
static void predict(module *m, uint32_t batch, int64_t now) {
    struct sn_udp_receiver *r = m->r;
    uint32_t rows = r->rows_per_packet, ppf = r->cfg.geo.packets_per_frame;
    uint64_t f = m->next_frame;
    uint32_t p = m->next_packet;
    m->n_pinned = 0;
    for (uint32_t i = 0; i < batch; i++) {
        struct iovec *iov = &m->iovs[(uint64_t)i * r->iov_per_msg];
        entry *e = (m->known || r->cfg.first_frame) ? open_frame(r, f, now) : NULL;
        uint32_t k = m->index * ppf + p;
        if (e && e->state == E_OPEN && !bit_get(e->bits, k)) {
            uint8_t *payload = slot_payload(r, e->slot);
            for (uint32_t j = 0; j < rows; j++)
                iov[1 + j] = (struct iovec){row_ptr(r, payload, m->grid_row, m->grid_col, p, j),
                                            r->row_bytes};
            m->msgs[i].msg_hdr.msg_iovlen = 1 + rows;
            pin(m, e);
        } else {
            iov[1] = (struct iovec){m->scratch + (uint64_t)i * r->cfg.geo.payload_bytes,
                                    r->cfg.geo.payload_bytes};
            m->msgs[i].msg_hdr.msg_iovlen = 2;
        }
        if (++p == ppf) {
            p = 0;
            f++;
        }
    }
}

static void unpin_all(module *m) {
    struct sn_udp_receiver *r = m->r;
    for (uint32_t i = 0; i < m->n_pinned; i++) {
        entry *e = m->pinned[i];
        if (--e->pins == 0 && e->closing) finish(r, e);
    }
    m->n_pinned = 0;
}

typedef struct move { uint32_t msg; entry *e; uint32_t packet; } move;

/* Place the batch's packets; caller holds the lock. */
static void process(module *m, int n, int64_t now) {
    struct sn_udp_receiver *r = m->r;
    const sn_udp_geometry *g = &r->cfg.geo;
    uint32_t ppf = g->packets_per_frame, rows = r->rows_per_packet;
    move moves[SN_UDP_MAX_BATCH];
    uint32_t n_moves = 0;
    for (int i = 0; i < n; i++) {
        sls_header h;
        memcpy(&h, m->headers + (uint64_t)i * SN_UDP_HEADER_BYTES, sizeof h);
        struct iovec *iov = &m->iovs[(uint64_t)i * r->iov_per_msg];
        if (m->msgs[i].msg_len != SN_UDP_HEADER_BYTES + g->payload_bytes ||
            (m->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || h.packet >= ppf) {
            m->st.malformed++;
            continue;
        }
        if (h.detector_type != g->detector_type || h.header_version != g->header_version) {
            m->st.foreign++;
            continue;
        }
        if (h.row >= r->cfg.grid_rows || h.column >= r->cfg.grid_cols) {
            m->st.unknown_module++;
            continue;
        }
        if (r->have_base && h.frame > r->highest + SN_UDP_MAX_JUMP) {
            m->st.foreign++; /* no detector skips that many: another sender, or garbage */
            continue;
        }
        if (!r->have_base) {
            r->have_base = 1;
            r->base = r->low = r->highest = h.frame;
        }
        r->started = 1;
        if (m->known && h.frame + 2ull * r->cfg.window < m->last_frame) {
            m->st.restarts++;
            push_event(r, h.frame, SN_UDP_EV_RESTART, m->index, NULL);
            m->last_frame = h.frame;
        }
        if (!m->known || h.frame > m->last_frame) m->last_frame = h.frame;
        m->known = 1;
        m->grid_row = h.row;
        m->grid_col = h.column;
        m->next_frame = h.frame + (h.packet + 1 == ppf);
        m->next_packet = (h.packet + 1) % ppf;
        if (h.frame < r->low) {
            m->st.late++;
            continue;
        }
        if (r->cfg.n_frames && h.frame >= r->base + r->cfg.n_frames) {
            m->st.beyond++;
            continue;
        }
        if (h.frame > r->highest) r->highest = h.frame;
        if (h.frame >= r->low + r->cfg.window) advance_low(r, h.frame - r->cfg.window + 1);
        entry *e = open_frame(r, h.frame, now);
        if (!e) {
            m->st.late++;
            continue;
        }
        uint32_t k = m->index * ppf + h.packet;
        if (bit_get(e->bits, k)) {
            m->st.duplicates++;
            continue;
        }
        bit_set(e->bits, k);
        if (e->parts++ == 0) { /* its clock starts with its first packet, not its opening */
            e->first_ns = now;
            e->realtime_ns = real_ns();
        }
        if (e->state == E_LOST) {
            m->st.ring_full++;
        } else {
            m->st.packets++;
            m->st.bytes += g->payload_bytes;
            uint8_t *want = row_ptr(r, slot_payload(r, e->slot), h.row, h.column, h.packet, 0);
            if (iov[1].iov_base != want) {
                pin(m, e); /* it must not be published before the move */
                moves[n_moves++] = (move){(uint32_t)i, e, h.packet};
            }
        }
        /* Complete: it leaves once this batch lets go of it (pins), moves included. */
        if (e->parts == r->total_parts) close_entry(r, e);
    }
    /* Misplaced payloads go through `stage` first: one may sit where another belongs. */
    for (uint32_t j = 0; j < n_moves; j++) {
        struct iovec *iov = &m->iovs[(uint64_t)moves[j].msg * r->iov_per_msg];
        uint8_t *dst = m->stage + (uint64_t)j * g->payload_bytes;
        for (uint32_t q = 1; q < m->msgs[moves[j].msg].msg_hdr.msg_iovlen; q++) {
            memcpy(dst, iov[q].iov_base, iov[q].iov_len);
            dst += iov[q].iov_len;
        }
    }
    for (uint32_t j = 0; j < n_moves; j++) {
        const uint8_t *src = m->stage + (uint64_t)j * g->payload_bytes;
        entry *e = moves[j].e;
        for (uint32_t q = 0; q < rows; q++)
            memcpy(row_ptr(r, slot_payload(r, e->slot), m->grid_row, m->grid_col, moves[j].packet, q),
                   src + (uint64_t)q * r->row_bytes, r->row_bytes);
    }
    m->st.moved += n_moves;
}

static void *module_main(void *arg) {
    module *m = arg;
    struct sn_udp_receiver *r = m->r;
    if (r->cfg.cpus[m->index] >= 0) { /* SN_UDP_NO_CPU (any negative): not pinned */
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(r->cfg.cpus[m->index], &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    uint32_t batch = r->cfg.batch;
    while (!atomic_load(&r->stop)) {
        pthread_mutex_lock(&r->lock);
        predict(m, batch, mono_ns());
        pthread_mutex_unlock(&r->lock);
        int n = recvmmsg(m->fd, m->msgs, batch, MSG_WAITFORONE, NULL);
        int64_t now = mono_ns();
        pthread_mutex_lock(&r->lock);
        if (n > 0) {
            m->st.batches++;
            process(m, n, now);
        }
        unpin_all(m);
        expire(r, now);
        check_done(r);
        pthread_mutex_unlock(&r->lock);
        /* A receiver faster than the sender would wake for every packet or two (each wake-up
           costs more than the packet): a short nap lets a batch gather in the socket buffer. */
        if (n > 0 && (uint32_t)n < batch / 4 && r->cfg.coalesce_ns > 0) {
            struct timespec ts = {0, (long)r->cfg.coalesce_ns};
            nanosleep(&ts, NULL);
        }
    }
    pthread_mutex_lock(&r->lock);
    pthread_cond_broadcast(&r->freed); /* a thread waiting for an entry must see the stop */
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static int module_socket(struct sn_udp_receiver *r, module *m) {
    m->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (m->fd < 0) return SN_UDP_ESYS;
    int size = (int)(r->cfg.rcvbuf_bytes > 0x3fffffff ? 0x3fffffff : r->cfg.rcvbuf_bytes);
    if (size > 0 && setsockopt(m->fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
        setsockopt(m->fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size); /* capped by rmem_max */
    int granted = 0;
    socklen_t len = sizeof granted;
    getsockopt(m->fd, SOL_SOCKET, SO_RCVBUF, &granted, &len);
    r->rcvbuf_granted = granted / 2; /* Linux reports twice what it counts as data */
    /* A bounded wait lets the thread expire frames and see stop while no packet comes. */
    int64_t t = r->cfg.frame_timeout_ns / 4;
    if (t > 5000000) t = 5000000;
    if (t < 100000) t = 100000;
    struct timeval tv = {0, (suseconds_t)(t / 1000)};
    setsockopt(m->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(r->cfg.ports[m->index])};
    if (inet_pton(AF_INET, r->cfg.host, &addr.sin_addr) != 1) {
        errno = EINVAL;
        return SN_UDP_EINVAL;
    }
    if (bind(m->fd, (struct sockaddr *)&addr, sizeof addr) != 0) return SN_UDP_ESYS;
    uint32_t b = r->cfg.batch, iovn = r->iov_per_msg;
    m->msgs = calloc(b, sizeof *m->msgs);
    m->iovs = calloc((uint64_t)b * iovn, sizeof *m->iovs);
    m->headers = calloc(b, SN_UDP_HEADER_BYTES);
    m->scratch = malloc((uint64_t)b * r->cfg.geo.payload_bytes);
    m->stage = malloc((uint64_t)b * r->cfg.geo.payload_bytes);
    m->pinned = calloc(b + 2, sizeof *m->pinned);
    if (!m->msgs || !m->iovs || !m->headers || !m->scratch || !m->stage || !m->pinned)
        return SN_UDP_ENOMEM;
    for (uint32_t i = 0; i < b; i++) {
        struct iovec *iov = &m->iovs[(uint64_t)i * iovn];
        iov[0] = (struct iovec){m->headers + (uint64_t)i * SN_UDP_HEADER_BYTES, SN_UDP_HEADER_BYTES};
        m->msgs[i].msg_hdr.msg_iov = iov;
        m->msgs[i].msg_hdr.msg_iovlen = 2;
    }
    return SN_UDP_OK;
}

int sn_udp_open(sn_udp_receiver **out, const sn_udp_config *cfg, sn_ring *ring) {
    const sn_udp_geometry *g = &cfg->geo;
    *out = NULL;
    if (cfg->n_modules == 0 || cfg->n_modules > SN_UDP_MAX_MODULES || g->packets_per_frame == 0 ||
        (g->bytes_per_pixel != 1 && g->bytes_per_pixel != 2 && g->bytes_per_pixel != 4) ||
        g->module_cols == 0 || g->payload_bytes % (g->module_cols * g->bytes_per_pixel) != 0 ||
        (uint64_t)g->payload_bytes * g->packets_per_frame !=
            (uint64_t)g->module_rows * g->module_cols * g->bytes_per_pixel ||
        cfg->grid_rows * cfg->grid_cols < cfg->n_modules || cfg->window == 0 ||
        cfg->batch == 0 || cfg->batch > SN_UDP_MAX_BATCH || cfg->max_events == 0)
        return SN_UDP_EINVAL;
    uint32_t rows = g->payload_bytes / (g->module_cols * g->bytes_per_pixel);
    if (rows > MAX_ROWS_PER_PACKET) return SN_UDP_EINVAL;
    struct sn_udp_receiver *r = calloc(1, sizeof *r);
    if (!r) return SN_UDP_ENOMEM;
    r->cfg = *cfg;
    r->ring = ring;
    r->rows_per_packet = rows;
    r->iov_per_msg = 1 + rows;
    r->row_bytes = (uint64_t)g->module_cols * g->bytes_per_pixel;
    r->image_row_bytes = r->row_bytes * cfg->grid_cols;
    r->frame_bytes = r->image_row_bytes * g->module_rows * cfg->grid_rows;
    r->total_parts = cfg->n_modules * g->packets_per_frame;
    r->bitmap_bytes = (r->total_parts + 7) / 8;
    r->ev_bytes = (uint32_t)sizeof(sn_udp_event) + ((r->bitmap_bytes + 7) & ~7u);
    r->table_size = 2 * cfg->window;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->freed, NULL);
    int rc = SN_UDP_ENOMEM;
    if (sn_ring_slot_bytes(ring) < r->frame_bytes || sn_ring_n_slots(ring) < cfg->window) {
        rc = SN_UDP_EINVAL;
        goto fail;
    }
    r->table = calloc(r->table_size, sizeof *r->table);
    r->events = calloc(cfg->max_events, r->ev_bytes);
    if (!r->table || !r->events) goto fail;
    for (uint32_t i = 0; i < r->table_size; i++)
        if (!(r->table[i].bits = calloc(1, r->bitmap_bytes))) goto fail;
    if (cfg->first_frame) { /* the run's first packet is known: predicted from the start */
        r->have_base = 1;
        r->base = r->low = r->highest = cfg->first_frame;
    }
    for (uint32_t i = 0; i < cfg->n_modules; i++) {
        module *m = &r->mods[i];
        m->r = r;
        m->index = i;
        m->fd = -1;
        m->grid_row = i / cfg->grid_cols; /* until its first packet says where it is */
        m->grid_col = i % cfg->grid_cols;
        m->next_frame = cfg->first_frame;
        if ((rc = module_socket(r, m)) != SN_UDP_OK) {
            int saved = errno;
            r->cfg.n_modules = i + 1;
            sn_udp_close(r);
            errno = saved;
            return rc;
        }
    }
    *out = r;
    return SN_UDP_OK;
fail:
    r->cfg.n_modules = 0;
    sn_udp_close(r);
    return rc;
}

int sn_udp_start(sn_udp_receiver *r) {
    if (r->started_threads) return SN_UDP_ESTATE;
    for (uint32_t i = 0; i < r->cfg.n_modules; i++) {
        if (pthread_create(&r->mods[i].thread, NULL, module_main, &r->mods[i]) != 0) {
            atomic_store(&r->stop, 1);
            for (uint32_t j = 0; j < i; j++) pthread_join(r->mods[j].thread, NULL);
            return SN_UDP_ESYS;
        }
        r->started_threads++;
    }
    return SN_UDP_OK;
}

int sn_udp_stop(sn_udp_receiver *r) {
    atomic_store(&r->stop, 1);
    for (int i = 0; i < r->started_threads; i++) pthread_join(r->mods[i].thread, NULL);
    r->started_threads = 0;
    pthread_mutex_lock(&r->lock);
    if (r->started) {
        uint64_t end = r->cfg.n_frames ? r->base + r->cfg.n_frames : r->highest + 1;
        if (r->cfg.n_frames && end > r->highest + 1) r->highest = end - 1; /* never came: missing */
        advance_low(r, end);
        /* Frames opened ahead of the last packet (prediction) go back unpublished. */
        for (uint32_t i = 0; i < r->table_size; i++) {
            entry *e = &r->table[i];
            if (e->state == E_OPEN || e->state == E_LOST) finish(r, e);
            if (e->state == E_DONE) release_entry(r, e);
        }
    }
    pthread_mutex_unlock(&r->lock);
    return SN_UDP_OK;
}

void sn_udp_stats_get(sn_udp_receiver *r, sn_udp_stats *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&r->lock);
    out->frames_complete = r->frames_complete;
    out->frames_partial = r->frames_partial;
    out->frames_missing = r->frames_missing;
    out->frames_ring_full = r->frames_ring_full;
    out->events_lost = r->events_lost;
    out->base = r->base;
    out->low = r->low;
    out->highest = r->highest;
    out->started = (uint32_t)r->started;
    out->done = r->cfg.n_frames && r->have_base && r->low >= r->base + r->cfg.n_frames;
    out->rcvbuf_granted = r->rcvbuf_granted;
    for (uint32_t i = 0; i < r->cfg.n_modules; i++) out->modules[i] = r->mods[i].st;
    pthread_mutex_unlock(&r->lock);
}

uint32_t sn_udp_event_bytes(const sn_udp_receiver *r) { return r->ev_bytes; }

int sn_udp_take_events(sn_udp_receiver *r, uint8_t *buf, uint32_t max) {
    pthread_mutex_lock(&r->lock);
    uint32_t n = r->ev_count < max ? r->ev_count : max;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t at = (r->ev_head + i) % r->cfg.max_events;
        memcpy(buf + (uint64_t)i * r->ev_bytes, r->events + (uint64_t)at * r->ev_bytes, r->ev_bytes);
    }
    r->ev_head = (r->ev_head + n) % r->cfg.max_events;
    r->ev_count -= n;
    pthread_mutex_unlock(&r->lock);
    return (int)n;
}

void sn_udp_close(sn_udp_receiver *r) {
    if (!r) return;
    if (r->started_threads) sn_udp_stop(r);
    for (uint32_t i = 0; i < r->cfg.n_modules; i++) {
        module *m = &r->mods[i];
        if (m->fd >= 0) close(m->fd);
        free(m->msgs);
        free(m->iovs);
        free(m->headers);
        free(m->scratch);
        free(m->stage);
        free(m->pinned);
    }
    if (r->table)
        for (uint32_t i = 0; i < r->table_size; i++) free(r->table[i].bits);
    free(r->table);
    free(r->events);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->freed);
    free(r);
}

const char *sn_udp_strerror(int code) {
    switch (code) {
    case SN_UDP_OK: return "ok";
    case SN_UDP_EINVAL: return "invalid receiver configuration";
    case SN_UDP_ESYS: return "system call failed";
    case SN_UDP_ENOMEM: return "out of memory";
    case SN_UDP_ESTATE: return "receiver already started";
    default: return "unknown error";
    }
}

/* ---- sender (tests and benchmarks) -------------------------------------------------------- */

int64_t sn_udp_send(const char *host, const uint16_t *ports, uint32_t n_modules,
                    const sn_udp_geometry *geo, const uint16_t *rows_cols, const uint8_t *images,
                    const uint32_t *sched_module, const uint64_t *sched_frame,
                    const uint32_t *sched_packet, uint64_t n, double rate_pps, int64_t sndbuf) {
    enum { B = 64 };
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return SN_UDP_ESYS;
    if (sndbuf > 0) {
        int size = (int)sndbuf;
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) != 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    }
    struct sockaddr_in addrs[SN_UDP_MAX_MODULES];
    for (uint32_t i = 0; i < n_modules && i < SN_UDP_MAX_MODULES; i++) {
        addrs[i] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(ports[i])};
        if (inet_pton(AF_INET, host, &addrs[i].sin_addr) != 1) {
            close(fd);
            return SN_UDP_EINVAL;
        }
    }
    uint64_t module_bytes = (uint64_t)geo->packets_per_frame * geo->payload_bytes;
    uint8_t(*hdrs)[SN_UDP_HEADER_BYTES] = calloc(B, SN_UDP_HEADER_BYTES);
    uint8_t(*stamps)[8] = calloc(B, 8);
    struct mmsghdr msgs[B];
    struct iovec iovs[B][3];
    if (!hdrs || !stamps) {
        close(fd);
        free(hdrs);
        free(stamps);
        return SN_UDP_ENOMEM;
    }
    int64_t t0 = mono_ns();
    uint64_t sent = 0;
    while (sent < n) {
        uint32_t b = (uint32_t)(n - sent < B ? n - sent : B);
        for (uint32_t i = 0; i < b; i++) {
            uint64_t row = sent + i;
            uint32_t mod = sched_module[row] % n_modules, p = sched_packet[row];
            sls_header h = {.frame = sched_frame[row], .packet = p, .module_id = (uint16_t)mod,
                            .row = rows_cols[2 * mod], .column = rows_cols[2 * mod + 1],
                            .detector_type = geo->detector_type,
                            .header_version = geo->header_version, .timestamp = (uint64_t)real_ns()};
            memcpy(hdrs[i], &h, sizeof h);
            memcpy(stamps[i], &h.frame, 8);
            const uint8_t *payload = images + mod * module_bytes + (uint64_t)(p % geo->packets_per_frame) * geo->payload_bytes;
            iovs[i][0] = (struct iovec){hdrs[i], SN_UDP_HEADER_BYTES};
            iovs[i][1] = (struct iovec){stamps[i], 8};
            iovs[i][2] = (struct iovec){(void *)(payload + 8), geo->payload_bytes - 8};
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 3;
            msgs[i].msg_hdr.msg_name = &addrs[mod];
            msgs[i].msg_hdr.msg_namelen = sizeof addrs[mod];
        }
        if (rate_pps > 0) {
            int64_t due = t0 + (int64_t)((double)sent * 1e9 / rate_pps);
            int64_t wait = due - mono_ns();
            if (wait > 0) {
                struct timespec ts = {wait / 1000000000LL, wait % 1000000000LL};
                nanosleep(&ts, NULL);
            }
        }
        int k = sendmmsg(fd, msgs, b, 0);
        if (k < 0) {
            if (errno == EINTR || errno == ENOBUFS || errno == EAGAIN) continue;
            close(fd);
            free(hdrs);
            free(stamps);
            return SN_UDP_ESYS;
        }
        sent += (uint64_t)k;
    }
    close(fd);
    free(hdrs);
    free(stamps);
    return (int64_t)sent;
}
