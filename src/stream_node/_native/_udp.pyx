# cython: language_level=3, boundscheck=False, wraparound=False
"""The UDP receiver's and sender's C API, one call per C function, the GIL released while C runs.

Private: `stream_node.origins.udp` is the module people use. Errors become exceptions here.
"""
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, strerror

from stream_node._native._ring cimport RingHandle
from stream_node._native.udp_receiver cimport *

from stream_node.model.errors import ConfigError

HEADER_BYTES = SN_UDP_HEADER_BYTES
MAX_MODULES = SN_UDP_MAX_MODULES
MAX_BATCH = SN_UDP_MAX_BATCH
MAX_JUMP = SN_UDP_MAX_JUMP
EV_PARTIAL = SN_UDP_EV_PARTIAL
EV_MISSING = SN_UDP_EV_MISSING
EV_RING_FULL = SN_UDP_EV_RING_FULL
EV_RESTART = SN_UDP_EV_RESTART

cdef sn_udp_geometry _geometry(tuple geo) except *:
    cdef sn_udp_geometry g
    (g.packets_per_frame, g.payload_bytes, g.module_rows, g.module_cols, g.bytes_per_pixel,
     g.detector_type, g.header_version) = geo
    return g


cdef class Receiver:
    """Receiving threads writing into the slots of `ring`; see udp_receiver.h."""

    cdef sn_udp_receiver *r
    cdef RingHandle ring
    cdef uint32_t n_modules
    cdef readonly uint32_t event_bytes

    def __cinit__(self, RingHandle ring, tuple geometry, str host, list ports, tuple grid,
                  list cpus, int64_t rcvbuf_bytes, double frame_timeout_s, uint32_t window,
                  uint32_t batch, uint64_t first_frame, uint64_t n_frames, uint64_t run_id,
                  uint32_t fill, uint32_t max_events, double coalesce_s):
        cdef sn_udp_config cfg
        memset(&cfg, 0, sizeof(cfg))
        if not 0 < len(ports) <= SN_UDP_MAX_MODULES:
            raise ConfigError(f"udp: 1 to {SN_UDP_MAX_MODULES} module ports, got {len(ports)}")
        cfg.geo = _geometry(geometry)
        cfg.n_modules = len(ports)
        cfg.grid_rows, cfg.grid_cols = grid
        cdef bytes bhost = host.encode()
        if len(bhost) >= SN_UDP_HOST_BYTES:
            raise ConfigError(f"udp: host {host!r} is too long")
        memcpy(cfg.host, <char *>bhost, len(bhost) + 1)
        for i in range(len(ports)):
            cfg.ports[i] = ports[i]
            cfg.cpus[i] = cpus[i] if i < len(cpus) else SN_UDP_NO_CPU
        cfg.rcvbuf_bytes = rcvbuf_bytes
        cfg.frame_timeout_ns = <int64_t>(frame_timeout_s * 1e9)
        cfg.window = window
        cfg.batch = batch
        cfg.first_frame = first_frame
        cfg.n_frames = n_frames
        cfg.run_id = run_id
        cfg.fill = fill
        cfg.max_events = max_events
        cfg.coalesce_ns = <int64_t>(coalesce_s * 1e9)
        self.ring = ring
        self.n_modules = cfg.n_modules
        cdef int rc = sn_udp_open(&self.r, &cfg, ring.r)
        if rc == SN_UDP_ESYS:
            raise ConfigError(f"udp: cannot bind {host} ports {ports}: {strerror(errno).decode()}")
        if rc != SN_UDP_OK:
            raise ConfigError(f"udp: {sn_udp_strerror(rc).decode()} (geometry {geometry}, "
                              f"grid {grid}, window {window}, batch {batch}, ring slots and "
                              "slot size must hold the window's frames)")
        self.event_bytes = sn_udp_event_bytes(self.r)

    def __dealloc__(self):
        if self.r != NULL:
            with nogil:
                sn_udp_close(self.r)
            self.r = NULL

    def start(self):
        if sn_udp_start(self.r) != SN_UDP_OK:
            raise ConfigError(f"udp: cannot start receiving threads: {strerror(errno).decode()}")

    def stop(self):
        """Join the threads, then publish or report every frame still being assembled."""
        with nogil:
            sn_udp_stop(self.r)

    def stats(self):
        cdef sn_udp_stats st
        with nogil:
            sn_udp_stats_get(self.r, &st)
        modules = []
        for i in range(self.n_modules):
            modules.append(<dict>st.modules[i])  # Cython converts the C struct
        return {"frames_complete": st.frames_complete, "frames_partial": st.frames_partial,
                "frames_missing": st.frames_missing, "frames_ring_full": st.frames_ring_full,
                "events_lost": st.events_lost, "base": st.base, "low": st.low,
                "highest": st.highest, "started": bool(st.started), "done": bool(st.done),
                "rcvbuf_granted": st.rcvbuf_granted, "modules": modules}

    def take_events(self, uint8_t[::1] buf not None):
        """Move queued events into `buf` (records of `event_bytes`); returns how many."""
        cdef uint32_t room = buf.shape[0] // self.event_bytes
        cdef int n
        if room == 0:
            return 0
        with nogil:
            n = sn_udp_take_events(self.r, &buf[0], room)
        return n


def send(str host, list ports, tuple geometry, const uint16_t[:, ::1] rows_cols not None,
         const uint8_t[:, ::1] images not None, const uint32_t[::1] sched_module not None,
         const uint64_t[::1] sched_frame not None, const uint32_t[::1] sched_packet not None,
         double rate_pps=0.0, int64_t sndbuf=0):
    """Send the scheduled packets (see sn_udp_send); returns how many went out."""
    cdef sn_udp_geometry g = _geometry(geometry)
    cdef uint16_t cports[SN_UDP_MAX_MODULES]
    cdef uint32_t n_modules = len(ports)
    cdef uint64_t n = sched_module.shape[0]
    if not 0 < n_modules <= SN_UDP_MAX_MODULES or rows_cols.shape[0] < n_modules:
        raise ConfigError(f"udp send: 1 to {SN_UDP_MAX_MODULES} ports, and a (row, column) "
                          "for each")
    if images.shape[0] < n_modules or images.shape[1] != <Py_ssize_t>(g.packets_per_frame * g.payload_bytes):
        raise ConfigError("udp send: one module image of packets * payload bytes per port")
    if sched_frame.shape[0] != n or sched_packet.shape[0] != n:
        raise ConfigError("udp send: schedule columns differ in length")
    for i in range(n_modules):
        cports[i] = ports[i]
    cdef bytes bhost = host.encode()
    cdef const char *chost = bhost
    cdef int64_t sent
    if n == 0:
        return 0
    with nogil:
        sent = sn_udp_send(chost, cports, n_modules, &g, &rows_cols[0, 0], &images[0, 0],
                           &sched_module[0], &sched_frame[0], &sched_packet[0], n, rate_pps,
                           sndbuf)
    if sent < 0:
        raise OSError(errno, f"udp send: {sn_udp_strerror(sent).decode()}: "
                             f"{strerror(errno).decode()}")
    return sent
