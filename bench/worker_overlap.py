"""Worker overlap benchmark: does a worker receive its next frame while it processes this one?

A worker fed by a socket (tcp across hosts, ipc here) gets each frame from libzmq's I/O thread,
which reads the socket while the worker's own thread runs the kernels (Numba's are `nogil`, and
libzmq's thread needs no GIL anyway). So a worker's rate should be that of the slower of the two,
receiving or processing, not of their sum. This bench measures it with real processes, in one
run, on the same frames:

* ``receive``: the pipeline (synthetic source -> ipc -> 1 worker -> ring -> collector) with a
  kernel that reads one pixel: the rate the hop alone allows (t_recv per frame);
* ``process``: the worker's kernel timed in this process, no hop at all (t_proc per frame);
* ``both``: the same pipeline running that kernel.

The kernel is `busy_sum` below, a Numba `nogil` loop of `passes` rounds of arithmetic (see
its docstring for why it is compute-bound), its output a few bytes (so the collector and the
fan-in cost nothing). Overlap predicts 1/max(t_recv, t_proc); a worker that received and
processed in turn, 1/(t_recv + t_proc).

A frame's receiving is not free CPU: the source makes it, and the kernel copies it into the
socket and out again, in the source's and the worker's I/O threads. On 2 cores those copies
(c_hop, CPU per frame of the `receive` runs, all processes) share the cores with the kernel,
so the rate can be no more than cores / (c_hop + t_proc), the "CPU bound" column. `passes` is
chosen so that t_proc is 1.5 x c_hop: there the CPU bound lies above the overlap prediction,
and a worker that overlaps can reach it (with t_proc ~ t_recv the cores run out first, and
the two predictions cannot be told apart). CPU per frame is the difference between a run of
`frames` and one of a fifth as many, so start-up (imports, Numba) does not count.

Usage::

    python bench/worker_overlap.py                  # quick: 200 frames of 2048x2048 uint16
    python bench/worker_overlap.py --shape 512x1024 --frames 2000 --repeat 3
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from _common import bench_parser
from _format import fmt, md_table
from stream_node.origins.synthetic import SyntheticDetector

HERE = Path(__file__).resolve().parent
KERNEL = "python:worker_overlap.busy_sum"


@numba.njit(nogil=True, cache=True)
def busy_sum(frame: np.ndarray, out: np.ndarray, passes: int) -> None:
    """`passes` rounds of arithmetic over the frame's first 4096 pixels, written to out[0, 0].

    Compute-bound on purpose: the pixels stay in L1, so the kernel takes the same time while
    the hop's copies use the memory bus. A kernel that streams the frame from memory slows
    down beside those copies (this VM's memory bandwidth is shared), which would hide the
    overlap behind a t_proc that no longer holds."""
    flat = frame.reshape(-1)[:4096]
    total = float(flat[0])
    for _ in range(passes):
        for v in flat:
            total = total * 0.999999 + v
    out[0, 0] = total


def spec(passes: int) -> list[dict]:
    return [{"kernel": KERNEL, "passes": passes, "out_shape": [1, 4], "out_dtype": "float64"}]


def time_process(shape: tuple[int, int], passes: int, reps: int = 30) -> float:
    """Seconds per frame of the worker's chain, in this process (the chain a worker builds)."""
    from stream_node.kernels.chain import build_chain

    chain = build_chain(spec(passes), shape, np.dtype("uint16"))
    det = SyntheticDetector(shape, "uint16", seed=0)
    frames = [det.frame(i) for i in range(4)]
    chain.apply(frames[0])
    samples = []
    for i in range(reps):
        t0 = time.perf_counter()
        chain.apply(frames[i % 4])
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def cpu_of_children() -> float:
    """CPU seconds (user + system) of this process and its reaped children so far."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_once(tmp: Path, shape: tuple[int, int], frames: int, passes: int) -> tuple[float, float]:
    """(frames/s, CPU seconds in all processes) of one run of the one-worker pipeline."""
    from stream_node.deploy.demo import run_local_pipeline

    cpu0 = cpu_of_children()
    summary = run_local_pipeline(output=tmp / "overlap.h5", frames=frames, shape=shape,
                                 dtype="uint16", workers=1, overwrite=True, fanout="ipc",
                                 fanin="ring", kernels=spec(passes))
    cpu = cpu_of_children() - cpu0
    if summary.frames_written != frames or summary.missing:
        raise SystemExit(f"the run lost frames: {summary.frames_written} of {frames} written, "
                         f"{summary.missing} missing")
    return summary.frames_written / summary.seconds, cpu


def time_pipeline(tmp: Path, shape: tuple[int, int], frames: int, passes: int
                  ) -> tuple[float, float]:
    """(frames/s, CPU seconds per frame in all processes, start-up excluded)."""
    rate, cpu = run_once(tmp, shape, frames, passes)
    _, cpu_short = run_once(tmp, shape, max(1, frames // 5), passes)
    return rate, (cpu - cpu_short) / (frames - max(1, frames // 5))


def main() -> int:
    ap = bench_parser(__doc__, "200 frames (default)", "1000 frames, 3 runs per row")
    ap.add_argument("--shape", default="2048x2048", help="NYxNX of the uint16 frames")
    ap.add_argument("--frames", type=int, help="frames per pipeline run")
    ap.add_argument("--repeat", type=int, help="pipeline runs per row (median shown)")
    ap.add_argument("--passes", type=int, help="kernel passes (default: t_proc ~ t_recv)")
    args = ap.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    frames = args.frames or (1000 if args.full else 200)
    repeat = args.repeat or (3 if args.full else 1)
    # The worker imports the kernel by name: this folder goes on its path.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    mib = np.prod(shape) * 2 / 2**20
    print(f"# worker overlap: {frames} frames of {args.shape} uint16 "
          f"({mib:.2f} MiB), 1 worker, ipc in, ring out, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}\n", flush=True)

    with tempfile.TemporaryDirectory(prefix="sn-overlap-") as d:
        tmp = Path(d)
        recv = [time_pipeline(tmp, shape, frames, 0) for _ in range(repeat)]
        t_recv = 1 / statistics.median(r for r, _ in recv)
        c_hop = statistics.median(c for _, c in recv)
        one_pass = time_process(shape, 1) - time_process(shape, 0)
        passes = args.passes or max(1, round(1.5 * c_hop / max(one_pass, 1e-6)))
        t_proc = time_process(shape, passes)
        both = [time_pipeline(tmp, shape, frames, passes) for _ in range(repeat)]
    rate = statistics.median(r for r, _ in both)
    overlap, serial = 1 / max(t_recv, t_proc), 1 / (t_recv + t_proc)
    cpu_bound = (os.cpu_count() or 1) / (c_hop + t_proc)
    rows = [
        ["receive (kernel reads 1 pixel)", fmt(t_recv * 1e3), fmt(1 / t_recv, 0), "", "",
         f"c_hop {fmt(c_hop * 1e3)} ms"],
        [f"process ({passes} rounds, in-process)", fmt(t_proc * 1e3), fmt(1 / t_proc, 0),
         "", "", ""],
        ["both: the worker receiving and processing", fmt(1e3 / rate), fmt(rate, 0),
         fmt(overlap, 0), fmt(serial, 0), fmt(cpu_bound, 0)],
    ]
    print(md_table(["row", "ms/frame", "frames/s", "overlap predicts", "in turn predicts",
                    "CPU bound"], "lrrrrr", rows))
    where = (rate - serial) / (overlap - serial) if overlap > serial else float("nan")
    print(f"\nmeasured rate is {fmt(rate / serial)}x the in-turn prediction and "
          f"{fmt(rate / overlap)}x the overlap one ({fmt(where * 100, 0)} % of the way from "
          f"in-turn to overlap); runs: {', '.join(fmt(r, 0) for r, _ in both)} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
