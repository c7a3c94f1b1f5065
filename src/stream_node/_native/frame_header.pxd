# cython: language_level=3
# Declarations of native/include/stream_node/frame_header.h, one to one.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "stream_node/frame_header.h" nogil:
    enum:
        SN_HEADER_MAGIC
        SN_HEADER_VERSION
        SN_HEADER_SIZE
        SN_MAX_DIMS
        SN_OK
        SN_ETRUNCATED
        SN_EMAGIC
        SN_EVERSION

    ctypedef struct sn_frame_header:
        uint32_t magic
        uint16_t version
        uint16_t header_size
        uint8_t msg_type
        uint8_t dtype
        uint8_t encoding
        uint8_t ndim
        uint32_t flags
        uint64_t run_id
        uint64_t frame_id
        uint32_t shape[4]
        uint64_t payload_bytes
        uint64_t uncompressed_bytes
        uint64_t timestamp_ns
        uint32_t sender
        uint32_t parts
        uint64_t reserved1[2]

    size_t sn_dtype_itemsize(uint8_t dtype)
    int sn_header_validate(const sn_frame_header *h)
    int sn_header_pack(const sn_frame_header *h, uint8_t *out, size_t out_len)
    int sn_header_parse(const uint8_t *buf, size_t len, sn_frame_header *out)
    const char *sn_header_strerror(int code)
