"""The file-writing stage: the threads that create a run's files (dump images, thumbnails), fed
by the sinks through a bounded queue.

Why not write from the worker threads that encode: creating a file costs ~0.3-0.4 ms of CPU on
the CI machine's ext4 whatever its size, and two threads creating files in one folder at the same
time spend about twice that each (the kernel spins on the folder's lock), on cores the model
needs: measured 0.9 ms of CPU per file inside a 2-core run with the file writes on the 2 worker
threads, 0.3 ms from one thread. So the workers encode (in parallel: OpenCV and fpng do not need
the folder) and one writer thread (more on big machines: `default_writers`) creates the files.

    writer = FileWriter()
    writer.write([(path, data), ...], then=callback)   # blocks while `depth` groups or `max_bytes` wait
    writer.close()                                      # writes what waits, raises the first error

Memory: what waits is bounded twice, by groups (`depth`) and by bytes (`max_bytes`, 32 MB: a group
is let in when the queue holds less, or when it is empty). A sink hands an image with many files
over in parts of about GROUP_BYTES and journals it once every part is on disk (`Parts`): an ALL
run of a 1000-class model writes 2000 full-size PNGs an image, about 0.5 GB encoded, which must
never be held at once.

`InlineWriter` has the same interface and writes on the calling thread (what a sink uses when no
writer is given: `xaifast report` remaking thumbnails, a sink used on its own).

A group's files are written in order, each under a temporary name then renamed (`write_atomic`);
`then()` runs on the writer thread once every file of the group is on disk (the sinks journal the
image there, so a journaled image always has its files). After an error the writer writes nothing
more (what waits is dropped, never journaled, redone by a resumed run) and `write` and `close`
raise it, naming the file.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable, List, Optional, Sequence, Tuple

from .encode import write_atomic

__all__ = ["FileWriter", "InlineWriter", "Parts", "default_writers", "GROUP_BYTES"]

_STOP = object()
#: Encoded bytes a sink hands to the writer at once (one part of an image's files).
GROUP_BYTES = 4 << 20


class Parts:
    """Calls `then()` once, after `close()` and after every part handed out has finished:
    `writer.write(files, parts.part())` for each part, then `parts.close()`. A part that never
    finishes (its write failed) means `then` never runs: the image is not journaled."""

    def __init__(self, then: Callable[[], None]):
        self._then = then
        self._left = 1  # close() holds one
        self._lock = threading.Lock()

    def part(self) -> Callable[[], None]:
        with self._lock:
            self._left += 1
        return self._finish

    def close(self) -> None:
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._then()


def _nbytes(files) -> int:
    return sum(memoryview(data).nbytes for _, data in files)


def default_writers(workers: int) -> int:
    """Writer threads for `workers` encoding threads: one per 8 (one on up to 15 cores), so that
    a big machine's file creation keeps up (one thread creates ~2500-3000 files/s here)."""
    return max(1, int(workers) // 8)


class InlineWriter:
    """Writes a group of files on the calling thread, then calls `then()`; each folder is made once."""

    def __init__(self):
        self._dirs: set = set()
        self._dirs_lock = threading.Lock()

    def write(self, files: Sequence[Tuple[os.PathLike, bytes]], then: Optional[Callable[[], None]] = None) -> None:
        self._write_group(files, then)

    def _write_group(self, files: Sequence[Tuple[os.PathLike, bytes]], then: Optional[Callable[[], None]]) -> None:
        """Write the files, then call `then()`; a failed write names its file and what to do."""
        for path, data in files:
            try:
                self._parent(path)
                write_atomic(path, data, make_parents=False)
            except OSError as exc:
                raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc} (check the work dir's "
                              "free space and permissions; finished images are kept: continue with --resume "
                              "True)") from exc
        if then is not None:
            then()

    def close(self) -> None:
        pass

    def _parent(self, path) -> None:
        parent = os.path.dirname(os.fspath(path))
        if parent in self._dirs:
            return
        os.makedirs(parent, exist_ok=True)
        with self._dirs_lock:
            self._dirs.add(parent)


class FileWriter(InlineWriter):
    def __init__(self, threads: int = 1, depth: int = 32, max_bytes: int = 32 << 20):
        if threads < 1:
            raise ValueError(f"FileWriter needs at least one thread, got {threads}")
        super().__init__()
        self._queue: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._max_bytes = max(1, int(max_bytes))
        self._queued_bytes = 0
        self._room = threading.Condition()
        self._error: Optional[BaseException] = None
        self._threads = [threading.Thread(target=self._loop, name=f"xaifast-files_{i}", daemon=True)
                         for i in range(threads)]
        self._started = False  # the threads start with the first write
        self._closed = False

    def write(self, files: Sequence[Tuple[os.PathLike, bytes]], then: Optional[Callable[[], None]] = None) -> None:
        """Queue one group of files (path, bytes); `then()` once they are all written. Blocks while
        `depth` groups or `max_bytes` wait (a group bigger than that waits for an empty queue)."""
        self._raise()
        if self._closed:
            raise RuntimeError("FileWriter.write after close()")
        files = list(files)
        size = _nbytes(files)
        if not self._started:
            with self._dirs_lock:
                if not self._started:
                    for t in self._threads:
                        t.start()
                    self._started = True
        with self._room:
            while self._queued_bytes and self._queued_bytes + size > self._max_bytes and self._error is None:
                self._room.wait()
            self._queued_bytes += size
        self._queue.put((files, then, size))

    def close(self) -> None:
        """Write everything queued, stop the threads, raise the first error if there was one."""
        self._closed = True
        if self._started:
            self._started = False
            for _ in self._threads:
                self._queue.put(_STOP)
            for t in self._threads:
                t.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            files, then, size = item
            try:
                if self._error is None:  # else dropped: never journaled, so a resumed run makes it again
                    self._write_group(files, then)
            except BaseException as exc:  # noqa: BLE001 - raised by write() / close()
                if self._error is None:
                    self._error = exc
            finally:
                del files, item
                with self._room:
                    self._queued_bytes -= size
                    self._room.notify_all()
