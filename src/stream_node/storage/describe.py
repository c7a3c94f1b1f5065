"""`stream-node inspect FILE`: what a run file holds, without reading its frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream_node.model.errors import ConfigError
from stream_node.storage.nexus import missing_nxmx
from stream_node.storage.reader import _plain, finished, merged_missing, open_run

MAX_LISTED = 20


def describe(path: str | Path) -> str:
    """A human summary: frames, missing ids with reasons, compression, rates, metadata."""
    return inspect_run(path)[0]


def inspect_run(path: str | Path) -> tuple[str, bool]:
    """The summary, and whether the run is complete: finalised, with no frame missing by the
    file's ledger or its sidecar ledger (`stream-node inspect` exits 3 when it is not)."""
    try:
        f = open_run(path)
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc}") from None
    with f:
        if "entry/data/data" not in f:
            raise ConfigError(f"{path} is not a stream-node run (no /entry/data/data)")
        entry = f["entry"]
        data = entry["data/data"]
        lines = [f"{'file':<17}{path}"]
        for key in ("run_id_hex", "software_version"):
            if key in entry.attrs:
                lines.append(f"{key:<17}{_plain(entry.attrs[key])}")
        version = entry["stream_node"].attrs.get("format_version") if "stream_node" in entry \
            else None
        lines.append(f"{'format':<17}stream-node {_plain(version) or '1.0 (before versions)'}"
                     f"{', NXmx' if 'definition' in entry else ''}")
        for key in ("start_time", "end_time"):
            if key in entry:
                lines.append(f"{key:<17}{_plain(entry[key][()]) or '(run not finished)'}")
        raw = data.size * data.dtype.itemsize
        lines.append(f"frames           {data.shape[0]} x {data.shape[1:]} {data.dtype}"
                     + (" (virtual: rotated files)" if data.is_virtual else ""))
        try:
            missing, side = merged_missing(f)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        received = listed = None
        if "frames" in entry:
            ids = entry["frames/frame_id"][()]
            listed = np.isin(ids, np.fromiter(missing, np.uint64, len(missing)))
            received = entry["frames/received"][()].astype(bool)
        if received is not None:
            lines.append(f"written          {int(received.sum())} of {len(received)}")
            stamps = entry["frames/timestamp_ns"][()][received]
            if len(stamps) > 1:
                span = (int(stamps.max()) - int(stamps.min())) / 1e9
                if span > 0:
                    lines.append(f"rate             {(len(stamps) - 1) / span:.1f} frames/s, "
                                 f"{(len(stamps) - 1) * raw / data.shape[0] / span / 1e9:.3f} "
                                 "GB/s (from acquisition timestamps)")
        if not data.is_virtual:
            stored = data.id.get_storage_size()
            if stored:
                ratio = raw * (received.mean() if received is not None else 1) / stored
                filters = ", ".join(str(k) for k in data._filters) or "none"
                lines.append(f"compression      {ratio:.2f}x (filters: {filters}; "
                             f"{stored / 2**20:.1f} MiB stored)")
        done = finished(f)
        lines.append(f"missing          {len(missing)}")
        for i, reason in list(missing.items())[:MAX_LISTED]:
            lines.append(f"  {i}: {reason}")
        if len(missing) > MAX_LISTED:
            lines.append(f"  ... and {len(missing) - MAX_LISTED} more")
        if side is not None:
            lines.append(f"ledger           {side['path']} (the file could not take it: "
                         f"{side.get('error')})")
        if not done:
            unaccounted = "" if received is None or listed is None else (
                f"; {int((~received & ~listed).sum())} frames are neither in it nor in a "
                "ledger")
            lines.append("unfinished       the collector never finalised this file (killed, "
                         f"or its disk failed){unaccounted}")
        gone = missing_nxmx(entry)
        if gone:
            lines.append(f"NXmx fields missing ({len(gone)}; give the source --geometry FILE):")
            lines.extend(f"  {path}" for path in gone)
        if "stream_node/counters" in entry:
            counters = entry["stream_node/counters"]
            values = dict(zip((str(_plain(n)) for n in counters.attrs["names"]),
                              np.asarray(counters[()]).tolist(), strict=True))
            nonzero = {k: v for k, v in values.items() if v}
            lines.append(f"counters         {nonzero}")
    return "\n".join(lines), done and not missing
