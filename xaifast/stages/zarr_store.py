"""The compact result store: `<run>/explain/maps.zarr`, a Zarr v3 group of the normalized uint8
maps as the algorithm makes them (the low resolution of `postprocess=False`), one row per map.

Layout: one array per map size, `maps_<h>x<w>`, of shape [rows, h, w], chunked along the rows
and stored with Zarr's sharding codec, so a shard file holds thousands of maps (a million images
do not make a million files). An image's maps are rows `row .. row + count` of one array, in the
order of its targets; `explain/index.jsonl` (the journal) and `explain/index.parquet` say where.

Crash safety: rows are given out in the order images finish; the sink keeps the rows of the shard
being filled in memory and writes a shard once, whole, when it is full, every `flush_seconds`,
and at close; only then are its images' journal lines written (a killed run loses at most the
shard in flight). A shard is never rewritten: after a timed flush (or a resumed run) the next rows
start at the next shard boundary, and the rows skipped between are never stored (Zarr's fill
value, no file).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

STORE_NAME = "maps.zarr"
CHUNK_BYTES = 256 << 10   # ~256 KB chunks (compressed with zstd inside the shard)
SHARD_BYTES = 4 << 20     # ~4 MB shards: one file each
FLUSH_SECONDS = 30.0      # a shard in flight is written at least this often ($XAIFAST_ZARR_FLUSH_SECONDS)


def array_name(h: int, w: int) -> str:
    return f"maps_{h}x{w}"


def layout(h: int, w: int) -> tuple:
    """(chunk rows, shard rows) for maps of h x w bytes."""
    chunk = max(1, CHUNK_BYTES // (h * w))
    shard = chunk * max(1, SHARD_BYTES // (chunk * h * w))
    return chunk, shard


def _zarr():
    try:
        import zarr
    except ImportError as exc:
        from ..errors import XaifastError

        raise XaifastError("--dump_format zarr needs the zarr package (>= 3): pip install 'xaifast[store]'") from exc
    return zarr


class _Array:
    """The rows of one map size: the shard being filled (in memory) and the rows given out."""

    def __init__(self, name: str, array, next_row: int):
        self.name = name
        self.array = array
        self.chunk, self.shard = layout(*array.shape[1:])
        self.start = next_row      # first row of the shard being filled (a shard boundary)
        self.next = next_row       # next row to give out
        self.rows: List[np.ndarray] = []
        self.waiting: List[tuple] = []  # (end row, done callback, fields)


class ZarrSink:
    """Sink of a zarr run: `write(ex, done)` puts the image's maps in the store; `done(fields)`
    is called (with {"maps": {"array", "row", "count"}}) once they are on disk."""

    def __init__(self, run_dir, done_records: Sequence[dict] = (), flush_seconds: Optional[float] = None,
                 suffix: str = ""):
        import importlib.util

        if importlib.util.find_spec("zarr") is None:
            _zarr()  # the clear error, now rather than at the first image
        self.path = Path(run_dir) / "explain" / STORE_NAME
        # zarr (and pyarrow, for the index at the end) take ~0.5 s to import: open the store on a
        # thread while the model loads (OpenVINO compiles without the GIL); `group` waits for it
        self._group, self._opening_error = None, None
        self._opening = threading.Thread(target=self._open, name="xaifast-zarr-open", daemon=True)
        self._opening.start()
        if flush_seconds is None:
            flush_seconds = float(os.environ.get("XAIFAST_ZARR_FLUSH_SECONDS", FLUSH_SECONDS))
        self.flush_seconds = flush_seconds
        self.suffix = suffix  # a multi-process run: each rank writes arrays of its own
        self.lock = threading.Lock()
        self.arrays: Dict[str, _Array] = {}
        self._oldest: Optional[float] = None  # when the oldest row not yet stored came
        ends: Dict[str, int] = {}
        for r in done_records:  # a resumed run: new rows start after every shard in use
            m = r.get("maps")
            if m:
                ends[m["array"]] = max(ends.get(m["array"], 0), m["row"] + m["count"])
        self._resume_ends = ends

    def _open(self) -> None:
        try:
            self._group = _zarr().open_group(str(self.path), mode="a", zarr_format=3)
            try:
                import pyarrow.parquet  # noqa: F401  (index.parquet at the end of the run)
            except ImportError:
                pass
        except BaseException as exc:  # raised where the store is first used
            self._opening_error = exc

    @property
    def group(self):
        self._opening.join()
        if self._opening_error is not None:
            raise self._opening_error
        return self._group

    def _array(self, h: int, w: int) -> _Array:
        name = array_name(h, w) + self.suffix
        entry = self.arrays.get(name)
        if entry is None:
            chunk, shard = layout(h, w)
            if name in self.group:
                array = self.group[name]
            else:
                array = self.group.create_array(name, shape=(0, h, w), chunks=(chunk, h, w), shards=(shard, h, w),
                                                dtype="uint8", fill_value=0)
            used = max(self._resume_ends.get(name, 0), 0)
            entry = self.arrays[name] = _Array(name, array, -(-used // shard) * shard)
        return entry

    def write(self, ex, done: Callable[[dict], None]) -> None:
        keys = list(ex.maps)
        if not keys:
            done({"maps": None})
            return
        maps = np.stack([ex.maps[k] for k in keys]).astype(np.uint8, copy=False)
        with self.lock:
            entry = self._array(*maps.shape[1:])
            row = entry.next
            entry.next += len(maps)
            entry.rows.append(maps)
            fields = {"maps": {"array": entry.name, "row": row, "count": len(maps)}}
            entry.waiting.append((entry.next, done, fields))
            if self._oldest is None:
                self._oldest = time.monotonic()
            ready = self._fill(entry)
            if self._oldest is not None and time.monotonic() - self._oldest >= self.flush_seconds:
                ready += self._flush_all()
        for callback, fields in ready:
            callback(fields)

    def _fill(self, entry: _Array) -> list:
        """Write every full shard of `entry`; the callbacks of the images now stored."""
        ready = []
        while entry.next - entry.start >= entry.shard:
            ready += self._write_shard(entry, entry.start + entry.shard)
        if ready and all(not e.rows for e in self.arrays.values()):
            self._oldest = None
        return ready

    def _write_shard(self, entry: _Array, end: int) -> list:
        """Store rows [entry.start, end) (end at most one shard on), as one shard write."""
        data = np.concatenate(entry.rows) if len(entry.rows) > 1 else entry.rows[0]
        count = end - entry.start
        head, rest = data[:count], data[count:]
        array = entry.array
        if array.shape[0] < end:
            array.resize((end, *array.shape[1:]))
        array[entry.start:end] = head
        entry.rows = [rest] if len(rest) else []
        entry.start = end
        ready = [(cb, f) for stop, cb, f in entry.waiting if stop <= end]
        entry.waiting = [w for w in entry.waiting if w[0] > end]
        return ready

    def _flush_all(self) -> list:
        """Write the partly filled shards as they are; new rows start at the next shard boundary."""
        ready = []
        for entry in self.arrays.values():
            if entry.next > entry.start:
                ready += self._write_shard(entry, entry.next)
                boundary = -(-entry.next // entry.shard) * entry.shard
                entry.start = entry.next = boundary
        self._oldest = None
        return ready

    def close(self) -> None:
        self._opening.join()  # (a run that stored nothing: let the store's opening finish)
        with self.lock:
            ready = self._flush_all()
        for callback, fields in ready:
            callback(fields)


def read_maps(run_dir, fields: dict) -> Optional[np.ndarray]:
    """An image's maps [count, h, w] from its `maps` fields (journal / index)."""
    if not fields:
        return None
    zarr = _zarr()
    group = zarr.open_group(str(Path(run_dir) / "explain" / STORE_NAME), mode="r")
    row, count = int(fields["row"]), int(fields["count"])
    return np.asarray(group[fields["array"]][row:row + count])
