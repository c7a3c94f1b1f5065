"""Every kind of file stream-node writes opens, bit-exact, in HDF5 1.10, 1.12, 1.14 and 2.0.

- HDF5 2.0: the h5py this package installs.
- HDF5 1.12 and 1.14: older h5py wheels (3.8.0 bundles 1.12.2, 3.14.0 bundles 1.14.6), each in
  a virtual environment this test makes (kept under ~/.cache between runs).
- HDF5 1.10: the distribution's command-line tools (`h5dump` from hdf5-tools 1.10) with the
  distribution's bitshuffle filter plugin (Debian's `bitshuffle` package), as DIALS, XDS/durin
  and albula users have them.

File kinds: one file raw and bitshuffle/LZ4 compressed, rotated data files under a virtual
dataset master, and a file a collector resumed after its predecessor died. The writer always
switches to SWMR, so each is a SWMR file too. A control case proves the check has teeth: the
same file written with HDF5's newest format bound (`libver="latest"`, the writer before the
bound) does not open in 1.14.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from stream_node.kernels.compression import compress
from stream_node.origins.synthetic import SyntheticDetector
from stream_node.storage.writer import RunWriter

SHAPE = (64, 96)
FRAMES = 10
PLUGINS = Path("/usr/lib/x86_64-linux-gnu/hdf5/serial/plugins")
OLD_H5PY = {  # HDF5 version -> what to pip install into its own venv
    "1.12": ("h5py==3.8.0", "numpy<2", "hdf5plugin==4.1.3"),
    "1.14": ("h5py==3.14.0", "numpy<2.3", "hdf5plugin==5.1.0"),
}
READ_ALL = r"""
import json, sys
import h5py, hdf5plugin, numpy as np
out = {"hdf5": h5py.version.hdf5_version}
for path in sys.argv[1:]:
    try:
        with h5py.File(path, "r") as f:
            data = f["entry/data/data"][()]
            out[path] = {"sha": __import__("hashlib").sha256(data.tobytes()).hexdigest(),
                         "shape": list(data.shape),
                         "ids": f["entry/frames/frame_id"][()].tolist(),
                         "definition": f["entry/definition"][()].decode()}
    except Exception as exc:
        out[path] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out))
"""


def frames() -> np.ndarray:
    det = SyntheticDetector(SHAPE, "uint16", seed=3)
    return np.stack([det.frame(i) for i in range(FRAMES)])


def sha(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


DIES_MID_RUN = """
import os
from stream_node.kernels.compression import compress
from stream_node.origins.synthetic import SyntheticDetector
from stream_node.storage.writer import RunWriter
path, shape, frames = {path!r}, {shape!r}, {frames!r}
writer = RunWriter(path, shape, "uint16", frames, metadata={{"run_id": 5}},
                   compression="bslz4")
detector = SyntheticDetector(shape, "uint16", seed=3)
for i in range(4):
    writer.write(i, compress(detector.frame(i)), i, 0)
