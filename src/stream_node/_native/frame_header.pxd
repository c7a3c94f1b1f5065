# cython: language_level=3
# Declarations of native/include/stream_node/frame_header.h, one to one.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "stream_node/frame_header.h" nogil:
    const uint32_t SN_HEADER_MAGIC  # unsigned: not an enum
    enum:
        SN_HEADER_VERSION
        SN_HEADER_SIZE
        SN_MAX_DIMS
        SN_HEADER_RESERVED_WORDS

    # sn_msg_type
    enum:
        SN_MSG_START
        SN_MSG_FRAME
        SN_MSG_END
        SN_MSG_HEARTBEAT
        SN_MSG_ABORT
        SN_MSG_HELLO
        SN_MSG_READY
        SN_MSG_DRAINED
        SN_MSG_FINISH
        SN_MSG_DONE
        SN_MSG_CREDIT
        SN_MSG_ACK
        SN_MSG_TYPE_MAX

    # sn_dtype
    enum:
        SN_DTYPE_NONE
        SN_DTYPE_UINT8
        SN_DTYPE_UINT16
        SN_DTYPE_UINT32
        SN_DTYPE_UINT64
        SN_DTYPE_INT8
        SN_DTYPE_INT16
        SN_DTYPE_INT32
        SN_DTYPE_INT64
        SN_DTYPE_FLOAT32
        SN_DTYPE_FLOAT64
        SN_DTYPE_MAX

    # sn_encoding
    enum:
        SN_ENC_RAW
        SN_ENC_BSLZ4
        SN_ENC_MSGPACK
        SN_ENC_MAX

    enum:
        SN_FLAG_PARTIAL
        SN_FLAG_RESENT
        SN_FLAG_FAILED
        SN_FLAG_PAYLOAD_CRC

    # Error codes (negative).
    enum:
        SN_OK
        SN_ETRUNCATED
        SN_EMAGIC
        SN_EVERSION
        SN_EHSIZE
        SN_ETYPE
        SN_EDTYPE
        SN_EENCODING
        SN_ENDIM
        SN_ESIZE
        SN_EPAYLOAD
        SN_ERESERVED
        SN_EBUFFER
        SN_ECRC

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
        uint32_t shape[SN_MAX_DIMS]
        uint64_t payload_bytes
        uint64_t uncompressed_bytes
        uint64_t timestamp_ns
        uint32_t sender
        uint32_t parts
        uint32_t crc
        uint32_t payload_crc
        uint64_t reserved1[SN_HEADER_RESERVED_WORDS]

    size_t sn_dtype_itemsize(uint8_t dtype)
    int sn_header_validate(const sn_frame_header *h)
    int sn_header_pack(const sn_frame_header *h, uint8_t *out, size_t out_len)
    int sn_header_parse(const uint8_t *buf, size_t len, sn_frame_header *out)
    const char *sn_header_strerror(int code)
