"""`stream-node pedestal`: dark series in G0, G1, G2 -> a calibration file, and a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream_node.cli.options import EPILOG, FORMAT, positive, shape_arg
from stream_node.model.errors import ExitCode

EXAMPLE = """examples:
  stream-node pedestal --g0 file://dark_g0.h5 --g1 file://dark_g1.h5 --g2 file://dark_g2.h5 \\
      --gain-maps gainMaps_M420.bin gainMaps_M421.bin --output jf1m_cal.h5
  stream-node pedestal --g0 "udp://10.1.1.10:50001?modules=2&grid=2x1&frames=1000" \\
      --base jf1m_cal.h5 --output jf1m_cal_new.h5       # G0 only; G1/G2 from the base
  stream-node pedestal --g0 "synthetic:jungfrau?modules=2" --g1 "synthetic:jungfrau?modules=2" \\
      --g2 "synthetic:jungfrau?modules=2" --frames 200 --output sim_cal.h5
"""


def add(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("pedestal", help="pedestals, noise and bad pixels from dark runs",
                       formatter_class=FORMAT, epilog=EXAMPLE + EPILOG,
                       description="Fold dark series (the detector in G0, then forced into G1 "
                                   "and G2) into per-pixel pedestals and RMS, flag bad pixels, "
                                   "write a calibration file for the gain_correction kernel "
                                   "and print a report.")
    for stage in range(3):
        p.add_argument(f"--g{stage}", metavar="SOURCE",
                       help=f"the dark series in G{stage}: file://RUN.h5 (a written run), "
                            "udp://HOST:PORT?modules=N&frames=N, synthetic:jungfrau?modules=N "
                            f"(made dark in G{stage})")
    p.add_argument("--output", "-o", type=Path, required=True, help="the calibration file")
    p.add_argument("--frames", type=positive(int), default=1000,
                   help="frames per series, at most (default 1000)")
    p.add_argument("--gain-maps", nargs="+", type=Path, metavar="FILE",
                   help="PSI gain-map files (gainMaps_M<serial>.bin), one per module in module "
                        "order: their gains go into the calibration file")
    p.add_argument("--high-gain", action="store_true",
                   help="with --gain-maps: the high-gain planes (HG0-HG2)")
    p.add_argument("--base", type=Path, metavar="CAL.h5",
                   help="keep this calibration's gains, serials, and pedestals of stages "
                        "given no series")
    p.add_argument("--serials", metavar="M1,M2,...",
                   help="module serials in module order (checked against --gain-maps/--base)")
    p.add_argument("--noise-sigma", type=positive(float), default=5.0, metavar="K",
                   help="noisy: an RMS K robust sigmas above its module's median (default 5)")
    p.add_argument("--max-wrong-gain", type=float, default=0.01, metavar="F",
                   help="wrong gain: in another stage in more than this fraction of a series' "
                        "frames (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="synthetic sources' seed")
    p.add_argument("--shape", type=shape_arg, default=(512, 1024),
                   help="synthetic: (Poisson) sources' frame shape")
    p.add_argument("--timeout", type=positive(float), default=10.0, metavar="S",
                   help="udp://: a detector silent this long has ended its series")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=run)
    return p


def _darkened(endpoint: str, stage: int) -> str:
    """A `synthetic:jungfrau` endpoint made a dark series of `stage` unless it says which."""
    if not endpoint.startswith("synthetic:jungfrau") or "dark=" in endpoint:
        return endpoint
    return f"{endpoint}{'&' if '?' in endpoint else '?'}dark=G{stage}"


def run(args: argparse.Namespace) -> int:
    from stream_node._version import __version__
    from stream_node.kernels import calibration
    from stream_node.kernels.dark import DarkSeries, calibrate_darks
    from stream_node.model.errors import ConfigError, OutputExistsError
    from stream_node.origins.base import OriginOptions
    from stream_node.origins.offline import OriginFrames

    if args.output.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.output} exists: choose another --output or pass "
                                "--overwrite")
    endpoints = [(stage, e) for stage, e in enumerate((args.g0, args.g1, args.g2)) if e]
    if not endpoints:
        raise ConfigError("give at least one dark series: --g0 SOURCE (and --g1, --g2)")
    serials = args.serials.split(",") if args.serials else None
    base = calibration.read_calibration(args.base) if args.base else None
    if args.gain_maps:
        psi = calibration.read_psi_gain_maps([str(p) for p in args.gain_maps], args.high_gain,
                                             "--gain-maps")
        if base is None:
            base = psi
        else:
            psi.check(base.modules, base.serials if any(base.serials) else None, "--gain-maps")
            base.gain, base.gain_mode = psi.gain, psi.gain_mode
            base.sources["gain"] = psi.sources["gain"]
    if base is not None and serials is not None:
        base.check(base.modules, serials, "--base/--gain-maps")
    options = OriginOptions(frames=args.frames, shape=args.shape, dtype="uint16", seed=args.seed,
                            timeout_s=args.timeout)
    series, sources, empty = {}, [], []
    for stage, endpoint in endpoints:
        endpoint = _darkened(endpoint, stage)
        with OriginFrames(endpoint, options) as frames:
            dark = DarkSeries(frames.shape, stage)
            for raw in frames:
                dark.add(raw)
                if dark.frames >= args.frames:
                    break
        series[stage] = dark
        found = {"stage": f"G{stage}", "source": endpoint, "frames": dark.frames,
                 "partial_skipped": frames.partial}
        if endpoint.startswith("file://"):
            found.update(calibration.source(endpoint[len("file://"):]))
        sources.append(found)
        if not dark.frames:
            empty.append(f"G{stage}")
        print(f"G{stage}: {dark.frames} frames from {endpoint}"
              + (f" ({frames.partial} partial frames skipped)" if frames.partial else ""))
    cal, report = calibrate_darks(series, noise_sigma=args.noise_sigma,
                            max_wrong_gain=args.max_wrong_gain, base=base,
                            serials=serials or (), sources=sources)
    calibration.write_calibration(args.output, cal, overwrite=args.overwrite,
                                  software=f"stream-node {__version__}")
    names = ", ".join(s or "?" for s in cal.serials) if any(cal.serials) else "serials unknown"
    print(f"calibration {args.output}: {cal.modules} module(s) ({names}), gains "
          f"{'included' if cal.gain is not None else 'not included (give --gain-maps)'}")
    print(report.text())
    if empty:
        print(f"no frames in series {', '.join(empty)}")
        return ExitCode.FRAMES_MISSING
    return ExitCode.OK
