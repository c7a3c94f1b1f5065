# cython: language_level=3, boundscheck=False, wraparound=False
"""The ring's C API, one call per C function, GIL released around every wait.

Private: `stream_node.links.ring.Ring` is the class people use. Errors become exceptions here, so
every C return code is checked in exactly one place.
"""
from cpython.buffer cimport PyBUF_WRITABLE
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, strerror

from stream_node._native.frame_header cimport SN_HEADER_SIZE
from stream_node._native.ring cimport *

from stream_node.model.errors import EndOfStream, RingError, RingTimeout

WORK = SN_GROUP_WORK
LATEST = SN_GROUP_LATEST
MAX_GROUPS = SN_RING_MAX_GROUPS
MAX_MEMBERS = SN_RING_MAX_MEMBERS
MAX_BATCH = SN_RING_MAX_BATCH
PAYLOAD_OFFSET = SN_RING_PAYLOAD_OFFSET
NOT_FOUND = SN_RING_ENOENT  # RingError.code when no ring of that name exists
NOT_READY = SN_RING_ENOTREADY  # RingError.code while its producer is still making it


cdef int check(int rc, str what) except -1:
    if rc >= 0:
        return rc
    cdef str msg = f"{what}: {sn_ring_strerror(rc).decode()}"
    if rc == SN_RING_ETIMEDOUT:
        raise RingTimeout(msg)
    if rc == SN_RING_ECLOSED or rc == SN_RING_EDEAD or rc == SN_RING_ESHUTDOWN:
        raise EndOfStream(msg, rc)
    if rc == SN_RING_ESYS:
        msg += f" ({strerror(errno).decode()})"
    raise RingError(msg, rc)


cdef str _state_name(uint32_t state):
    if state == SN_RING_STATE_OPEN:
        return "open"
    if state == SN_RING_STATE_CLOSED:
        return "closed"
    if state == SN_RING_STATE_DEAD:
        return "producer dead"
    raise RingError(f"unknown ring state {state}", SN_RING_EINVAL)


cdef class SlotBuffer:
    """A whole slot (header + payload) as a writable buffer; keeps the mapping alive."""
    cdef RingHandle ring
    cdef uint8_t *ptr
    cdef Py_ssize_t size
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __getbuffer__(self, Py_buffer *buf, int flags):
        buf.buf = self.ptr
        buf.obj = self
        buf.len = self.size
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        self.shape[0] = self.size
        self.strides[0] = 1
        buf.shape = self.shape
        buf.strides = self.strides
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass


