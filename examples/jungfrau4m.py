"""A JUNGFRAU 4M end to end, on this host, with a simulated detector:

1. calibration: PSI gain-map files of the simulated modules into jf4m/, and a pedestal run
   (`stream-node pedestal` over simulated dark series in G0, G1, G2) into jf4m/pedestal.h5;
2. `stream-node run examples/jungfrau4m_preset.toml --node daq`: the UDP source, two workers
   (gain correction, photons, assembly, bitshuffle/LZ4) and the collector;
3. the "detector": 8 modules' UDP packets (stream-node's packet sender) of a lit frame;
4. every frame of the file checked against the same chain's numpy reference.

    python examples/jungfrau4m.py                 # 20 frames, run from the repository root
    python examples/jungfrau4m.py --frames 200 --rate 20000
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import stream_node
from stream_node.kernels import build_chain
from stream_node.origins.udp import PRESETS, default_positions, expected_frame, schedule, send

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET = Path("examples/jungfrau4m_preset.toml")


def free_ports(n: int) -> int:
    """A first port of n consecutive UDP ports free on loopback."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        try:
            for k in range(n):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as t:
                    t.bind(("127.0.0.1", first + k))
            return first
        except OSError:
            continue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--rate", type=float, default=10_000, help="packets/s (1024 per frame)")
    ap.add_argument("--dark-frames", type=int, default=50, help="frames per dark series")
    opts = ap.parse_args()
    t0 = time.monotonic()
    sim = stream_node.JungfrauSimulator(modules=8, seed=1)
    sim.write_gain_maps("jf4m")
    darks = [a for s in range(3) for a in (f"--g{s}", "synthetic:jungfrau?modules=8&seed=1")]
    subprocess.run([sys.executable, "-m", "stream_node", "pedestal", *darks, "--frames",
                    str(opts.dark_frames), "--output", "jf4m/pedestal.h5", "--overwrite"],
                   check=True)
    print(f"calibration ready ({time.monotonic() - t0:.0f} s)")

    port = free_ports(8)
    run = subprocess.Popen(
        [sys.executable, "-m", "stream_node", "run", str(PRESET), "--node", "daq",
         # paced, a frame's 1024 packets take 1024 / rate s (a real 4M: under 0.5 ms): the
         # receiver waits that long for a frame's packets before it calls the frame partial
         "--set", f"source.from=udp://127.0.0.1:{port}?modules=8&grid=8x1&frames={opts.frames}"
                  f"&first=1&frame_timeout_ms={max(50, int(4 * 1024 / opts.rate * 1000))}",
         "--set", "collector.file=jf4m-example.h5", "--set", "collector.overwrite=true"],
        stderr=subprocess.PIPE, text=True)
    assert run.stderr is not None
    for line in run.stderr:  # every stage ready: the source has bound its ports
        if "the collector ready" in line:
            break
    geo, positions = PRESETS["jungfrau"], default_positions(8, (8, 1))
    raw = sim.lit_frame(0)
    images = np.stack([raw[512 * k:512 * (k + 1)].reshape(-1).view(np.uint8) for k in range(8)])
    send("127.0.0.1", [port + k for k in range(8)], geo, schedule(geo, opts.frames, 8, first=1),
         images, positions, rate_pps=opts.rate)
    _, err = run.communicate(timeout=300)
    print(err[-1500:])

    spec = tomllib.loads(PRESET.read_text())["nodes"]["daq"]["workers"]["kernels"]
    reference = build_chain(spec, sim.shape, np.uint16, backend="reference")
    with stream_node.read_run("jf4m-example.h5") as written:
        assert written.file is not None
        ids = written.file["entry/partial/frame_id"][()].tolist()
        bitmaps = written.file["entry/partial/missing_parts"][()]
        lost = {}  # frames that lost packets: those pixels are the receiver's fill value
        for fid, bitmap in zip(ids, bitmaps, strict=True):
            bits = np.unpackbits(bitmap, bitorder="little")[:8 * geo.packets_per_frame]
            lost[fid] = {m: np.flatnonzero(row).tolist() for m, row in
                         enumerate(bits.reshape(8, -1))}
        whole = [i for i in range(written.frames.shape[0]) if written.received[i]]
        same = all(np.array_equal(written.frames[i], reference.apply(
            expected_frame(geo, images, positions, (8, 1), i + 1, lost=lost.get(i)), i))
            for i in whole)
        print(f"{len(whole)} frames of {written.frames.shape[1:]} uint16 photons "
              f"({len(lost)} with lost packets); missing {sorted(written.missing) or 'none'}; "
              f"identical to the numpy reference: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
