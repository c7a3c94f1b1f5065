"""stream-node: detector frames from source to HDF5, zero-copy, in parallel, none lost.

>>> import stream_node
>>> summary = stream_node.run_local_pipeline("demo.h5", frames=100)     # doctest: +SKIP
>>> run = stream_node.read_run("demo.h5")  # lazy: frames read when sliced # doctest: +SKIP
>>> run.frames.shape, run.missing, run.frames[7].max()                  # doctest: +SKIP
((100, 512, 1024), {}, 21)

The names below load on first use (PEP 562): `import stream_node` costs nothing, and importing
`stream_node.kernels` or the reader starts neither ZeroMQ nor the collector.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stream_node._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "Calibration": "kernels.calibration",
    "ChipLayout": "model.instrument",
    "Collector": "stages.collector",
    "CollectorConfig": "stages.collector",
    "ConfigError": "model.errors",
    "Consumer": "links.ring",
    "Encoding": "model.frame",
    "EndOfStream": "model.errors",
    "ExitCode": "model.errors",
    "DarkSeries": "kernels.dark",
    "FrameHeader": "model.frame",
    "Geometry": "model.geometry",
    "Instrument": "model.instrument",
    "JungfrauSimulator": "origins.jungfrau_sim",
    "KernelError": "model.errors",
    "LinkLimits": "links.transport",
    "Liveness": "links.control",
    "MsgType": "model.frame",
    "OutputExistsError": "model.errors",
    "PeerTimeout": "model.errors",
    "ProtocolError": "model.errors",
    "Ring": "links.ring",
    "RingError": "model.errors",
    "RingFrame": "links.ring",
    "RingTimeout": "model.errors",
    "Run": "storage.reader",
    "RunAborted": "model.errors",
    "RunContract": "model.contract",
    "RunSummary": "stages.source",
    "Source": "stages.source",
    "SourceConfig": "stages.source",
    "StorageError": "model.errors",
    "StreamNodeError": "model.errors",
    "SyntheticDetector": "origins.synthetic",
    "Worker": "stages.worker",
    "WorkerConfig": "stages.worker",
    "calibrate_darks": "kernels.dark",
    "frame_header": "model.frame",
    "payload_view": "model.frame",
    "query_status": "ops.status_client",
    "load_run": "storage.reader",
    "read_calibration": "kernels.calibration",
    "read_psi_gain_maps": "kernels.calibration",
    "read_run": "storage.reader",
    "run_local_pipeline": "deploy.demo",
    "stamped_id": "origins.synthetic",
    "subscribe": "ops.tap",
    "write_calibration": "kernels.calibration",
}

__all__ = [
    "Calibration",
    "ChipLayout",
    "Collector",
    "CollectorConfig",
    "ConfigError",
    "Consumer",
    "DarkSeries",
    "Encoding",
    "EndOfStream",
    "ExitCode",
    "FrameHeader",
    "Geometry",
    "Instrument",
    "JungfrauSimulator",
    "KernelError",
    "LinkLimits",
    "Liveness",
    "MsgType",
    "OutputExistsError",
    "PeerTimeout",
    "ProtocolError",
    "Ring",
    "RingError",
    "RingFrame",
    "RingTimeout",
    "Run",
    "RunAborted",
    "RunContract",
    "RunSummary",
    "Source",
    "SourceConfig",
    "StorageError",
    "StreamNodeError",
    "SyntheticDetector",
    "Worker",
    "WorkerConfig",
    "__version__",
    "calibrate_darks",
    "frame_header",
    "load_run",
    "payload_view",
    "query_status",
    "read_calibration",
    "read_psi_gain_maps",
    "read_run",
    "run_local_pipeline",
    "stamped_id",
    "subscribe",
    "write_calibration",
]

if TYPE_CHECKING:
    from stream_node.deploy.demo import run_local_pipeline
    from stream_node.kernels.calibration import (
        Calibration,
        read_calibration,
        read_psi_gain_maps,
        write_calibration,
    )
    from stream_node.kernels.dark import DarkSeries, calibrate_darks
    from stream_node.links.control import Liveness
    from stream_node.links.ring import Consumer, Ring, RingFrame
    from stream_node.links.transport import LinkLimits
    from stream_node.model.contract import RunContract
    from stream_node.model.errors import (
        ConfigError,
        EndOfStream,
        ExitCode,
        KernelError,
        OutputExistsError,
        PeerTimeout,
        ProtocolError,
        RingError,
        RingTimeout,
        RunAborted,
        StorageError,
        StreamNodeError,
    )
    from stream_node.model.frame import Encoding, FrameHeader, MsgType, frame_header, payload_view
    from stream_node.model.geometry import Geometry
    from stream_node.model.instrument import ChipLayout, Instrument
    from stream_node.ops.status_client import query_status
    from stream_node.ops.tap import subscribe
    from stream_node.origins.jungfrau_sim import JungfrauSimulator
    from stream_node.origins.synthetic import SyntheticDetector, stamped_id
    from stream_node.stages.collector import Collector, CollectorConfig
    from stream_node.stages.source import RunSummary, Source, SourceConfig
    from stream_node.stages.worker import Worker, WorkerConfig
    from stream_node.storage.reader import Run, load_run, read_run


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stream_node' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"stream_node.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