cdef class RingHandle:
    # Attributes are declared in _ring.pxd, so the UDP receiver can reach the C handle.

    def __dealloc__(self):
        # Unmapped only when no view of a slot is left: every SlotBuffer holds this handle.
        if self.r != NULL:
            sn_ring_close(self.r)
            self.r = NULL

    @staticmethod
    def create(str name, uint32_t n_window, uint64_t slot_bytes, list groups, uint32_t max_pins,
               uint32_t mode):
        cdef sn_ring_group_spec specs[SN_RING_MAX_GROUPS]
        cdef Py_ssize_t i
        cdef bytes gname
        if len(groups) > SN_RING_MAX_GROUPS:
            raise RingError(f"at most {SN_RING_MAX_GROUPS} groups", SN_RING_EINVAL)
        for i, (group_name, kind) in enumerate(groups):
            gname = group_name.encode()
            if not 0 < len(gname) < SN_RING_GROUP_NAME_BYTES:
                raise RingError(f"group name {group_name!r} must have 1 to "
                                f"{SN_RING_GROUP_NAME_BYTES - 1} bytes", SN_RING_EINVAL)
            memcpy(specs[i].name, <char *>gname, len(gname) + 1)
            specs[i].kind = kind
        cdef RingHandle self = RingHandle.__new__(RingHandle)
        cdef bytes bname = name.encode()
        check(sn_ring_create(&self.r, bname, n_window, slot_bytes, specs, len(groups), max_pins,
                             mode), f"creating ring {name!r}")
        self.creator = True
        self.name = name
        return self

    @staticmethod
    def attach(str name, uint32_t expect_window=0, uint64_t expect_slot_bytes=0):
        cdef RingHandle self = RingHandle.__new__(RingHandle)
        cdef bytes bname = name.encode()
        check(sn_ring_attach(&self.r, bname, expect_window, expect_slot_bytes),
              f"attaching ring {name!r}")
        self.creator = False
        self.name = name
        return self

    @staticmethod
    def unlink(str name):
        cdef bytes bname = name.encode()
        return sn_ring_unlink(bname) == SN_RING_OK

    def end(self):
        sn_ring_end(self.r)

    def shutdown(self):
        sn_ring_shutdown(self.r)

    def set_spin(self, int64_t spin_ns):
        sn_ring_set_spin(self.r, spin_ns)

    @property
    def n_slots(self):
        return sn_ring_n_slots(self.r)

    @property
    def n_window(self):
        return sn_ring_n_window(self.r)

    @property
    def slot_bytes(self):
        return sn_ring_slot_bytes(self.r)

    def slot_buffer(self, uint32_t slot):
        if slot >= sn_ring_n_slots(self.r):
            raise RingError(f"slot {slot} out of range", SN_RING_EINVAL)
        cdef SlotBuffer buf = SlotBuffer.__new__(SlotBuffer)
        buf.ring = self
        buf.ptr = sn_ring_slot_ptr(self.r, slot)
        buf.size = SN_RING_PAYLOAD_OFFSET + sn_ring_slot_bytes(self.r)
        return buf

    def group_index(self, str name):
        cdef uint32_t kind = 0
        cdef bytes bname = name.encode()
        cdef int g = sn_ring_group_index(self.r, bname, &kind)
        if g < 0:
            raise RingError(f"ring {self.name!r} has no group {name!r}", g)
        return g, kind

    def claim(self, int64_t timeout_ns):
        cdef uint32_t slot = 0
        cdef int rc
        with nogil:
            rc = sn_ring_claim(self.r, timeout_ns, &slot)
        check(rc, f"ring {self.name!r}: claiming a slot")
        return slot

    def publish(self, uint32_t slot):
        cdef uint64_t seq = 0
        check(sn_ring_publish(self.r, slot, &seq), f"ring {self.name!r}: publishing slot {slot}")
        return seq

    def claim_n(self, uint32_t max_frames, int64_t timeout_ns, uint32_t[::1] slots):
        """Claim up to max_frames slots into slots[:n] (caller-owned, reused); returns n."""
        cdef int rc
        if max_frames > <uint32_t>slots.shape[0]:
            raise RingError("output array smaller than max_frames", SN_RING_EINVAL)
        with nogil:
            rc = sn_ring_claim_n(self.r, max_frames, timeout_ns, &slots[0])
        return check(rc, f"ring {self.name!r}: claiming slots")

    def publish_n(self, uint32_t[::1] slots, uint32_t n, const uint8_t[:, ::1] headers):
        """Copy headers[i] (one packed frame header each) into slots[i], then publish the n slots
        at once."""
        cdef uint32_t i
        cdef uint64_t seq = 0
        if (n > <uint32_t>slots.shape[0] or n > <uint32_t>headers.shape[0]
                or headers.shape[1] != SN_HEADER_SIZE):
            raise RingError(f"publish_n needs n slots and an n x {SN_HEADER_SIZE} header array",
                            SN_RING_EINVAL)
        for i in range(n):
            if slots[i] >= sn_ring_n_slots(self.r):
                raise RingError(f"slot {slots[i]} out of range", SN_RING_EINVAL)
            memcpy(sn_ring_slot_ptr(self.r, slots[i]), &headers[i, 0], SN_HEADER_SIZE)
        check(sn_ring_publish_n(self.r, &slots[0], n, &seq),
              f"ring {self.name!r}: publishing {n} slots (not all claimed?)")
        return seq

    def join(self, uint32_t group):
        cdef uint32_t member = 0
        check(sn_ring_join(self.r, group, &member), f"ring {self.name!r}: joining group {group}")
        return member

    def leave(self, uint32_t group, uint32_t member):
        sn_ring_leave(self.r, group, member)

    def acquire(self, uint32_t group, uint32_t member, uint32_t max_frames, int64_t timeout_ns,
                uint32_t[::1] slots, uint64_t[::1] seqs):
        """Fill slots[:n], seqs[:n] (caller-owned, reused: no allocation); returns n."""
        cdef int rc
        if max_frames > <uint32_t>slots.shape[0] or max_frames > <uint32_t>seqs.shape[0]:
            raise RingError("output arrays smaller than max_frames", SN_RING_EINVAL)
        with nogil:
            rc = sn_ring_acquire(self.r, group, member, max_frames, timeout_ns, &slots[0],
                                 &seqs[0])
        return check(rc, f"ring {self.name!r}: acquiring")

    def release(self, uint32_t group, uint32_t member, uint64_t seq, uint32_t slot):
        check(sn_ring_release(self.r, group, member, seq, slot),
              f"ring {self.name!r}: releasing frame {seq} (not held by this consumer?)")

    def release_n(self, uint32_t group, uint32_t member, uint64_t[::1] seqs, uint32_t[::1] slots,
                  uint32_t n):
        check(sn_ring_release_n(self.r, group, member, &seqs[0], &slots[0], n),
              f"ring {self.name!r}: releasing {n} frames")

    def reap(self):
        return sn_ring_reap(self.r)

    def stats(self):
        cdef sn_ring_stats st
        sn_ring_stats_get(self.r, &st)
        n = st.n_groups
        return {
            "published": st.published,
            "producer_waits": st.producer_waits,
            "occupancy": st.occupancy,
            "consumed": [st.consumed[i] for i in range(n)],
            "skipped": [st.skipped[i] for i in range(n)],
            "redelivered": [st.redelivered[i] for i in range(n)],
            "state": _state_name(st.state),
        }
