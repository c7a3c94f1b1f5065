from collections.abc import Sequence
from typing import ClassVar

from typing_extensions import Buffer

HEADER_SIZE: int
HEADER_VERSION: int
MAX_DIMS: int

def itemsize(dtype_code: int) -> int: ...

class FrameHeader:
    sender: int
    __hash__: ClassVar[None]  # type: ignore[assignment]
    def __init__(
        self,
        msg_type: int,
        run_id: int = 0,
        frame_id: int = 0,
        shape: Sequence[int] = (),
        dtype_code: int = 0,
        encoding: int = 0,
        payload_bytes: int | None = None,
        timestamp_ns: int = 0,
        flags: int = 0,
        sender: int = 0,
        parts: int = 0,
    ) -> None: ...
    @staticmethod
    def parse(buf: Buffer) -> FrameHeader: ...
    def pack(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    @property
    def msg_type(self) -> int: ...
    @property
    def run_id(self) -> int: ...
    @property
    def frame_id(self) -> int: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype_code(self) -> int: ...
    @property
    def encoding(self) -> int: ...
    @property
    def payload_bytes(self) -> int: ...
    @property
    def uncompressed_bytes(self) -> int: ...
    @property
    def timestamp_ns(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def parts(self) -> int: ...
