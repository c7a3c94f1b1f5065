# cython: language_level=3
# The ring handle's C side, shared with the other native modules (the UDP receiver).
from stream_node._native.ring cimport sn_ring


cdef class RingHandle:
    cdef sn_ring *r
    cdef readonly bint creator
    cdef readonly str name
