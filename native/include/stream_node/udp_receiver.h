/*
 * stream-node UDP receiver: detector packets (SLS-detector format) straight into ring slots.
 *
 * One thread per module port receives batches with recvmmsg(). Before each batch it predicts
 * where the next packets belong (the packet after the last one, in the same or the next frame)
 * and points each message's payload iovecs at that place in the frame's ring slot, so the
 * kernel's copy is the only one. A packet that arrives out of the predicted order is moved to
 * its place afterwards (counted as `moved`); a frame's slot is never published while a thread
 * may still be receiving into it (per-frame pins).
 *
 * Frames are assembled by frame number from every module into one slot (module (row, column)
 * from the packet header decides its place in the full image). A frame is published when all
 * its packets arrived, or as PARTIAL (missing packets filled with `fill`, a bitmap in the
 * receiver's event queue) when it falls out of the assembly window (a frame `window` numbers
 * newer arrived) or waited `frame_timeout_ns` for its last packets. Frame numbers with no packet
 * are reported MISSING; frames that found no free slot RING_FULL; a module whose frame counter
 * went back RESTART. Malformed, foreign and unknown-module packets are counted and never touch
 * a slot.
 *
 * Packet layout: the 48-byte SLS detector header (little-endian), then the payload:
 *   u64 frame number, u32 exposure length, u32 packet number, u64 bunch id, u64 timestamp,
 *   u16 module id, u16 row, u16 column, u16 reserved, u32 debug, u16 round-robin number,
 *   u8 detector type, u8 header version.
 *
 * Functions return 0 or a negative SN_UDP_E* (errno kept for SN_UDP_ESYS).
 */
#ifndef STREAM_NODE_UDP_RECEIVER_H
#define STREAM_NODE_UDP_RECEIVER_H

#include <stdint.h>

#include "stream_node/ring.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SN_UDP_HEADER_BYTES 48
#define SN_UDP_MAX_MODULES 32
#define SN_UDP_MAX_BATCH 256
#define SN_UDP_MAX_JUMP (1u << 20) /* a frame number this far past the highest is not believed */
#define SN_UDP_HOST_BYTES 64 /* sn_udp_config.host, NUL included */
#define SN_UDP_NO_CPU (-1)   /* sn_udp_config.cpus[i]: do not pin (any negative value) */

enum {
    SN_UDP_OK = 0,
    SN_UDP_EINVAL = -201, /* a bad configuration value */
    SN_UDP_ESYS = -202,   /* a system call failed (socket, bind, thread); errno says why */
    SN_UDP_ENOMEM = -203,
    SN_UDP_ESTATE = -204  /* started twice, or asked for events after close */
};

/* What a detector's packets look like: a preset per detector, data not code. */
typedef struct sn_udp_geometry {
    uint32_t packets_per_frame; /* per module */
    uint32_t payload_bytes;     /* per packet; a multiple of one module row */
    uint32_t module_rows, module_cols;
    uint32_t bytes_per_pixel;   /* 1, 2 or 4 */
    uint8_t detector_type;      /* the header's detector type a packet must carry */
    uint8_t header_version;     /* and its header version */
} sn_udp_geometry;

typedef struct sn_udp_config {
    sn_udp_geometry geo;
    uint32_t n_modules;
    uint32_t grid_rows, grid_cols;  /* modules in the full image; a header's (row, column) */
    char host[SN_UDP_HOST_BYTES];   /* IPv4 address to bind */
    uint16_t ports[SN_UDP_MAX_MODULES];
    int32_t cpus[SN_UDP_MAX_MODULES]; /* pin module i's thread to this CPU, or SN_UDP_NO_CPU */
    int64_t rcvbuf_bytes;           /* SO_RCVBUF(FORCE) asked for each socket */
    int64_t frame_timeout_ns;       /* a frame waits at most this for its last packets */
    uint32_t window;                /* frames assembled at once (each holds a claimed slot) */
    uint32_t batch;                 /* messages per recvmmsg */
    uint64_t first_frame;           /* frame number of frame id 0; 0: the first one seen */
    uint64_t n_frames;              /* frames in the run; 0: until stopped */
    uint64_t run_id;
    uint32_t fill;                  /* value of pixels whose packet never came */
    uint32_t max_events;            /* event queue capacity (partial/missing records) */
    int64_t coalesce_ns;            /* after a call that got under batch/4 packets, wait this
                                       long for more (fewer wake-ups; the socket buffer must
                                       hold that long at the line rate); 0: never */
} sn_udp_config;

