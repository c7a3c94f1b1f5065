from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
from typing_extensions import Self

from stream_node._native._ring import RingHandle

# packets_per_frame, payload_bytes, module_rows, module_cols, bytes_per_pixel, detector_type,
# header_version (sn_udp_geometry)
_Geometry: TypeAlias = tuple[int, int, int, int, int, int, int]

HEADER_BYTES: int
MAX_MODULES: int
MAX_BATCH: int
MAX_JUMP: int
EV_PARTIAL: int
EV_MISSING: int
EV_RING_FULL: int
EV_RESTART: int

class Receiver:
    @property
    def event_bytes(self) -> int: ...
    def __new__(
        cls,
        ring: RingHandle,
        geometry: _Geometry,
        host: str,
        ports: list[int],
        grid: tuple[int, int],
        cpus: list[int],
        rcvbuf_bytes: int,
        frame_timeout_s: float,
        window: int,
        batch: int,
        first_frame: int,
        n_frames: int,
        run_id: int,
        fill: int,
        max_events: int,
        coalesce_s: float,
    ) -> Self: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def take_events(self, buf: npt.NDArray[np.uint8]) -> int: ...

def send(
    host: str,
    ports: list[int],
    geometry: _Geometry,
    rows_cols: npt.NDArray[np.uint16],
    images: npt.NDArray[np.uint8],
    sched_module: npt.NDArray[np.uint32],
    sched_frame: npt.NDArray[np.uint64],
    sched_packet: npt.NDArray[np.uint32],
    rate_pps: float = 0.0,
    sndbuf: int = 0,
) -> int: ...
