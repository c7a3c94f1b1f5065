import numpy as np
import pytest

from stream_node import ConfigError, ProtocolError, SyntheticDetector, stamped_id


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_frames_are_a_pure_function_of_their_id(dtype):
    a = SyntheticDetector((64, 128), dtype, seed=3)
    b = SyntheticDetector((64, 128), dtype, seed=3)
    for frame_id in (0, 1, 17, 2**40):
        frame = a.frame(frame_id)
        assert frame.dtype == np.dtype(dtype) and frame.shape == (64, 128)
        assert frame.tobytes() == b.frame(frame_id).tobytes()
        assert stamped_id(frame) == frame_id
    assert a.frame(1).tobytes() != a.frame(2).tobytes()
    assert a.frame(0).tobytes() != SyntheticDetector((64, 128), dtype, seed=4).frame(0).tobytes()


def test_content_is_poisson_photon_counts():
    det = SyntheticDetector((256, 256), "uint32", mean_photons=3.0)
    pixels = det.frame(5).ravel()[4:].astype(float)  # skip the stamped id
    assert abs(pixels.mean() - 3.0) < 0.05 and abs(pixels.var() - 3.0) < 0.1


def test_frame_fills_a_preallocated_buffer():
    det = SyntheticDetector((8, 8), "uint16")
    out = np.empty((8, 8), np.uint16)
    assert det.frame(9, out=out) is out and stamped_id(out) == 9


def test_bad_geometry_and_dtype_are_refused():
    with pytest.raises(ConfigError):
        SyntheticDetector((0, 4))
    with pytest.raises(ConfigError, match="8 bytes"):
        SyntheticDetector((1, 2), "uint16")
    with pytest.raises(ProtocolError):
        SyntheticDetector((4, 4), "complex64")


def test_frames_do_not_depend_on_the_order_they_are_asked_for():
    """The pool is drawn on first use, in order: a run asking for frame 7 first gets the same
    bytes as one that drew the whole pool at start (as every other process does)."""
    first, second = SyntheticDetector((64, 32), seed=5), SyntheticDetector((64, 32), seed=5)
    ids = [7, 0, 3, 100, 5, 1]
    late = {i: first.frame(i).tobytes() for i in ids}
    early = {i: second.frame(i).tobytes() for i in sorted(ids)}
    assert late == early