enum { SN_UDP_EV_PARTIAL = 1, SN_UDP_EV_MISSING = 2, SN_UDP_EV_RING_FULL = 3,
       SN_UDP_EV_RESTART = 4 };

/* An event record: this header, then a bitmap of n_modules * packets_per_frame bits (bit set:
   packet lost; bit k = module k / ppf, packet k % ppf). MISSING: `parts` consecutive frames from
   `frame` had no packet. RESTART: frame = the module's new frame number, parts = its index. */
typedef struct sn_udp_event {
    uint64_t frame;  /* detector frame number */
    uint32_t kind;
    uint32_t parts;  /* packets that arrived */
} sn_udp_event;

typedef struct sn_udp_module_stats {
    uint64_t packets;        /* placed in a frame */
    uint64_t bytes;
    uint64_t malformed;      /* wrong size or packet number out of range */
    uint64_t foreign;        /* another detector type or header version, or an absurd frame
                                number (more than SN_UDP_MAX_JUMP past the highest) */
    uint64_t unknown_module; /* (row, column) outside the module grid */
    uint64_t duplicates;
    uint64_t late;           /* for a frame already published or before the run */
    uint64_t beyond;         /* for a frame after the run's last */
    uint64_t ring_full;      /* dropped: their frame found no free slot */
    uint64_t moved;          /* arrived out of the predicted order: copied once more */
    uint64_t restarts;
    uint64_t batches;
} sn_udp_module_stats;

typedef struct sn_udp_stats {
    uint64_t frames_complete, frames_partial, frames_missing, frames_ring_full;
    uint64_t events_lost;    /* records the queue had no room for (frames still counted) */
    uint64_t base;           /* frame number of frame id 0 (valid when started != 0) */
    uint64_t low;            /* lowest frame number not yet published or reported */
    uint64_t highest;        /* highest frame number with a packet */
    uint32_t started, done;  /* a packet arrived; every frame of the run was resolved */
    int64_t rcvbuf_granted;  /* what the kernel gave (SO_RCVBUF as read back) */
    sn_udp_module_stats modules[SN_UDP_MAX_MODULES];
} sn_udp_stats;

typedef struct sn_udp_receiver sn_udp_receiver;

/* Bind every module port (errors name the port); nothing runs until start. */
int sn_udp_open(sn_udp_receiver **out, const sn_udp_config *cfg, sn_ring *ring);
int sn_udp_start(sn_udp_receiver *r);
/* Stop and join the threads; then publish or report every frame still open. */
int sn_udp_stop(sn_udp_receiver *r);
void sn_udp_stats_get(sn_udp_receiver *r, sn_udp_stats *out);
uint32_t sn_udp_event_bytes(const sn_udp_receiver *r);
/* Move up to max queued events into buf (max * sn_udp_event_bytes bytes); returns how many. */
int sn_udp_take_events(sn_udp_receiver *r, uint8_t *buf, uint32_t max);
void sn_udp_close(sn_udp_receiver *r);
const char *sn_udp_strerror(int code);

/* Test and benchmark sender: packets of `schedule` (module, frame, packet per row) in order, to
   host:ports[module], at `rate_pps` packets per second (0: as fast as sendmmsg goes). Payloads
   come from `images` (n_modules module frames) with the frame number stamped into the first 8
   bytes of every packet's payload. Returns packets sent or a negative code. */
int64_t sn_udp_send(const char *host, const uint16_t *ports, uint32_t n_modules,
                    const sn_udp_geometry *geo, const uint16_t *rows_cols, const uint8_t *images,
                    const uint32_t *sched_module, const uint64_t *sched_frame,
                    const uint32_t *sched_packet, uint64_t n, double rate_pps, int64_t sndbuf);

#ifdef __cplusplus
}
#endif
#endif
