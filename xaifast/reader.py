"""Reading a finished (or interrupted) run: `xaifast.open_run(path)`.

    run = xaifast.open_run("runs/.latest")          # a run folder, `.latest`, or a work dir (its newest run)
    len(run); run[0]; run["val/n01440764/x.JPEG"]    # Explanations; maps read when accessed
    run.index                                        # pandas.DataFrame, one row per input (index.parquet's columns)
    heat, overlay = run.render(0, 285)               # as the PNG run would have written them
    run.write_files("pngs/", classes=[285])          # OTX's PNG files after the fact (`xaifast render`)

Works on every kind of run: a zarr store (`--dump_format zarr`: the low-resolution maps, rendered
on demand) and PNG / JPEG folders (the files the run wrote). An interrupted run is read from its
journal. Rendering needs the source images where the run found them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import XaifastError
from .explanation import Explanation
from .rundir import SETTINGS_FILE, latest_run
from .stages.journal import read_journals


def _run_folder(path: Union[str, Path]) -> Path:
    path = Path(path)
    if (path / "explain").is_dir():
        return path
    if path.is_dir():
        run = latest_run(path)
        if run is not None:
            return run
    raise XaifastError(f"{path}: not a run folder (no explain/ inside) nor a work dir with runs")


class _Labels(list):
    """Label names by class index, from what the run recorded; unknown ones as the overlays name them."""

    def __init__(self, known: Dict[int, str], size: int):
        super().__init__(known.get(k) or f"class {k}" for k in range(size))


class _StoredMaps(Mapping):
    """An image's maps as the run stored them, read on first access."""

    def __init__(self, load, keys: list):
        self._load = load
        self._keys = keys
        self._maps: Optional[Dict] = None

    def _all(self) -> Dict:
        if self._maps is None:
            self._maps = self._load()
        return self._maps

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._all()[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Run:
    """A run folder opened for reading (see the module doc)."""

    def __init__(self, path: Union[str, Path]):
        self.path = _run_folder(path).resolve()
        explain = self.path / "explain"
        settings_file = explain / SETTINGS_FILE
        index_file = explain / "index.json"
        if settings_file.is_file():
            self.settings = json.loads(settings_file.read_text())
        elif index_file.is_file():
            self.settings = json.loads(index_file.read_text()).get("settings", {})
        else:
            self.settings = {}
        latest: Dict[int, dict] = {}
        for r in read_journals(explain):
            latest[r["index"]] = r
        if not latest and index_file.is_file():  # a run of an earlier version: no journal
            data = json.loads(index_file.read_text())
            latest = {i: dict(r, index=i) for i, r in enumerate(data.get("images", []))}
        ordered = [latest[i] for i in sorted(latest)]
        self.records = [r for r in ordered if "failed" not in r]
        self.failures = [(r["source"], r["failed"]) for r in ordered if "failed" in r]
        self.format = self.settings.get("dump_format", "png")
        self.finished = index_file.is_file()
        self._by_key = {}
        for i, r in enumerate(self.records):
            self._by_key.setdefault(r.get("rel"), i)
            self._by_key.setdefault(r.get("source"), i)
        self._names = None
        self._index = None

    def __repr__(self) -> str:
        state = "finished" if self.finished else "unfinished"
        return f"<xaifast run {self.path.name}: {len(self)} images, {self.format}, {state}>"

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Explanation]:
        for i in range(len(self)):
            yield self[i]

    def position(self, key: Union[int, str]) -> int:
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"image {key} out of range: the run has {len(self)} images")
            return int(key) % len(self)
        if key in self._by_key:
            return self._by_key[key]
        raise KeyError(f"{key!r} is not an image of this run (give its path relative to the data root, "
                       "its source path, or its position)")

    # ------------------------------------------------------------------ index
    @property
    def index(self):
        """One row per input (explained or skipped), as `explain/index.parquet` (pandas.DataFrame)."""
        if self._index is None:
            parquet = self.path / "explain" / "index.parquet"
            if parquet.is_file():
                import pyarrow.parquet as pq

                self._index = pq.read_table(str(parquet)).to_pandas()
            else:
                from .stages.parquet_index import table_of

                self._index = table_of(read_journals(self.path / "explain")).to_pandas()
        return self._index

    # ------------------------------------------------------------------ images
    def __getitem__(self, key: Union[int, str]) -> Explanation:
        record = self.records[self.position(key)]
        keys = [t if t == "image" else int(t) for t in record.get("targets", [])]
        ex = Explanation(source=record["source"], saliency_map={}, prediction=self._prediction(record),
                         predicted=self._predicted(record), index=record["index"], rel=record.get("rel"),
                         gt=record.get("gt"))
        ex.labels = {p["class"]: p["label"] for p in record.get("predictions", []) if p.get("label")}
        if record.get("maps"):
            ex.maps = _StoredMaps(lambda: self._low_res(record, keys), keys)
            ex.saliency_map = ex.maps
        elif record.get("files"):
            ex.saliency_map = _StoredMaps(lambda: self._files(record, keys, "saliency_map"), keys)
            ex.overlay = _StoredMaps(lambda: self._files(record, keys, "overlay"), keys)
            if not self.settings.get("postprocess"):
                ex.maps = ex.saliency_map
        return ex

    @staticmethod
    def _prediction(record: dict):
        preds = record.get("predictions", [])
        if preds and "box" in preds[0]:
            return {"boxes": np.array([p["box"] for p in preds], np.float32).reshape(-1, 4),
                    "scores": np.array([p["score"] for p in preds], np.float32),
                    "labels": np.array([p["class"] for p in preds], np.int64)}
        return {int(k): float(s) for k, s in record.get("top", [])} or {p["class"]: p["score"] for p in preds}

    @staticmethod
    def _predicted(record: dict) -> List[int]:
        preds = record.get("predictions", [])
        if preds and "box" in preds[0]:
            return list(dict.fromkeys(int(p["class"]) for p in sorted(preds, key=lambda p: -p["score"])))
        return [int(p["class"]) for p in preds]

    def _low_res(self, record: dict, keys: list) -> Dict:
        from .stages.zarr_store import read_maps

        maps = read_maps(self.path, record["maps"])
        return dict(zip(keys, maps))

    def _files(self, record: dict, keys: list, kind: str) -> Dict:
        import cv2

        out = {}
        for rel in record.get("files", []):
            name = Path(rel).stem
            for k in keys:
                tag = "image" if k == "image" else f"class_{k}"
                if name.endswith(f"_{tag}_{kind}"):
                    image = cv2.imread(str(self.path / rel), cv2.IMREAD_UNCHANGED)
                    out[k] = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return out

    # ------------------------------------------------------------------ rendering
    def _renderer(self, pos: int, keys: list):
        from .data import read_image
        from .stages.render import Renderer

        record = self.records[pos]
        low = self[pos].maps
        if not low:
            raise XaifastError(f"{self.path}: the run kept no low-resolution maps of {record['source']} "
                               "(a postprocessed PNG or JPEG run keeps the rendered files instead: use those, or "
                               "explain with --dump_format zarr to keep maps that can be rendered again)")
        try:
            image = read_image(record["source"])
        except XaifastError as exc:
            raise XaifastError(f"cannot render {record['source']}: the source image is needed ({exc})") from None
        maps = np.stack([low[k] for k in keys])
        preds = record.get("predictions", [])
        shown, labels = None, None
        if preds and "box" in preds[0]:
            from .adapters.detection import Detections

            p = self._prediction(record)
            shown = Detections(p["boxes"], p["scores"], p["labels"])
        names = {int(p["class"]): p["label"] for p in preds if p.get("label")}
        if preds:
            labels = _Labels(names, 1 + max(int(p["class"]) for p in preds))
        return Renderer(keys, maps, image, image.shape[:2], float(self.settings.get("alpha", 0.5)), shown, labels)

    def render(self, image: Union[int, str], key=None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(heat map, overlay) of one image and class (default: its first target), RGB at the image's
        size, as a postprocessed PNG run writes them."""
        pos = self.position(image)
        record = self.records[pos]
        targets = [t if t == "image" else int(t) for t in record.get("targets", [])]
        key = targets[0] if key is None else key
        if key not in targets:
            raise XaifastError(f"{record['source']} has no map of {key!r}; its maps: {targets}")
        heat, over = self._renderer(pos, [key]).render([key])
        return heat[0], None if over is None else over[0]

    def write_files(self, out_dir: Union[str, Path], classes: Optional[Sequence] = None,
                    images: Optional[Sequence] = None, fmt: str = "png") -> int:
        """OTX's files of the run (saliency maps and overlays, as the PNG run would have written them)
        under out_dir/<rel dir>/; only the given classes / images (positions, relative paths or
        sources) when given. Returns the number of files written."""
        from .stages.encode import encode, write_atomic
        from .stages.sinks import file_tag, output_names

        if self._names is None:
            self._names = output_names([r["rel"] for r in self.records if r.get("rel") is not None])
        wanted = None if classes is None else {c if c == "image" else int(c) for c in classes}
        positions = range(len(self)) if images is None else [self.position(i) for i in images]
        out, count = Path(out_dir), 0
        ext = ".jpg" if fmt == "jpg" else ".png"
        postprocessed = bool(self.settings.get("postprocess"))
        for pos in positions:
            record = self.records[pos]
            keys = [t if t == "image" else int(t) for t in record.get("targets", [])]
            keys = [k for k in keys if wanted is None or k in wanted]
            if not keys:
                continue
            rel = record.get("rel")
            name = self._names[rel] if rel is not None else f"image_{record['index']:06d}"
            for key, kind, pixels in self._renderer(pos, keys).files(postprocessed):
                write_atomic(out / f"{name}_{file_tag(key)}_{kind}{ext}", encode(pixels, fmt))
                count += 1
        return count


def open_run(path: Union[str, Path]) -> Run:
    """Open a run folder, `<work_dir>/.latest`, or a work dir (its newest run) for reading."""
    return Run(path)
