# cython: language_level=3
# Declarations of native/include/stream_node/ring.h, one to one.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "stream_node/ring.h" nogil:
    enum:
        SN_RING_VERSION
        SN_RING_MAX_GROUPS
        SN_RING_MAX_MEMBERS
        SN_RING_MAX_WINDOW
        SN_RING_NAME_MAX
        SN_RING_GROUP_NAME_BYTES
        SN_RING_MAX_BATCH
        SN_RING_PAYLOAD_OFFSET
    const uint32_t SN_RING_WRITING  # unsigned: not an enum

    enum:
        SN_GROUP_UNUSED
        SN_GROUP_WORK
        SN_GROUP_LATEST

    enum:
        SN_RING_STATE_OPEN
        SN_RING_STATE_CLOSED
        SN_RING_STATE_DEAD

    # Error codes (negative).
    enum:
        SN_RING_OK
        SN_RING_ETIMEDOUT
        SN_RING_ECLOSED
        SN_RING_EDEAD
        SN_RING_EINUSE
        SN_RING_ENOENT
        SN_RING_EGEOMETRY
        SN_RING_EVERSION
        SN_RING_ENOSPC
        SN_RING_ETOOBIG
        SN_RING_EBUSY
        SN_RING_EINVAL
        SN_RING_ESYS
        SN_RING_ESHUTDOWN
        SN_RING_ENOTREADY

    ctypedef struct sn_ring:
        pass

    ctypedef struct sn_ring_group_spec:
        char name[SN_RING_GROUP_NAME_BYTES]
        uint32_t kind

    ctypedef struct sn_ring_stats:
        uint64_t published
        uint64_t producer_waits
        uint64_t occupancy
        uint64_t consumed[SN_RING_MAX_GROUPS]
        uint64_t skipped[SN_RING_MAX_GROUPS]
        uint64_t redelivered[SN_RING_MAX_GROUPS]
        uint32_t n_groups
        uint32_t state

    int sn_ring_create(sn_ring **out, const char *name, uint32_t n_window, uint64_t slot_bytes,
                       const sn_ring_group_spec *groups, uint32_t n_groups, uint32_t max_pins,
                       uint32_t mode)
    int sn_ring_attach(sn_ring **out, const char *name, uint32_t expect_window,
                       uint64_t expect_slot_bytes)
    void sn_ring_end(sn_ring *r)
    void sn_ring_close(sn_ring *r)
    int sn_ring_unlink(const char *name)
    void sn_ring_shutdown(sn_ring *r)
    void sn_ring_set_spin(sn_ring *r, int64_t spin_ns)
    uint32_t sn_ring_n_slots(const sn_ring *r)
    uint32_t sn_ring_n_window(const sn_ring *r)
    uint64_t sn_ring_slot_bytes(const sn_ring *r)
    uint8_t *sn_ring_slot_ptr(const sn_ring *r, uint32_t slot)
    int sn_ring_group_index(const sn_ring *r, const char *name, uint32_t *kind)
    int sn_ring_claim(sn_ring *r, int64_t timeout_ns, uint32_t *slot)
    int sn_ring_publish(sn_ring *r, uint32_t slot, uint64_t *seq)
    int sn_ring_claim_n(sn_ring *r, uint32_t max, int64_t timeout_ns, uint32_t *slots)
    int sn_ring_publish_n(sn_ring *r, const uint32_t *slots, uint32_t n, uint64_t *first_seq)
    int sn_ring_try_claim(sn_ring *r, uint32_t outstanding, uint32_t *slot)
    int sn_ring_unclaim(sn_ring *r, uint32_t slot)
    int sn_ring_join(sn_ring *r, uint32_t group, uint32_t *member)
    void sn_ring_leave(sn_ring *r, uint32_t group, uint32_t member)
    int sn_ring_acquire(sn_ring *r, uint32_t group, uint32_t member, uint32_t max,
                        int64_t timeout_ns, uint32_t *slots, uint64_t *seqs)
    int sn_ring_release(sn_ring *r, uint32_t group, uint32_t member, uint64_t seq, uint32_t slot)
    int sn_ring_release_n(sn_ring *r, uint32_t group, uint32_t member, const uint64_t *seqs,
                          const uint32_t *slots, uint32_t n)
    int sn_ring_reap(sn_ring *r)
    void sn_ring_stats_get(const sn_ring *r, sn_ring_stats *out)
    const char *sn_ring_strerror(int code)
