"""The run contract (model/contract.py): START typed, its wire form, and what a frame must be."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_node.model.contract import Dispatch, FrameGeometry, RunContract, frame_nbytes
from stream_node.model.errors import ProtocolError
from stream_node.model.frame import (
    Encoding,
    FrameHeader,
    MsgType,
    control_message,
    decode_body,
    dtype_code,
    frame_header,
)

RUN = 0x5EED


def contract(**changes) -> RunContract:
    base = dict(
        output=FrameGeometry((8, 16), np.dtype("uint16")),
        input=FrameGeometry((16, 32), np.dtype("uint16")),
        frames=10, first_frame_id=100, kernels=({"kernel": "bin2x2"},), compression="none",
        dispatch=Dispatch(), per_frame_columns=("exposure_ns",),
        detector={"description": "test detector", "x_pixel_size": {"value": 7.5e-5,
                                                                  "units": "m"}},
        rate=50.0, workers=3, software_version="9.9.9",
        origin={"source": "synthetic:", "seed": 4})
    base.update(changes)
    return RunContract(**base)


def body(**changes) -> dict:
    wire = contract().to_wire()
    for key, value in changes.items():
        if value is KeyError:
            del wire[key]
        else:
            wire[key] = value
    return wire


# -- the wire form -----------------------------------------------------------------------------

def test_a_contract_survives_its_wire_form_unchanged():
    c = contract()
    assert RunContract.from_wire(c.to_wire()) == c


def test_a_contract_survives_the_msgpack_control_message_that_carries_start():
    c = contract(dispatch=Dispatch("credit", 6), compression="bslz4")
    header_bytes, packed = control_message(MsgType.START, RUN, c.to_wire())
    back = RunContract.from_wire(decode_body(FrameHeader.parse(header_bytes), packed))
    assert back == c
    assert back.dispatch.reliable and back.dispatch.credit == 6
    assert back.encoding == Encoding.BSLZ4


def test_the_wire_form_is_the_plain_json_object_start_always_carried():
    wire = contract().to_wire()
    assert json.loads(json.dumps(wire)) == wire
    assert wire["shape"] == [8, 16] and wire["dtype"] == "uint16"
    assert wire["input"] == {"shape": [16, 32], "dtype": "uint16", "encoding": "raw"}
    assert wire["dispatch"] == {"mode": "push"}
    # The origin's own keys sit at the top level, as before the contract was typed.
    assert wire["source"] == "synthetic:" and wire["seed"] == 4


def test_an_unknown_frame_count_travels_as_minus_one_and_comes_back_as_none():
    c = contract(frames=None)
    assert c.to_wire()["frames"] == -1
    assert RunContract.from_wire(c.to_wire()).frames is None


def test_a_contract_without_detector_metadata_sends_no_detector_key():
    wire = contract(detector=None).to_wire()
    assert "detector" not in wire
    assert RunContract.from_wire(wire).detector is None


def test_a_minimal_start_gets_the_documented_defaults():
    c = RunContract.from_wire({"shape": [4, 4], "dtype": "float32"})
    geometry = FrameGeometry((4, 4), np.dtype("float32"))
    assert c.output == c.input == geometry
    assert (c.frames, c.first_frame_id, c.kernels, c.compression) == (None, 0, (), "none")
    assert c.dispatch == Dispatch("push", 4) and not c.dispatch.reliable
    assert (c.per_frame_columns, c.detector, c.rate, c.workers) == ((), None, 0.0, 0)
    assert c.origin == {}


@pytest.mark.parametrize("encoding", list(Encoding))
def test_frame_geometry_round_trips_every_encoding(encoding):
    g = FrameGeometry((3, 5, 7), np.dtype("float64"), encoding)
    assert FrameGeometry.from_wire(g.to_wire(), "input") == g
    assert g.nbytes == 3 * 5 * 7 * 8


def test_dispatch_wire_form_says_credit_only_in_reliable_mode():
    assert Dispatch().to_wire() == {"mode": "push"}
    assert Dispatch("credit", 2).to_wire() == {"mode": "credit", "credit": 2}
    assert Dispatch("credit").reliable and not Dispatch("push").reliable


def test_largest_frame_is_the_larger_of_input_and_output():
    c = contract()
    assert c.largest_frame_bytes == 16 * 32 * 2
    grown = contract(output=FrameGeometry((64, 64), np.dtype("float64")))
    assert grown.largest_frame_bytes == 64 * 64 * 8


# -- refusing a damaged START ------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "named"), [
    ({"shape": KeyError}, "output: no 'shape'"),
    ({"dtype": KeyError}, "output: no 'dtype'"),
    ({"input": {"dtype": "uint16"}}, "input: no 'shape'"),
    ({"input": {"shape": [4, 4]}}, "input: no 'dtype'"),
])
def test_a_start_lacking_a_geometry_field_is_refused_naming_it(changes, named):
    with pytest.raises(ProtocolError, match=named):
        RunContract.from_wire(body(**changes))


@pytest.mark.parametrize(("changes", "named"), [
    ({"shape": "512x1024"}, "output: bad shape/dtype/encoding"),
    ({"shape": 7}, "output: bad shape/dtype/encoding"),
    ({"dtype": "uint17"}, "output: bad shape/dtype/encoding"),
    ({"dtype": [1, 2]}, "output: bad shape/dtype/encoding"),
    ({"input": {"shape": [4, 4], "dtype": "uint16", "encoding": "zstd"}},
     "input: bad shape/dtype/encoding"),
    ({"shape": [0, 4]}, r"output: shape \(0, 4\) has no pixels"),
    ({"shape": []}, r"output: shape \(\) has no pixels"),
    ({"input": {"shape": [4, -1], "dtype": "uint16"}}, "input: shape .* has no pixels"),
])
def test_a_start_with_an_ill_typed_geometry_is_refused_naming_it(changes, named):
    with pytest.raises(ProtocolError, match=named):
        RunContract.from_wire(body(**changes))


@pytest.mark.parametrize(("changes", "named"), [
    ({"compression": "gzip"}, "unknown compression 'gzip'"),
    ({"dispatch": {"mode": "broadcast"}}, "bad dispatch"),
    ({"dispatch": {"mode": "credit", "credit": 0}}, "bad dispatch"),
])
def test_a_start_with_an_unknown_setting_is_refused_naming_it(changes, named):
    with pytest.raises(ProtocolError, match=named):
        RunContract.from_wire(body(**changes))


@pytest.mark.parametrize("wire", [[1, 2], "start", None, 42])
def test_a_start_body_that_is_not_an_object_is_refused(wire):
    with pytest.raises(ProtocolError, match="not an object"):
        RunContract.from_wire(wire)


@pytest.mark.parametrize(("key", "value"), [
    ("frames", "many"), ("first_frame_id", [1]), ("workers", "two"), ("rate", "fast"),
    ("kernels", 5), ("per_frame_columns", 5), ("detector", 5), ("dispatch", "credit"),
])
def test_an_ill_typed_scalar_field_is_a_protocol_error(key, value):
    with pytest.raises(ProtocolError, match="START"):
        RunContract.from_wire(body(**{key: value}))


@pytest.mark.parametrize(("key", "value"), [
    ("frames", "many"), ("workers", "two"), ("kernels", 5), ("dispatch", "credit"),
])
def test_an_ill_typed_scalar_field_is_named_in_the_error(key, value):
    with pytest.raises(ProtocolError, match=key):
        RunContract.from_wire(body(**{key: value}))


@pytest.mark.parametrize("value", [5, None])
def test_an_input_geometry_that_is_not_an_object_is_a_protocol_error(value):
    with pytest.raises(ProtocolError, match="input"):
        RunContract.from_wire(body(input=value))


# -- what a frame of the run must be -----------------------------------------------------------

def raw_header(contract_: RunContract, frame_id: int, shape=None, dtype=None) -> FrameHeader:
    out = contract_.output
    array = np.zeros(shape or out.shape, dtype or out.dtype)
    return frame_header(array, RUN, frame_id)


def test_a_frame_of_the_run_has_no_problem():
    c = contract()
    for frame_id in (100, 105, 109):
        header = raw_header(c, frame_id)
        assert c.frame_problem(header, header.payload_bytes) is None


def test_a_frame_of_another_shape_is_a_problem():
    c = contract()
    header = raw_header(c, 100, shape=(16, 8))
    assert "shape (16, 8)" in c.frame_problem(header, header.payload_bytes)


def test_a_frame_of_another_dtype_is_a_problem():
    c = contract()
    header = raw_header(c, 100, dtype=np.int16)
    problem = c.frame_problem(header, header.payload_bytes)
    assert f"dtype code {dtype_code(np.int16)}" in problem and "uint16" in problem


def test_a_compressed_frame_in_a_raw_run_is_a_problem():
    c = contract()
    header = FrameHeader(MsgType.FRAME, run_id=RUN, frame_id=100, shape=(8, 16),
                         dtype_code=dtype_code(np.uint16), encoding=Encoding.BSLZ4,
                         payload_bytes=77)
    assert "encoding" in c.frame_problem(header, 77)


def test_a_raw_frame_in_a_compressed_run_is_a_problem():
    c = contract(compression="bslz4")
    header = raw_header(c, 100)
    assert "encoding" in c.frame_problem(header, header.payload_bytes)


def test_a_compressed_frame_of_any_size_belongs_in_a_compressed_run():
    c = contract(compression="bslz4")
    header = FrameHeader(MsgType.FRAME, run_id=RUN, frame_id=101, shape=(8, 16),
                         dtype_code=dtype_code(np.uint16), encoding=Encoding.BSLZ4,
                         payload_bytes=33)
    assert c.frame_problem(header, 33) is None


def test_a_raw_payload_of_the_wrong_size_is_a_problem():
    c = contract()
    header = raw_header(c, 100)
    problem = c.frame_problem(header, header.payload_bytes - 2)
    assert f"payload has {8 * 16 * 2 - 2} bytes" in problem


@pytest.mark.parametrize("frame_id", [0, 99, 110, 2**63])
def test_an_id_outside_the_run_is_a_problem(frame_id):
    c = contract()
    header = raw_header(c, frame_id)
    assert "id outside the run's ids 100..109" in c.frame_problem(header, header.payload_bytes)


def test_a_run_of_unknown_length_takes_ids_up_to_a_window_beyond_the_highest():
    """Any id from the first on, up to MAX_ID_JUMP beyond the highest written: an absurd one
    (10**12 from a damaged detector header) is refused, not allocated for (issue #18)."""
    from stream_node.model.contract import MAX_ID_JUMP

    c = contract(frames=None)
    near = raw_header(c, 100 + 50 + MAX_ID_JUMP)
    assert c.frame_problem(near, near.payload_bytes, highest=50) is None
    late = raw_header(c, 10**12)
    assert "jumps more than" in c.frame_problem(late, late.payload_bytes, highest=50)
    early = raw_header(c, 99)
    assert "id outside the run's ids 100.." in c.frame_problem(early, early.payload_bytes)


# -- frame_nbytes --------------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "dtype"), [
    ((2**40, 2**40), "uint64"), ((2**31, 2**31, 4), "float32"), ((2**32, 2**32), np.uint16),
])
def test_frame_nbytes_of_a_huge_shape_is_exact_not_overflowed(shape, dtype):
    exact = np.dtype(dtype).itemsize
    for n in shape:
        exact *= n
    assert frame_nbytes(shape, dtype) == exact > 2**63
    assert isinstance(frame_nbytes(shape, dtype), int)


def test_frame_nbytes_takes_numpy_integers_and_dtype_forms():
    shape = (np.int32(512), np.uint64(1024))
    assert frame_nbytes(shape, np.uint16) == frame_nbytes((512, 1024), "uint16") == 2**20
    assert frame_nbytes((3,), np.dtype("float64")) == 24
