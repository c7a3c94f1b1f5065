/*
 * stream-node shared-memory ring: one producer, several consumer groups, frames read in place.
 *
 * A ring is a POSIX shared-memory segment ("/sn-ring-NAME") holding a control block, the groups,
 * the slot descriptors and the slots. Each slot holds one frame: its 96-byte frame header at
 * offset 0 and the payload at SN_RING_PAYLOAD_OFFSET.
 *
 * Sequence numbers (seq) count published frames from 0. The producer claims a free slot, fills it
 * and publishes it as the next seq; `seq_slot[seq % n_window]` says which slot holds that seq.
 *
 * Groups are declared when the ring is created, so no frame can be published before a group
 * exists: a group keeps every frame from seq 0 until its members consume it (no start-up loss).
 *   - WORK group (lossless): every frame goes to exactly one member. The producer waits when a
 *     work group is `n_window` frames behind (backpressure).
 *   - LATEST group (lossy): each member gets the newest frame and counts the ones it skipped; it
 *     pins the slot it reads, and `max_pins` spare slots mean the producer never waits for it.
 *
 * Slot state, in `refs` (one atomic word per slot):
 *   0               FREE      no holder: the producer may claim it
 *   SN_RING_WRITING CLAIMED   the producer is filling it; nobody else may pin it
 *   n > 0           HELD      n holders: one per work group that has not released the frame yet,
 *                             plus one per latest member pinning it; the last release frees it
 *
 * Work-group seq state (per group, per seq in the window):
 *   seq >= next_seq                      not yet handed out
 *   tail <= seq < next_seq, done != seq+1 handed out to the member whose [lo, hi) covers it
 *   done == seq+1                        released; `tail` moves past contiguous released seqs
 * A seq handed out whose member process is dead is put on the group's redelivery list (under the
 * ring's robust mutex) and handed to another member: a crashed worker loses nothing.
 *
 * Waiting: futexes on 32-bit counters in the segment, after a spin (sn_ring_set_spin); every
 * wait has a timeout and wakes on shutdown. The producer reuses the slot freed last, then the
 * lowest free one, so a ring whose consumers keep up touches few slots (they stay in cache).
 * Creating and attaching fault the whole segment in (MADV_POPULATE_WRITE, Linux 5.14+): the
 * data path takes no page faults. Every function returns 0 (or a count) or a negative SN_RING_E*.
 */
#ifndef STREAM_NODE_RING_H
#define STREAM_NODE_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SN_RING_VERSION 1
#define SN_RING_MAX_GROUPS 8
#define SN_RING_MAX_MEMBERS 16
#define SN_RING_MAX_WINDOW 65536
#define SN_RING_NAME_MAX 64
#define SN_RING_GROUP_NAME_BYTES 32 /* a group name's buffer, NUL included: 1 to 31 bytes */
#define SN_RING_MAX_BATCH 64 /* frames one sn_ring_acquire hands out at most (a larger max is
                                clamped) */
#define SN_RING_PAYLOAD_OFFSET 128
#define SN_RING_WRITING 0x80000000u

enum { SN_GROUP_UNUSED = 0, SN_GROUP_WORK = 1, SN_GROUP_LATEST = 2 };

/* The stream's state, in sn_ring_stats.state. */
enum {
    SN_RING_STATE_OPEN = 0,   /* the producer may still publish */
    SN_RING_STATE_CLOSED = 1, /* the producer ended the stream (sn_ring_end) */
    SN_RING_STATE_DEAD = 2    /* the producer process died without ending it */
};

enum {
    SN_RING_OK = 0,
    SN_RING_ETIMEDOUT = -101, /* nothing happened within the timeout */
    SN_RING_ECLOSED = -102,   /* end of stream: the producer closed the ring, all frames consumed */
    SN_RING_EDEAD = -103,     /* end of stream: the producer process died, all frames consumed */
    SN_RING_EINUSE = -104,    /* a live producer already owns a ring of that name */
    SN_RING_ENOENT = -105,    /* no ring of that name */
    SN_RING_EGEOMETRY = -106, /* the segment's geometry differs from what the caller expects */
    SN_RING_EVERSION = -107,  /* the segment is not a ring of this version (or not a ring) */
    SN_RING_ENOSPC = -108,    /* /dev/shm has no room for the segment */
    SN_RING_ETOOBIG = -109,   /* a frame larger than a slot */
    SN_RING_EBUSY = -110,     /* a member acquired again before releasing, or no free member entry */
    SN_RING_EINVAL = -111,    /* a bad argument (name, group, slot, sizes) */
    SN_RING_ESYS = -112,      /* a system call failed; errno says why */
    SN_RING_ESHUTDOWN = -113, /* this handle was shut down while waiting */
    SN_RING_ENOTREADY = -114  /* the producer is still making the ring: attach again shortly */
};

