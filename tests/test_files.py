"""The file-writing stage (xaifast.stages.files.FileWriter): every queued file written, `then` only
after its group is on disk, errors raised with the file's name, bounded queue."""
import os
import threading

import pytest

from xaifast.stages.files import FileWriter, Parts, default_writers


@pytest.mark.parametrize("threads", [1, 3])
def test_every_group_written_before_its_callback(tmp_path, threads):
    writer = FileWriter(threads=threads, depth=4)
    seen, lock = [], threading.Lock()

    def then(group, paths):
        assert all(p.read_bytes() == f"{p.name}".encode() * 100 for p in paths)  # on disk, complete
        with lock:
            seen.append(group)

    for g in range(50):
        paths = [tmp_path / f"d{g % 7}" / "sub" / f"g{g}_{k}.bin" for k in range(3)]
        writer.write([(p, p.name.encode() * 100) for p in paths], lambda g=g, paths=paths: then(g, paths))
    writer.close()
    assert sorted(seen) == list(range(50))
    assert len(list(tmp_path.rglob("*.bin"))) == 150
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left
    writer.close()  # twice is fine


def test_replaces_existing_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")
    writer = FileWriter()
    writer.write([(tmp_path / "a.bin", b"new")])
    writer.close()
    assert (tmp_path / "a.bin").read_bytes() == b"new"


def test_error_names_the_file_and_stops_the_writer(tmp_path):
    (tmp_path / "blocker").write_bytes(b"a file where a folder should be")
    writer = FileWriter(depth=2)
    called = []
    bad = tmp_path / "blocker" / "x.jpg"
    writer.write([(tmp_path / "ok.jpg", b"1")], lambda: called.append("ok"))
    writer.write([(bad, b"2")], lambda: called.append("bad"))
    with pytest.raises(OSError, match="blocker"):
        for i in range(20):  # a later write (or close) raises the writer's error
            writer.write([(tmp_path / f"later{i}.jpg", b"3")], lambda: called.append("later"))
        writer.close()
    with pytest.raises(OSError, match="resume"):
        writer.close()
    assert called[0] == "ok" and "bad" not in called
    assert not (tmp_path / "later19.jpg").exists()  # nothing written after the error


def test_callback_error_is_raised(tmp_path):
    writer = FileWriter()

    def boom():
        raise ValueError("journal is full")

    writer.write([(tmp_path / "a.bin", b"x")], boom)
    with pytest.raises(ValueError, match="journal is full"):
        writer.close()


def test_queue_is_bounded(tmp_path):
    """write() blocks while `depth` groups wait: memory stays bounded when the disk is slow."""
    release = threading.Event()
    writer = FileWriter(depth=1)
    writer.write([(tmp_path / "a", b"x")], release.wait)  # the thread holds this one
    writer.write([(tmp_path / "b", b"x")])                # waits in the queue (depth 1)
    third = threading.Thread(target=writer.write, args=([(tmp_path / "c", b"x")],))
    third.start()
    third.join(timeout=0.5)
    blocked = third.is_alive()
    release.set()
    third.join(timeout=10)
    writer.close()
    assert blocked, "a third group was accepted while the queue was full"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]


def test_queue_is_bounded_in_bytes(tmp_path):
    """write() also blocks while `max_bytes` wait (a group bigger than that waits for an empty
    queue): an image's many large files never pile up in memory."""
    release = threading.Event()
    writer = FileWriter(depth=100, max_bytes=1000)
    writer.write([(tmp_path / "a", b"x")], release.wait)   # the thread holds this one (1 byte queued)
    writer.write([(tmp_path / "b", b"y" * 600)])           # fits: 601 bytes queued
    third = threading.Thread(target=writer.write, args=([(tmp_path / "c", b"z" * 600)],))
    third.start()
    third.join(timeout=0.5)
    blocked = third.is_alive()
    release.set()
    third.join(timeout=10)
    big = FileWriter(max_bytes=10)
    big.write([(tmp_path / "d", b"w" * 100)])  # bigger than the bound: let in when the queue is empty
    big.close()
    writer.close()
    assert blocked, "a group was accepted while max_bytes were waiting"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c", "d"]
    assert (tmp_path / "c").read_bytes() == b"z" * 600


def test_parts_call_then_once_after_close_and_every_part():
    calls = []
    parts = Parts(lambda: calls.append("done"))
    first, second = parts.part(), parts.part()
    first()
    parts.close()
    assert calls == []  # the second part is not written yet
    second()
    assert calls == ["done"]
    failed = Parts(lambda: calls.append("never"))
    failed.part()  # its write failed: never finishes
    failed.close()
    assert calls == ["done"]
    empty = Parts(lambda: calls.append("empty"))
    empty.close()
    assert calls == ["done", "empty"]


def test_unused_writer_closes_without_threads():
    writer = FileWriter(threads=2)
    writer.close()
    with pytest.raises(RuntimeError, match="after close"):
        writer.write([])


def test_default_writers():
    assert [default_writers(n) for n in (1, 2, 8, 15, 16, 64)] == [1, 1, 1, 1, 2, 8]
    with pytest.raises(ValueError):
        FileWriter(threads=0)


def test_inline_writer_has_the_same_interface(tmp_path):
    from xaifast.stages.files import InlineWriter

    writer, seen = InlineWriter(), []
    paths = [tmp_path / "a" / "b" / f"{i}.bin" for i in range(3)]
    writer.write([(p, bytes([i]) * 10) for i, p in enumerate(paths)],
                 lambda: seen.append([p.read_bytes() for p in paths]))
    writer.close()
    assert seen == [[bytes([i]) * 10 for i in range(3)]]
    assert not [p for p in tmp_path.rglob(".*")]


def test_folder_sink_hands_an_image_over_in_parts_and_journals_it_once(tmp_path):
    """An image with many large files reaches the writer in parts of about GROUP_BYTES, and the
    sink's `done` runs once, after the last part, with every file."""
    import types

    import numpy as np

    from xaifast.stages import files as F
    from xaifast.stages.sinks import FolderSink

    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(4)]  # ~360 KB each as PNG
    ex = types.SimpleNamespace(name="d/im", files=lambda: ((k, kind, noise[k % 4]) for k in range(24)
                                                           for kind in ("saliency_map", "overlay")))
    groups, done = [], []

    class Recorder(F.InlineWriter):
        def write(self, files, then=None):
            groups.append(sum(len(d) for _, d in files))
            assert not done, "the image was journaled before all its parts were written"
            super().write(files, then)

    FolderSink(tmp_path, "png", writer=Recorder()).write(ex, done.append)
    assert len(groups) > 2 and max(groups) < F.GROUP_BYTES + 400_000, groups
    assert len(done) == 1 and len(done[0]["files"]) == 48
    assert all((tmp_path / f).is_file() for f in done[0]["files"])
