# cython: language_level=3
# Declarations of native/include/stream_node/udp_receiver.h, one to one.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from stream_node._native.ring cimport sn_ring


cdef extern from "stream_node/udp_receiver.h" nogil:
    enum:
        SN_UDP_HEADER_BYTES
        SN_UDP_MAX_MODULES
        SN_UDP_MAX_BATCH
        SN_UDP_MAX_JUMP
        SN_UDP_HOST_BYTES
        SN_UDP_NO_CPU

    # Error codes (negative).
    enum:
        SN_UDP_OK
        SN_UDP_EINVAL
        SN_UDP_ESYS
        SN_UDP_ENOMEM
        SN_UDP_ESTATE

    enum:
        SN_UDP_EV_PARTIAL
        SN_UDP_EV_MISSING
        SN_UDP_EV_RING_FULL
        SN_UDP_EV_RESTART

    ctypedef struct sn_udp_geometry:
        uint32_t packets_per_frame
        uint32_t payload_bytes
        uint32_t module_rows
        uint32_t module_cols
        uint32_t bytes_per_pixel
        uint8_t detector_type
        uint8_t header_version

    ctypedef struct sn_udp_config:
        sn_udp_geometry geo
        uint32_t n_modules
        uint32_t grid_rows
        uint32_t grid_cols
        char host[SN_UDP_HOST_BYTES]
        uint16_t ports[SN_UDP_MAX_MODULES]
        int32_t cpus[SN_UDP_MAX_MODULES]
        int64_t rcvbuf_bytes
        int64_t frame_timeout_ns
        uint32_t window
        uint32_t batch
        uint64_t first_frame
        uint64_t n_frames
        uint64_t run_id
        uint32_t fill
        uint32_t max_events
        int64_t coalesce_ns

    ctypedef struct sn_udp_event:
        uint64_t frame
        uint32_t kind
        uint32_t parts

    ctypedef struct sn_udp_module_stats:
        uint64_t packets
        uint64_t bytes
        uint64_t malformed
        uint64_t foreign
        uint64_t unknown_module
        uint64_t duplicates
        uint64_t late
        uint64_t beyond
        uint64_t ring_full
        uint64_t moved
        uint64_t restarts
        uint64_t batches

    ctypedef struct sn_udp_stats:
        uint64_t frames_complete
        uint64_t frames_partial
        uint64_t frames_missing
        uint64_t frames_ring_full
        uint64_t events_lost
        uint64_t base
        uint64_t low
        uint64_t highest
        uint32_t started
        uint32_t done
        int64_t rcvbuf_granted
        sn_udp_module_stats modules[SN_UDP_MAX_MODULES]

    ctypedef struct sn_udp_receiver:
        pass

    int sn_udp_open(sn_udp_receiver **out, const sn_udp_config *cfg, sn_ring *ring)
    int sn_udp_start(sn_udp_receiver *r)
    int sn_udp_stop(sn_udp_receiver *r)
    void sn_udp_stats_get(sn_udp_receiver *r, sn_udp_stats *out)
    uint32_t sn_udp_event_bytes(const sn_udp_receiver *r)
    int sn_udp_take_events(sn_udp_receiver *r, uint8_t *buf, uint32_t max)
    void sn_udp_close(sn_udp_receiver *r)
    const char *sn_udp_strerror(int code)
    int64_t sn_udp_send(const char *host, const uint16_t *ports, uint32_t n_modules,
                        const sn_udp_geometry *geo, const uint16_t *rows_cols,
                        const uint8_t *images, const uint32_t *sched_module,
                        const uint64_t *sched_frame, const uint32_t *sched_packet, uint64_t n,
                        double rate_pps, int64_t sndbuf)
