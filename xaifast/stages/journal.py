"""The run's journal: `explain/index.jsonl`, one JSON line per finished image (or skipped input),
appended once the image's files are on disk. A resumed run reads it and skips what is done.

Lines are flushed to the OS as they are written (a killed process loses none) and synced to the
disk every `sync_every` seconds and at close (a rebooted machine loses at most those seconds; a
resumed run also checks that a journaled image's files exist before it trusts the line). A line
cut short by a crash is ignored when read.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import List


class Journal:
    def __init__(self, path, sync_every: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._sync_every = sync_every
        self._synced = time.monotonic()
        if self._file.tell() > 0:
            self._repair()

    def _repair(self) -> None:
        """A line cut short by a crash would glue itself to the next one: end it."""
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
        if last != b"\n":
            self._file.write("\n")
            self._file.flush()

    def append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            if time.monotonic() - self._synced >= self._sync_every:
                os.fsync(self._file.fileno())
                self._synced = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


def read_journal(path) -> List[dict]:
    """The complete records of a journal (a missing file: none; a torn or garbled line: skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "index" in record:
                records.append(record)
    return records


def read_journals(explain_dir) -> List[dict]:
    """The records of every journal of a run: `index.jsonl` and, of a multi-process run, each
    rank's `index.rank-<r>.jsonl`."""
    explain_dir = Path(explain_dir)
    paths = [explain_dir / "index.jsonl"] + sorted(explain_dir.glob("index.rank-*.jsonl"))
    return [r for p in paths for r in read_journal(p)]