typedef struct sn_ring sn_ring; /* a process's handle on a mapped ring */

typedef struct sn_ring_group_spec {
    char name[SN_RING_GROUP_NAME_BYTES];
    uint32_t kind; /* SN_GROUP_WORK or SN_GROUP_LATEST */
} sn_ring_group_spec;

typedef struct sn_ring_stats {
    uint64_t published;
    uint64_t producer_waits;
    uint64_t occupancy; /* frames published and not yet released by the slowest work group */
    uint64_t consumed[SN_RING_MAX_GROUPS];
    uint64_t skipped[SN_RING_MAX_GROUPS];
    uint64_t redelivered[SN_RING_MAX_GROUPS];
    uint32_t n_groups;
    uint32_t state; /* SN_RING_STATE_* */
} sn_ring_stats;

/* Create NAME (stale segments of dead producers are removed; a live one gives SN_RING_EINUSE). */
int sn_ring_create(sn_ring **out, const char *name, uint32_t n_window, uint64_t slot_bytes,
                   const sn_ring_group_spec *groups, uint32_t n_groups, uint32_t max_pins,
                   uint32_t mode);
/* Attach to NAME; expect_* of 0 accept any value, else must match (SN_RING_EGEOMETRY). */
int sn_ring_attach(sn_ring **out, const char *name, uint32_t expect_window, uint64_t expect_slot_bytes);
/* Producer: end the stream (consumers drain what is published, then see SN_RING_ECLOSED) and
   remove the segment's name; the mapping stays valid until sn_ring_close. */
void sn_ring_end(sn_ring *r);
/* Unmap and free the handle (the creator ends the stream first if it has not). */
void sn_ring_close(sn_ring *r);
/* Remove the segment's name (the creator does this on close). */
int sn_ring_unlink(const char *name);
/* Wake every wait of this handle with SN_RING_ESHUTDOWN (callable from a signal handler). */
void sn_ring_shutdown(sn_ring *r);

/* Busy-wait this long (default 20 us) before sleeping: longer buys latency with CPU time. */
void sn_ring_set_spin(sn_ring *r, int64_t spin_ns);

uint32_t sn_ring_n_slots(const sn_ring *r);
uint32_t sn_ring_n_window(const sn_ring *r);
uint64_t sn_ring_slot_bytes(const sn_ring *r);
uint8_t *sn_ring_slot_ptr(const sn_ring *r, uint32_t slot); /* header at 0, payload at +128 */
int sn_ring_group_index(const sn_ring *r, const char *name, uint32_t *kind);

/* Producer: claim a free slot (waits for lossless groups), then publish it as the next seq. */
int sn_ring_claim(sn_ring *r, int64_t timeout_ns, uint32_t *slot);
int sn_ring_publish(sn_ring *r, uint32_t slot, uint64_t *seq);
/* Batch forms: claim up to max slots (at least 1 within the timeout; the rest only if free now
   and inside the window), publish n claimed slots as consecutive seqs with one wake-up. */
int sn_ring_claim_n(sn_ring *r, uint32_t max, int64_t timeout_ns, uint32_t *slots);
int sn_ring_publish_n(sn_ring *r, const uint32_t *slots, uint32_t n, uint64_t *first_seq);
/* A producer that fills several slots at once (frames assembled out of order): claim one more
   without waiting while `outstanding` claimed slots are not yet published (SN_RING_ETIMEDOUT if
   none is free or the window is full), and give a claimed slot back unpublished. */
int sn_ring_try_claim(sn_ring *r, uint32_t outstanding, uint32_t *slot);
int sn_ring_unclaim(sn_ring *r, uint32_t slot);

/* Consumers: join a group as a member, acquire up to max frames (slots[], seqs[]), release them. */
int sn_ring_join(sn_ring *r, uint32_t group, uint32_t *member);
void sn_ring_leave(sn_ring *r, uint32_t group, uint32_t member);
int sn_ring_acquire(sn_ring *r, uint32_t group, uint32_t member, uint32_t max, int64_t timeout_ns,
                    uint32_t *slots, uint64_t *seqs);
int sn_ring_release(sn_ring *r, uint32_t group, uint32_t member, uint64_t seq, uint32_t slot);
int sn_ring_release_n(sn_ring *r, uint32_t group, uint32_t member, const uint64_t *seqs,
                      const uint32_t *slots, uint32_t n);

/* Hand the frames held by dead members back to their groups; returns how many. */
int sn_ring_reap(sn_ring *r);
void sn_ring_stats_get(const sn_ring *r, sn_ring_stats *out);
const char *sn_ring_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif
