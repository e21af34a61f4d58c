"""xaifast.ray.SaliencyPredictor: its columns equal `xaifast.explain` on the same images, called
directly (no Ray needed) and inside Ray Data's map_batches on a local cluster (skipped where ray is
not installed; CI installs it)."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import xaifast
from xaifast.errors import DataError, ImageReadError, XaifastError
from xaifast.ray import SaliencyPredictor

NUM_IMAGES = 7  # batch sizes 2 and 3 do not divide it


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """7 PNG photos-like images of different sizes (PNG: PIL and OpenCV decode the same pixels)."""
    rng = np.random.default_rng(1234)
    folder = tmp_path_factory.mktemp("ray_images")
    paths = []
    for i in range(NUM_IMAGES):
        h, w = (int(v) for v in rng.integers(24, 80, 2))
        smooth = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 2)
        path = folder / f"img_{i}.png"
        cv2.imwrite(str(path), smooth)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A SmallCNN recipe (5 classes, 32x32 input) and a checkpoint of fixed random weights."""
    from xaifast.zoo import SmallCNN

    folder = tmp_path_factory.mktemp("ray_recipe")
    torch.manual_seed(7)
    ckpt = folder / "weights.pth"
    torch.save({"state_dict": SmallCNN(num_classes=5).state_dict()}, ckpt)
    path = folder / "recipe.yaml"
    path.write_text("model:\n  class_path: xaifast.zoo.builtin.SmallCNN\n  init_args: {num_classes: 5}\n"
                    "input_size: [32, 32]\nlabels: [c0, c1, c2, c3, c4]\n")
    return str(path), str(ckpt)


def reference(recipe, paths, batch_size=1, **config):
    """xaifast.explain on the files: {path: Explanation}. One image a forward by default: the
    direct tests run the predictor so too, and then every value must be equal, bit for bit."""
    from xaifast.recipe import load_recipe

    r = load_recipe(recipe[0])
    cfg = xaifast.ExplainConfig(**config)
    return {ex.source: ex for ex in xaifast.explain(r.build(recipe[1]), list(paths), cfg, preprocess=r.preprocess,
                                                    labels=r.labels, engine="pytorch", batch_size=batch_size)}


def check_row(row, ex, postprocess=False, exact=True):
    """A row of the predictor against xaifast.explain's Explanation of the same image. exact=False:
    computed in other batches or another process (other thread counts), where float32 sums may
    round differently: maps within 1 (the project's cross-backend bound), scores to 1e-5."""
    keys = list(ex.maps)
    assert list(row["targets"]) == [-1 if k == "image" else k for k in keys]
    expected = np.stack([ex.maps[k] for k in keys])
    assert row["maps"].dtype == np.uint8 and row["maps"].shape == expected.shape
    if exact:
        np.testing.assert_array_equal(row["maps"], expected)
    else:
        assert np.abs(row["maps"].astype(int) - expected).max() <= 1
    assert list(row["predicted"]) == list(ex.predicted)
    scores = np.asarray(ex.prediction, dtype=np.float64)
    top = np.argsort(-scores, kind="stable")[:5]
    assert list(row["top_classes"]) == list(top)
    assert row["top_scores"].dtype == np.float32
    if exact:
        np.testing.assert_array_equal(row["top_scores"], scores[top].astype(np.float32))
    else:
        np.testing.assert_allclose(row["top_scores"], scores[top], rtol=1e-5)
    assert row["error"] is None
    if postprocess:
        np.testing.assert_array_equal(row["saliency_map"], np.stack([ex.saliency_map[k] for k in keys]))
        np.testing.assert_array_equal(row["overlay"], np.stack([ex.overlay[k] for k in keys]))


def rows_of(out):
    n = len(out["maps"])
    return [{k: v[i] for k, v in out.items()} for i in range(n)]


def run_batches(predictor, columns, size):
    """Call the predictor on consecutive slices of `columns` (as map_batches does), rows in order."""
    n = len(next(iter(columns.values())))
    rows = []
    for start in range(0, n, size):
        rows += rows_of(predictor({k: v[start:start + size] for k, v in columns.items()}))
    return rows


def object_column(arrays):
    col = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        col[i] = a
    return col


# ------------------------------------------------------------------------ direct calls (no Ray)

@pytest.mark.parametrize("group", ["ALL", "PREDICTIONS", "IMAGE", [3, "c1"]])
def test_paths_batches_equal_explain(images, recipe, group):
    config = dict(target_explain_group=group)
    if group == "IMAGE":
        config["algorithm"] = "activationmap"
    ref = reference(recipe, images, **config)
    predictor = SaliencyPredictor(recipe[0], recipe[1], engine="pytorch", batch_size=1, **config)
    rows = run_batches(predictor, {"path": np.array(images)}, 3)
    assert [r["path"] for r in rows] == images
    for row in rows:
        check_row(row, ref[row["path"]])


def test_image_batches_equal_explain(images, recipe):
    """Decoded images of different sizes (an object column), postprocessed maps and overlays too;
    the `id` column names the source and is passed through."""
    ref = reference(recipe, images, target_explain_group="PREDICTIONS", postprocess=True)
    decoded = [xaifast.read_image(p) for p in images]
    predictor = SaliencyPredictor(recipe[0], checkpoint=recipe[1], engine="pytorch", batch_size=1,
                                  explain_config=dict(target_explain_group="PREDICTIONS", postprocess=True))
    rows = run_batches(predictor, {"image": object_column(decoded), "id": np.arange(NUM_IMAGES)}, 3)
    assert [r["id"] for r in rows] == list(range(NUM_IMAGES))
    assert "image" not in rows[0]
    for row, path in zip(rows, images):
        check_row(row, ref[path], postprocess=True)
        assert row["saliency_map"].shape == (1,) + ref[path].image.shape


def test_one_shape_image_batch_and_gray(images, recipe):
    """A fixed-shape [B, H, W, 3] image column, and gray [H, W] images (expanded to RGB)."""
    predictor = SaliencyPredictor(recipe[0], recipe[1], engine="pytorch")
    rgb = np.stack([cv2.resize(xaifast.read_image(p), (40, 30)) for p in images[:4]])
    out = predictor({"image": rgb})
    assert len(out["maps"]) == 4 and out["maps"][0].shape == (5, 4, 4)
    gray = rgb[..., 0]
    from_gray = predictor({"image": gray})
    from_rgb = predictor({"image": np.repeat(gray[..., None], 3, axis=3)})
    for a, b in zip(from_gray["maps"], from_rgb["maps"]):
        np.testing.assert_array_equal(a, b)


def test_model_built_once_and_module_models(images, recipe, monkeypatch):
    """The model and its engine are built in the constructor only (a Ray actor's __init__): batches
    never rebuild them. An nn.Module with preprocess= gives the recipe's columns."""
    import xaifast.engines
    from xaifast.recipe import Recipe, load_recipe

    predictor = SaliencyPredictor(recipe[0], recipe[1], engine="pytorch", batch_size=1)
    first = predictor({"path": np.array(images[:2])})

    def built(*args, **kwargs):
        raise AssertionError("a batch rebuilt the model or its engine")

    monkeypatch.setattr(Recipe, "build", built)
    monkeypatch.setattr(xaifast.engines, "make_engine", built)
    again = predictor({"path": np.array(images[:2])})
    for a, b in zip(first["maps"], again["maps"]):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()

    r = load_recipe(recipe[0])
    module = SaliencyPredictor(r.build(recipe[1]), preprocess=r.preprocess, engine="pytorch", batch_size=1,
                               explain_config=xaifast.ExplainConfig(target_explain_group="ALL"))
    out = module({"path": np.array(images[:2])})
    for a, b in zip(first["maps"], out["maps"]):
        np.testing.assert_array_equal(a, b)


def test_detector_columns(images):
    """Detectors: det_boxes / det_scores / det_labels in the image's pixels, as xaifast.explain's."""
    from xaifast.recipe import load_recipe

    r = load_recipe("shapes_detector")
    model = r.build()
    spec = model.xaifast_spec()
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")
    ref = {ex.source: ex for ex in xaifast.explain(model, images[:3], cfg, preprocess=r.preprocess, labels=r.labels,
                                                   spec=spec, batch_size=1)}
    predictor = SaliencyPredictor("shapes_detector", target_explain_group="ALL", batch_size=1)
    out = predictor({"path": np.array(images[:3])})
    assert "top_classes" not in out
    for row in rows_of(out):
        ex = ref[row["path"]]
        np.testing.assert_array_equal(row["maps"], np.stack([ex.maps[k] for k in ex.maps]))
        np.testing.assert_array_equal(row["det_boxes"], np.asarray(ex.prediction["boxes"], np.float32).reshape(-1, 4))
        np.testing.assert_array_equal(row["det_scores"], np.asarray(ex.prediction["scores"], np.float32))
        np.testing.assert_array_equal(row["det_labels"], np.asarray(ex.prediction["labels"]))


def test_bad_path_is_a_reported_row(images, recipe, tmp_path):
    """A missing or corrupt file keeps its row: `error` says why, no maps; the other rows are whole.
    on_error='raise' raises instead."""
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    paths = [images[0], str(tmp_path / "missing.png"), str(corrupt), images[1]]
    ref = reference(recipe, images[:2], target_explain_group="ALL")
    predictor = SaliencyPredictor(recipe[0], recipe[1], engine="pytorch", batch_size=1)
    rows = rows_of(predictor({"path": np.array(paths)}))
    assert [r["path"] for r in rows] == paths
    check_row(rows[0], ref[images[0]])
    check_row(rows[3], ref[images[1]])
    assert rows[1]["error"] == "no such file"
    assert "not a readable image" in rows[2]["error"]
    for row in rows[1:3]:
        assert row["maps"].shape[0] == 0 and row["targets"].size == 0 and row["top_classes"].size == 0
    strict = SaliencyPredictor(recipe[0], recipe[1], engine="pytorch", on_error="raise")
    with pytest.raises(ImageReadError, match="missing.png: no such file"):
        strict({"path": np.array(paths)})


def test_bad_input_is_a_clear_error(images, recipe):
    predictor = SaliencyPredictor(recipe[0], recipe[1], engine="pytorch")
    with pytest.raises(DataError, match="needs an 'image' column .* or a 'path' column"):
        predictor({"file": np.array(images)})
    with pytest.raises(DataError, match="dtype float32; .*uint8"):
        predictor({"image": np.zeros((2, 8, 8, 3), np.float32)})
    with pytest.raises(DataError, match=r"shape \[8, 8, 4\]"):
        predictor({"image": np.zeros((2, 8, 8, 4), np.uint8)})
    with pytest.raises(DataError, match="already has column.*maps"):
        predictor({"path": np.array(images[:1]), "maps": np.zeros(1)})
    with pytest.raises(DataError, match="batch_format='numpy'"):
        predictor([images[0]])
    with pytest.raises(XaifastError, match="not both"):
        SaliencyPredictor(recipe[0], explain_config=dict(postprocess=True), target_explain_group="ALL")
    with pytest.raises(TypeError, match="unknown option"):
        SaliencyPredictor(recipe[0], batchsize=4)
    with pytest.raises(XaifastError, match="class index 9 is out of range"):
        SaliencyPredictor(recipe[0], target_explain_group=[9])({"path": np.array(images[:1])})
    empty = predictor({"path": np.array([], dtype=str)})
    assert all(len(v) == 0 for v in empty.values())


# ------------------------------------------------------------------------ Ray Data, local cluster

@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster (2 CPUs) for the module, started from a scratch folder: Ray workers
    start in the driver's folder and put it on sys.path, where the repository root's xaifast/
    source folder would shadow the installed package."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'xaifast[ray]' (CI installs it)")
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'xaifast[ray]'")
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray_cwd"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray
    finally:
        ray.shutdown()
        os.chdir(old)


def test_ray_workers_import_the_installed_package(ray_cluster):
    @ray_cluster.remote
    def where():
        import xaifast.ray

        return xaifast.ray.__file__, os.getcwd()

    file, cwd = ray_cluster.get(where.remote())
    import xaifast.ray

    repo = Path(__file__).resolve().parents[1]
    assert not Path(file).resolve().is_relative_to(repo / "xaifast"), file  # not the source folder
    assert Path(file).resolve() == Path(xaifast.ray.__file__).resolve()  # the driver's installed package
    assert Path(cwd).resolve() != repo


def test_ray_readme_flow_to_parquet(ray_cluster, images, recipe, tmp_path):
    """README's "Ray Data" example: read_images -> map_batches(SaliencyPredictor) -> write_parquet;
    read back, every row equals xaifast.explain on the same file (batches of 3 for 7 images)."""
    ray = ray_cluster
    from xaifast.ray import SaliencyPredictor

    ds = ray.data.read_images(str(Path(images[0]).parent), include_paths=True, mode="RGB")
    explained = ds.map_batches(SaliencyPredictor, batch_size=3, compute=ray.data.ActorPoolStrategy(size=1),
                               fn_constructor_kwargs=dict(model=recipe[0], checkpoint=recipe[1],
                                                          target_explain_group="ALL", engine="pytorch"))
    explained.write_parquet(str(tmp_path / "explanations"))

    rows = ray.data.read_parquet(str(tmp_path / "explanations")).take_all()
    ref = reference(recipe, images, batch_size=16, target_explain_group="ALL")
    assert sorted(os.path.abspath(r["path"]) for r in rows) == sorted(images)
    for row in rows:
        check_row(row, ref[os.path.abspath(row["path"])], exact=False)


def test_ray_paths_with_a_bad_file(ray_cluster, images, recipe, tmp_path):
    """A dataset of paths, one missing: its row is reported (error), the others equal xaifast.explain,
    also after a round trip through Parquet."""
    ray = ray_cluster
    missing = str(tmp_path / "missing.png")
    paths = images[:3] + [missing] + images[3:]
    ds = ray.data.from_items([{"path": p} for p in paths])
    explained = ds.map_batches(SaliencyPredictor, batch_size=3, compute=ray.data.ActorPoolStrategy(size=1),
                               fn_constructor_kwargs=dict(model=recipe[0], checkpoint=recipe[1],
                                                          target_explain_group="PREDICTIONS", engine="pytorch"))
    # through Parquet: the reported row's empty maps make its block's columns variable-shaped tensors
    explained.write_parquet(str(tmp_path / "explanations"))
    rows = ray.data.read_parquet(str(tmp_path / "explanations")).take_all()
    ref = reference(recipe, images, batch_size=16, target_explain_group="PREDICTIONS")
    assert sorted(r["path"] for r in rows) == sorted(paths)
    for row in rows:
        if row["path"] == missing:
            assert row["error"] == "no such file" and len(row["maps"]) == 0
        else:
            check_row(row, ref[row["path"]], exact=False)
