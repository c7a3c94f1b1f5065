#include "stream_node/frame_header.h"

#include <stddef.h>
#include <string.h>

_Static_assert(sizeof(sn_frame_header) == SN_HEADER_SIZE, "header struct must be its wire size");
_Static_assert(offsetof(sn_frame_header, run_id) == 16, "run_id offset");
_Static_assert(offsetof(sn_frame_header, shape) == 32, "shape offset");
_Static_assert(offsetof(sn_frame_header, payload_bytes) == 48, "payload_bytes offset");
_Static_assert(offsetof(sn_frame_header, timestamp_ns) == 64, "timestamp_ns offset");
_Static_assert(offsetof(sn_frame_header, sender) == 72, "sender offset");
_Static_assert(offsetof(sn_frame_header, crc) == 80, "crc offset");
_Static_assert(offsetof(sn_frame_header, reserved1) == 88, "reserved1 offset");

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven: 96 bytes in ~0.1 us, a
   small part of what parsing a header costs in Python. */
static uint32_t crc_table[256];

/* Filled when the library is loaded, before any thread can pack or parse a header. */
__attribute__((constructor)) static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

/* The crc of a wire header (little-endian bytes), its crc field taken as 0. */
static uint32_t header_crc(const uint8_t *wire) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < SN_HEADER_SIZE; i++) {
        uint8_t byte = (i >= 80 && i < 84) ? 0 : wire[i];
        c = crc_table[(c ^ byte) & 0xFF] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFu;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define SN_BIG_ENDIAN 1
#else
#define SN_BIG_ENDIAN 0
#endif

/* Converts every multi-byte field between host order and little-endian (its own inverse). */
static void swap_fields(sn_frame_header *h) {
#if SN_BIG_ENDIAN
    h->magic = __builtin_bswap32(h->magic);
    h->version = __builtin_bswap16(h->version);
    h->header_size = __builtin_bswap16(h->header_size);
    h->flags = __builtin_bswap32(h->flags);
    h->run_id = __builtin_bswap64(h->run_id);
    h->frame_id = __builtin_bswap64(h->frame_id);
    for (int i = 0; i < SN_MAX_DIMS; i++) h->shape[i] = __builtin_bswap32(h->shape[i]);
    h->payload_bytes = __builtin_bswap64(h->payload_bytes);
    h->uncompressed_bytes = __builtin_bswap64(h->uncompressed_bytes);
    h->timestamp_ns = __builtin_bswap64(h->timestamp_ns);
    h->sender = __builtin_bswap32(h->sender);
    h->parts = __builtin_bswap32(h->parts);
    h->crc = __builtin_bswap32(h->crc);
    h->payload_crc = __builtin_bswap32(h->payload_crc);
    for (int i = 0; i < SN_HEADER_RESERVED_WORDS; i++)
        h->reserved1[i] = __builtin_bswap64(h->reserved1[i]);
#else
    (void)h;
#endif
}

size_t sn_dtype_itemsize(uint8_t dtype) {
    switch (dtype) {
    case SN_DTYPE_UINT8:
    case SN_DTYPE_INT8: return 1;
    case SN_DTYPE_UINT16:
    case SN_DTYPE_INT16: return 2;
    case SN_DTYPE_UINT32:
    case SN_DTYPE_INT32:
    case SN_DTYPE_FLOAT32: return 4;
    case SN_DTYPE_UINT64:
    case SN_DTYPE_INT64:
    case SN_DTYPE_FLOAT64: return 8;
    default: return 0;
    }
}

int sn_header_validate(const sn_frame_header *h) {
    if (h->magic != SN_HEADER_MAGIC) return SN_EMAGIC;
    if (h->version != SN_HEADER_VERSION) return SN_EVERSION;
    if (h->header_size != SN_HEADER_SIZE) return SN_EHSIZE;
    if (h->msg_type < 1 || h->msg_type > SN_MSG_TYPE_MAX) return SN_ETYPE;
    if (h->encoding > SN_ENC_MAX) return SN_EENCODING;
    if (h->payload_crc != 0 && !(h->flags & SN_FLAG_PAYLOAD_CRC)) return SN_ERESERVED;
    for (int i = 0; i < SN_HEADER_RESERVED_WORDS; i++)
        if (h->reserved1[i] != 0) return SN_ERESERVED;
    if (h->ndim > SN_MAX_DIMS) return SN_ENDIM;
    for (int i = h->ndim; i < SN_MAX_DIMS; i++)
        if (h->shape[i] != 0) return SN_ENDIM;
    if (h->msg_type != SN_MSG_FRAME) {
        if (h->dtype > SN_DTYPE_MAX) return SN_EDTYPE;
        return SN_OK;
    }
    size_t itemsize = sn_dtype_itemsize(h->dtype);
    if (itemsize == 0) return SN_EDTYPE;
    if (h->ndim == 0) return SN_ENDIM;
    /* prod(shape) * itemsize without overflow: each factor < 2^32, checked against UINT64_MAX. */
    uint64_t n = itemsize;
    for (int i = 0; i < h->ndim; i++) {
        if (h->shape[i] == 0) return SN_ENDIM;
        if (n > UINT64_MAX / h->shape[i]) return SN_ESIZE;
        n *= h->shape[i];
    }
    if (n != h->uncompressed_bytes) return SN_ESIZE;
    if (h->encoding == SN_ENC_RAW && h->payload_bytes != h->uncompressed_bytes) return SN_EPAYLOAD;
    return SN_OK;
}

int sn_header_pack(const sn_frame_header *h, uint8_t *out, size_t out_len) {
    if (out_len < SN_HEADER_SIZE) return SN_EBUFFER;
    int rc = sn_header_validate(h);
    if (rc != SN_OK) return rc;
    sn_frame_header le = *h;
    le.crc = 0;
    swap_fields(&le);
    memcpy(out, &le, SN_HEADER_SIZE);
    uint32_t crc = header_crc(out);
#if SN_BIG_ENDIAN
    crc = __builtin_bswap32(crc);
#endif
    memcpy(out + 80, &crc, sizeof crc);
    return SN_OK;
}

int sn_header_parse(const uint8_t *buf, size_t len, sn_frame_header *out) {
    if (len < SN_HEADER_SIZE) return SN_ETRUNCATED;
    sn_frame_header h;
    memcpy(&h, buf, SN_HEADER_SIZE);
    swap_fields(&h);
    int rc = sn_header_validate(&h);
    if (rc != SN_OK) return rc;
    if (h.crc != header_crc(buf)) return SN_ECRC;
    *out = h;
    return SN_OK;
}

const char *sn_header_strerror(int code) {
    switch (code) {
    case SN_OK: return "ok";
    case SN_ETRUNCATED: return "header truncated";
    case SN_EMAGIC: return "wrong magic: not a stream-node message";
    case SN_EVERSION: return "unsupported header version";
    case SN_EHSIZE: return "header_size field does not match this version";
    case SN_ETYPE: return "unknown message type";
    case SN_EDTYPE: return "unknown or missing dtype code";
    case SN_EENCODING: return "unknown payload encoding";
    case SN_ENDIM: return "inconsistent ndim/shape";
    case SN_ESIZE: return "uncompressed_bytes does not match shape and dtype";
    case SN_EPAYLOAD: return "raw payload_bytes does not match uncompressed_bytes";
    case SN_ERESERVED: return "reserved fields are not zero";
    case SN_EBUFFER: return "output buffer too small for a header";
    case SN_ECRC: return "header checksum mismatch: damaged in transit";
    default: return "unknown error code";
    }
}