writer.flush({{}})
os._exit(0)  # the collector dies with its file open for writing
"""


def write(path: Path, kind: str, libver: str | tuple[str, str] | None = None) -> Path:
    """A finished file of `kind`; the one a reader opens (the master for rotated files)."""
    data = frames()
    options = {"libver": libver} if libver else {}
    compression = None if kind == "raw" else "bslz4"
    first = 0
    if kind == "resumed":
        subprocess.run([sys.executable, "-c", DIES_MID_RUN.format(
            path=str(path), shape=SHAPE, frames=FRAMES)], check=True, timeout=60)
        first = 4
    writer = RunWriter(path, SHAPE, "uint16", FRAMES, metadata={"run_id": 5},
                       compression=compression, resume=kind == "resumed",
                       frames_per_file=4 if kind == "rotated" else 0, **options)
    for i in range(first, FRAMES):
        writer.write(i, compress(data[i]) if compression else data[i], i, 0)
    writer.finalize(FRAMES, {}, {})
    writer.close()
    return path


KINDS = ("raw", "bslz4", "rotated", "resumed")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    if not shutil.which("h5clear"):
        pytest.skip("resuming a file needs h5clear (hdf5-tools: apt install hdf5-tools)")
    root = tmp_path_factory.mktemp("compat")
    return {kind: write(root / kind / "run.h5", kind) for kind in KINDS
            if (root / kind).mkdir() is None}


def old_h5py(version: str) -> Path:
    """A venv with an h5py built on HDF5 `version`, made once and kept under ~/.cache."""
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    venv = home / "stream-node-compat" / f"hdf5-{version}"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import h5py, hdf5plugin"],
                                          capture_output=True, timeout=60).returncode == 0:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([python, "-m", "pip", "install", "-q", *OLD_H5PY[version]],
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        pytest.skip(f"cannot install {OLD_H5PY[version]} from the package index "
                    f"(offline?): {done.stderr.strip()[-300:]}")
    return python


def read_with(python: Path, paths: list[Path]) -> dict:
    done = subprocess.run([python, "-c", READ_ALL, *map(str, paths)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("version", sorted(OLD_H5PY))
def test_every_file_kind_reads_bit_exact_with_an_older_hdf5(files, version):
    python = old_h5py(version)
    got = read_with(python, list(files.values()))
    assert got["hdf5"].startswith(version)
    expected = sha(frames())
    for kind, path in files.items():
        result = got[str(path)]
        assert "error" not in result, f"{kind}: {result}"
        assert result["shape"] == [FRAMES, *SHAPE] and result["sha"] == expected, kind
        assert result["ids"] == list(range(FRAMES)) and result["definition"] == "NXmx"


def test_every_file_kind_reads_bit_exact_with_this_hdf5(files):
    for kind, path in files.items():
        with h5py.File(path, "r") as f:
            assert np.array_equal(f["entry/data/data"][()], frames()), kind


@pytest.mark.timeout(300)
def test_the_newest_format_bound_is_what_older_readers_cannot_open(tmp_path):
    """The control: without the bound (the writer before it), HDF5 1.14 refuses the file."""
    path = write(tmp_path / "latest.h5", "bslz4", libver="latest")
    got = read_with(old_h5py("1.14"), [path])[str(path)]
    assert "bad version number for layout message" in got.get("error", ""), got


def h5dump_frames(path: Path, tmp_path: Path) -> np.ndarray:
    out = tmp_path / f"{path.parent.name}.bin"
    done = subprocess.run(["h5dump", "-d", "/entry/data/data", "-b", "LE", "-o", str(out),
                           path.name], cwd=path.parent, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "HDF5_PLUGIN_PATH": str(PLUGINS)})
    assert done.returncode == 0, f"h5dump {path}: {done.stdout[-500:]} {done.stderr[-1500:]}"
    return np.fromfile(out, "<u2").reshape(FRAMES, *SHAPE)


@pytest.mark.timeout(120)
def test_every_file_kind_reads_bit_exact_with_the_hdf5_1_10_tools(files, tmp_path):
    if not shutil.which("h5dump"):
        pytest.skip("no h5dump: apt install hdf5-tools (HDF5 1.10 on Debian 12)")
    if not (PLUGINS / "libh5bshuf.so").exists():
        pytest.skip(f"no bitshuffle filter plugin in {PLUGINS}: apt install bitshuffle")
    version = subprocess.run(["h5dump", "--version"], capture_output=True, text=True).stdout
    assert "1.10" in version, version  # the distribution's tools: the oldest reader we promise
    for kind, path in files.items():
        assert np.array_equal(h5dump_frames(path, tmp_path), frames()), kind
    listing = subprocess.run(["h5ls", "-r", str(files["bslz4"])], capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0 and "/entry/instrument/detector" in listing.stdout
