/*
 * stream-node frame header: the one fixed, versioned, little-endian struct that precedes every payload,
 * identical in ring slots and in ZeroMQ messages, so a frame crosses ring -> socket -> ring without
 * being re-encoded.
 *
 * Wire layout (96 bytes, all integers little-endian):
 *
 *   off size field               meaning
 *    0   4   magic               SN_HEADER_MAGIC ("SNFR" in memory order)
 *    4   2   version             SN_HEADER_VERSION; a reader refuses any other
 *    6   2   header_size         SN_HEADER_SIZE; lets a future version grow the header
 *    8   1   msg_type            sn_msg_type
 *    9   1   dtype               sn_dtype (0 for messages without an array payload)
 *   10   1   encoding            sn_encoding of the payload
 *   11   1   ndim                0..SN_MAX_DIMS
 *   12   4   flags               SN_FLAG_* bits
 *   16   8   run_id              every message carries it; a node drops foreign runs
 *   24   8   frame_id            FRAME: the frame's id; END: the last frame id of the run
 *   32  16   shape[4]            unused dimensions are 0
 *   48   8   payload_bytes       bytes of the payload part that follows the header
 *   56   8   uncompressed_bytes  FRAME: prod(shape) * itemsize(dtype)
 *   64   8   timestamp_ns        CLOCK_REALTIME of acquisition (FRAME) or of sending (others)
 *   72   4   sender              id of the node that last handled the message (e.g. worker index)
 *   76   4   parts               FRAME: data parts (e.g. UDP packets) that arrived; 0 = not
 *                                   counted. With SN_FLAG_PARTIAL, fewer than the frame has
 *   80   4   crc                 CRC-32C of the 96 bytes with this field 0: a header damaged
 *                                   in transit (a flipped frame id) is refused, never written
 *                                   at the wrong index
 *   84   4   payload_crc         with SN_FLAG_PAYLOAD_CRC: CRC-32C of the payload part, checked by
 *                                   every receiving stage (optional: `--checksum`); else 0
 *   88   8   reserved1[1]        must be 0
 *
 * Version 2 added `crc` (version 1 had 16 reserved bytes there), version 3 `payload_crc` (a
 * reserved word before); nodes of different versions never mix: a reader refuses any other
 * version by name.
 *
 * All functions return 0 on success or one of the negative SN_E* codes below; they never allocate
 * and never read or write outside the buffer lengths they are given.
 */
#ifndef STREAM_NODE_FRAME_HEADER_H
#define STREAM_NODE_FRAME_HEADER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SN_HEADER_MAGIC 0x52464E53u /* bytes 'S' 'N' 'F' 'R' */
#define SN_HEADER_VERSION 3
#define SN_HEADER_SIZE 96
#define SN_MAX_DIMS 4
#define SN_HEADER_RESERVED_WORDS 1 /* uint64_t words in reserved1; all 0 */

typedef enum sn_msg_type {
    SN_MSG_START = 1,     /* run metadata (msgpack body); opens a run on a peer */
    SN_MSG_FRAME = 2,     /* one frame: header + array payload */
    SN_MSG_END = 3,       /* no more frames: frame_id = last id, body carries the count */
    SN_MSG_HEARTBEAT = 4, /* liveness; body may carry counters */
    SN_MSG_ABORT = 5,     /* the run is abandoned; body carries the reason */
    SN_MSG_HELLO = 6,     /* peer -> hub: who I am (role, name) */
    SN_MSG_READY = 7,     /* peer -> hub: my links are up for run_id */
    SN_MSG_DRAINED = 8,   /* collector -> hub: every frame up to END accounted for */
    SN_MSG_FINISH = 9,    /* hub -> peer: the run is over, report and exit */
    SN_MSG_DONE = 10,     /* peer -> hub: final counters */
    SN_MSG_CREDIT = 11,   /* worker -> dispatcher (reliable mode): frame_id = frames it can take */
    SN_MSG_ACK = 12,      /* collector -> hub (reliable mode): body lists the ids written */
    SN_MSG_TYPE_MAX = 12
} sn_msg_type;

typedef enum sn_dtype {
    SN_DTYPE_NONE = 0,
    SN_DTYPE_UINT8 = 1,
    SN_DTYPE_UINT16 = 2,
    SN_DTYPE_UINT32 = 3,
    SN_DTYPE_UINT64 = 4,
    SN_DTYPE_INT8 = 5,
    SN_DTYPE_INT16 = 6,
    SN_DTYPE_INT32 = 7,
    SN_DTYPE_INT64 = 8,
    SN_DTYPE_FLOAT32 = 9,
    SN_DTYPE_FLOAT64 = 10,
    SN_DTYPE_MAX = 10
} sn_dtype;

typedef enum sn_encoding {
    SN_ENC_RAW = 0,   /* payload is the array's bytes, C order */
    SN_ENC_BSLZ4 = 1, /* payload is an HDF5 filter-32008 (bitshuffle + LZ4) chunk */
    SN_ENC_MSGPACK = 2, /* payload is a msgpack document (control messages) */
    SN_ENC_MAX = 2
} sn_encoding;

enum {
    SN_FLAG_PARTIAL = 1u << 0, /* some of the frame's data never arrived (filled with a defined value) */
    SN_FLAG_RESENT = 1u << 1,  /* a re-dispatched copy of a frame */
    SN_FLAG_FAILED = 1u << 2,  /* no data: processing failed; the msgpack payload says why */
    SN_FLAG_PAYLOAD_CRC = 1u << 3 /* payload_crc holds the payload's CRC-32C */
};

/* Error codes: negative, stable, documented. */
enum {
    SN_OK = 0,
    SN_ETRUNCATED = -1, /* fewer than SN_HEADER_SIZE bytes */
    SN_EMAGIC = -2,     /* magic is not SN_HEADER_MAGIC: not a stream-node message */
    SN_EVERSION = -3,   /* a header version this build does not speak */
    SN_EHSIZE = -4,     /* header_size field differs from SN_HEADER_SIZE */
    SN_ETYPE = -5,      /* unknown msg_type */
    SN_EDTYPE = -6,     /* unknown dtype, or a FRAME without one */
    SN_EENCODING = -7,  /* unknown encoding */
    SN_ENDIM = -8,      /* ndim > SN_MAX_DIMS, a FRAME with ndim 0, a zero used dimension or a
                           non-zero unused one */
    SN_ESIZE = -9,      /* uncompressed_bytes != prod(shape) * itemsize */
    SN_EPAYLOAD = -10,  /* raw payload_bytes != uncompressed_bytes */
    SN_ERESERVED = -11, /* reserved fields not zero (or payload_crc without its flag) */
    SN_EBUFFER = -12,   /* output buffer smaller than SN_HEADER_SIZE */
    SN_ECRC = -13       /* crc does not match the header's bytes: damaged in transit */
};

typedef struct sn_frame_header {
    uint32_t magic;
    uint16_t version;
    uint16_t header_size;
    uint8_t msg_type;
    uint8_t dtype;
    uint8_t encoding;
    uint8_t ndim;
    uint32_t flags;
    uint64_t run_id;
    uint64_t frame_id;
    uint32_t shape[SN_MAX_DIMS];
    uint64_t payload_bytes;
    uint64_t uncompressed_bytes;
    uint64_t timestamp_ns;
    uint32_t sender;
    uint32_t parts;
    uint32_t crc;
    uint32_t payload_crc;
    uint64_t reserved1[SN_HEADER_RESERVED_WORDS];
} sn_frame_header;

/* Bytes per element of a dtype code, 0 for an unknown code. */
size_t sn_dtype_itemsize(uint8_t dtype);

/* Checks the invariants listed with the error codes; 0 if h may be sent. */
int sn_header_validate(const sn_frame_header *h);

/* Validates h, then writes its SN_HEADER_SIZE-byte wire form to out, crc computed (h->crc is
   ignored). */
int sn_header_pack(const sn_frame_header *h, uint8_t *out, size_t out_len);

/* Reads and validates a wire header from buf, its crc last (so a malformed field is named);
   out is written only on success. */
int sn_header_parse(const uint8_t *buf, size_t len, sn_frame_header *out);

/* A static, human-readable description of an SN_E* code. */
const char *sn_header_strerror(int code);

#ifdef __cplusplus
}
#endif
#endif
