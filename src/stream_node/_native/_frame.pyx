# cython: language_level=3, boundscheck=False, wraparound=False
"""Frame-header codec: a thin typed wrapper over native/src/frame_header.c.

Parsing happens in C on the message's buffer; the only Python object made per message is the
`FrameHeader` itself, so the per-frame cost stays a few hundred nanoseconds.
"""
from libc.string cimport memcpy, memset

from stream_node._native.frame_header cimport (
    SN_EMAGIC,
    SN_ETRUNCATED,
    SN_EVERSION,
    SN_FLAG_PAYLOAD_CRC,
    SN_HEADER_MAGIC,
    SN_HEADER_SIZE,
    SN_HEADER_VERSION,
    SN_MAX_DIMS,
    SN_OK,
    sn_dtype_itemsize,
    sn_frame_header,
    sn_header_pack,
    sn_header_parse,
    sn_header_strerror,
)

from stream_node.model.errors import ProtocolError

HEADER_SIZE = SN_HEADER_SIZE
HEADER_VERSION = SN_HEADER_VERSION
FLAG_PAYLOAD_CRC = SN_FLAG_PAYLOAD_CRC
MAX_DIMS = SN_MAX_DIMS


def itemsize(int dtype_code):
    """Bytes per element of a dtype code (0 if the code is unknown)."""
    return sn_dtype_itemsize(<unsigned char>dtype_code)


cdef str _describe(int rc, const unsigned char[::1] raw, Py_ssize_t n, sn_frame_header *h):
    cdef str base = sn_header_strerror(rc).decode()
    if rc == SN_ETRUNCATED:
        return f"{base}: got {n} bytes, a header needs {SN_HEADER_SIZE}"
    cdef Py_ssize_t m = sizeof(h.magic)
    if rc == SN_EMAGIC:
        return (f"{base} (first bytes {bytes(raw[:m])!r}, "
                f"expected {(<object>SN_HEADER_MAGIC).to_bytes(m, 'little')!r})")
    if rc == SN_EVERSION:
        return f"{base}: got version {h.version}, this build speaks {SN_HEADER_VERSION}"
    return (f"{base} (type={h.msg_type} dtype={h.dtype} encoding={h.encoding} ndim={h.ndim} "
            f"shape={list(h.shape)} payload_bytes={h.payload_bytes} "
            f"uncompressed_bytes={h.uncompressed_bytes})")


cdef class FrameHeader:
    """One frame header, as parsed from or packed to its 96-byte wire form."""

    cdef sn_frame_header h

    def __init__(self, int msg_type, unsigned long long run_id=0, unsigned long long frame_id=0,
                 shape=(), int dtype_code=0, int encoding=0, payload_bytes=None,
                 unsigned long long timestamp_ns=0, unsigned int flags=0, unsigned int sender=0,
                 unsigned int parts=0):
        cdef Py_ssize_t i, ndim = len(shape)
        cdef unsigned long long n
        if ndim > SN_MAX_DIMS:
            raise ProtocolError(f"a frame has at most {SN_MAX_DIMS} dimensions, got {ndim}")
        memset(&self.h, 0, sizeof(sn_frame_header))
        self.h.magic = SN_HEADER_MAGIC
        self.h.version = SN_HEADER_VERSION
        self.h.header_size = SN_HEADER_SIZE
        self.h.msg_type = msg_type
        self.h.dtype = dtype_code
        self.h.encoding = encoding
        self.h.ndim = ndim
        self.h.flags = flags
        self.h.run_id = run_id
        self.h.frame_id = frame_id
        n = sn_dtype_itemsize(dtype_code) if ndim else 0
        for i in range(ndim):
            self.h.shape[i] = shape[i]
            n *= <unsigned long long>shape[i]
        self.h.uncompressed_bytes = n
        self.h.payload_bytes = n if payload_bytes is None else payload_bytes
        self.h.timestamp_ns = timestamp_ns
        self.h.sender = sender
        self.h.parts = parts

    @staticmethod
    def parse(buf):
        """Parse and validate a wire header; raises ProtocolError saying what is wrong."""
        cdef const unsigned char[::1] raw = buf
        cdef FrameHeader self = FrameHeader.__new__(FrameHeader)
        cdef int rc
        cdef Py_ssize_t n = raw.shape[0]
        if n < SN_HEADER_SIZE:
            rc = SN_ETRUNCATED
        else:
            rc = sn_header_parse(&raw[0], n, &self.h)
        if rc != SN_OK:
            memset(&self.h, 0, sizeof(sn_frame_header))
            if n >= SN_HEADER_SIZE:
                # Decode the fields without validating them, so the message can name them.
                memcpy(&self.h, &raw[0], SN_HEADER_SIZE)
            raise ProtocolError(_describe(rc, raw, n, &self.h))
        return self

    def pack(self):
        """The 96-byte wire form; validates first so a malformed header is never sent."""
        cdef bytearray out = bytearray(SN_HEADER_SIZE)
        cdef unsigned char[::1] view = out
        cdef int rc = sn_header_pack(&self.h, &view[0], SN_HEADER_SIZE)
        if rc != SN_OK:
            raise ProtocolError(_describe(rc, view, SN_HEADER_SIZE, &self.h))
        return bytes(out)

    @property
    def msg_type(self):
        return self.h.msg_type

    @property
    def run_id(self):
        return self.h.run_id

    @property
    def frame_id(self):
        return self.h.frame_id

    @property
    def shape(self):
        return tuple(self.h.shape[i] for i in range(self.h.ndim))

    @property
    def dtype_code(self):
        return self.h.dtype

    @property
    def encoding(self):
        return self.h.encoding

    @property
    def payload_bytes(self):
        return self.h.payload_bytes

    @property
    def uncompressed_bytes(self):
        return self.h.uncompressed_bytes

    @property
    def timestamp_ns(self):
        return self.h.timestamp_ns

    @property
    def flags(self):
        return self.h.flags

    @property
    def sender(self):
        return self.h.sender

    @sender.setter
    def sender(self, unsigned int value):
        self.h.sender = value

    @property
    def parts(self):
        return self.h.parts

    @property
    def payload_crc(self):
        """The payload's CRC-32C when `flags` has FLAG_PAYLOAD_CRC (else 0)."""
        return self.h.payload_crc

    def seal(self, unsigned int payload_crc):
        """Carry `payload_crc` (the payload's CRC-32C) for receivers to check."""
        self.h.payload_crc = payload_crc
        self.h.flags |= SN_FLAG_PAYLOAD_CRC

    def __eq__(self, other):
        if not isinstance(other, FrameHeader):
            return NotImplemented
        return self.pack() == (<FrameHeader>other).pack()

    def __repr__(self):
        return (f"FrameHeader(msg_type={self.h.msg_type}, run_id={self.h.run_id:#x}, "
                f"frame_id={self.h.frame_id}, shape={self.shape}, dtype_code={self.h.dtype}, "
                f"encoding={self.h.encoding}, payload_bytes={self.h.payload_bytes}, "
                f"uncompressed_bytes={self.h.uncompressed_bytes}, "
                f"timestamp_ns={self.h.timestamp_ns}, flags={self.h.flags}, "
                f"sender={self.h.sender}, parts={self.h.parts})")
