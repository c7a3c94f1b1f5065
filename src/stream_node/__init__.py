"""stream-node: detector frames from source to HDF5, zero-copy, in parallel, none lost.

>>> import stream_node
>>> summary = stream_node.run_local_pipeline("demo.h5", frames=100)     # doctest: +SKIP
>>> run = stream_node.read_run("demo.h5")                               # doctest: +SKIP
>>> run.frames.shape, run.missing                                       # doctest: +SKIP
((100, 512, 1024), {})
"""

__version__ = "0.1.0"

from stream_node.collector import Collector, CollectorConfig
from stream_node.control import Liveness
from stream_node.demo import run_local_pipeline
from stream_node.errors import (
    ConfigError,
    EndOfStream,
    ExitCode,
    OutputExistsError,
    PeerTimeout,
    ProtocolError,
    RingError,
    RingTimeout,
    RunAborted,
    StorageError,
    StreamNodeError,
)
from stream_node.frame import Encoding, FrameHeader, MsgType, frame_header, payload_view
from stream_node.ring import Consumer, Ring, RingFrame
from stream_node.run_file import Run, read_run
from stream_node.source import RunSummary, Source, SourceConfig
from stream_node.status import query_status
from stream_node.synthetic import SyntheticDetector, stamped_id
from stream_node.tap import subscribe
from stream_node.transport import LinkLimits
from stream_node.worker import Worker, WorkerConfig

__all__ = [
    "Collector",
    "CollectorConfig",
    "ConfigError",
    "Consumer",
    "Encoding",
    "EndOfStream",
    "ExitCode",
    "FrameHeader",
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
    "RunSummary",
    "Source",
    "SourceConfig",
    "StorageError",
    "StreamNodeError",
    "SyntheticDetector",
    "Worker",
    "WorkerConfig",
    "__version__",
    "frame_header",
    "payload_view",
    "query_status",
    "read_run",
    "run_local_pipeline",
    "stamped_id",
    "subscribe",
]
