"""xaifast.metrics against plain float64 loops, and on a model whose answer is known: class k's
logit is a multiple of the mean of a fixed image region R_k (the pointing game must hit R_k,
insertion must beat deletion for a map that ranks R_k first)."""
import numpy as np
import pytest
import torch

from xaifast import metrics
from xaifast.engines.scorer import as_scorer
from xaifast.metrics.adcc import harmonic3

H, W = 16, 20
REGIONS = [(slice(3, 8), slice(4, 10)), (slice(9, 14), slice(12, 18))]  # (rows, cols) of classes 0 and 1


class RegionMean(torch.nn.Module):
    """logit_k = 8 * mean of region R_k (all channels), k = 0, 1; logit_2 = 2 (a constant class)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(8.0), requires_grad=False)

    def forward(self, x):
        outs = [self.scale * x[:, :, r, c].mean(dim=(1, 2, 3)) for r, c in REGIONS]
        outs.append(torch.full_like(outs[0], 2.0))
        return torch.stack(outs, dim=1)


def region_map(k, noise=0.0, rng=None, shape=(H, W)):
    m = np.zeros((H, W))
    r, c = REGIONS[k]
    m[r, c] = 1.0
    if noise:
        m = m + noise * rng.random((H, W))
    if shape != (H, W):
        import cv2
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return m


def softmax_np(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def model_np(x):
    """The region-mean model in float64 numpy (the reference's own scorer), softmax scores."""
    x = np.asarray(x, dtype=np.float64)
    z = [8.0 * x[:, :, r, c].mean(axis=(1, 2, 3)) for r, c in REGIONS]
    z.append(np.full(x.shape[0], 2.0))
    return softmax_np(np.stack(z, axis=1))


# ----------------------------------------------------------------------------------------- references

def ref_insertion_deletion(score_one, image, smap, k, steps, baseline):
    """Plain loop, one inference per perturbed image, float64 (OpenVINO XAI's algorithm)."""
    import cv2
    c, h, w = image.shape
    m = np.asarray(smap, dtype=np.float64)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    order = np.argsort(-m.reshape(-1), kind="stable")
    ys, xs = np.unravel_index(order, (h, w))
    ins, dels = [], []
    for i in range(steps + 1):
        n = int(i * h * w / steps)
        a = np.empty_like(image)
        a[:] = baseline.reshape(c, 1, 1)
        d = image.copy()
        a[:, ys[:n], xs[:n]] = image[:, ys[:n], xs[:n]]
        d[:, ys[:n], xs[:n]] = baseline.reshape(c, 1)
        ins.append(score_one(a)[k])
        dels.append(score_one(d)[k])
    auc = lambda v: abs((np.sum(v) - v[0] / 2 - v[-1] / 2) / steps)  # noqa: E731
    return auc(ins), auc(dels)


def ref_pointing(smap, boxes):
    m = np.asarray(smap)
    best = m.max()
    for x, y, w, h in boxes:
        for py in range(m.shape[0]):
            for px in range(m.shape[1]):
                if m[py, px] == best and x <= px <= x + w and y <= py <= y + h:
                    return True
    return False


# ----------------------------------------------------------------------------------------- pointing game

def test_pointing_game_region_model_hits_and_misses():
    maps = np.stack([np.stack([region_map(0), region_map(1), np.zeros((H, W))])] * 2)  # [2, 3, H, W]
    gt = [{0: [(4, 3, 5, 4)]},                       # class 0's box around R_0: hit
          {"1": [(0, 0, 3, 3)], 2: [(0, 0, 1, 1)]}]  # class 1's box elsewhere: miss; class 2's map is flat: all max
    out = metrics.pointing_game(maps, gt)
    assert out["evaluated"] == 3 and out["hits"] == 2
    assert out["pointing_game"] == pytest.approx(2 / 3)
    # maps without a box for their class are skipped; class-agnostic maps see every box
    out = metrics.pointing_game([{0: region_map(0), 1: region_map(1)}, {"image": region_map(1)}],
                                [{1: [(12, 9, 5, 4)]}, {0: [(0, 0, 2, 2)], 1: [(13, 10, 1, 1)]}])
    assert (out["hits"], out["evaluated"]) == (2, 2)


def test_pointing_game_matches_plain_loop(rng):
    for trial in range(6):
        h, w = rng.integers(3, 12, size=2)
        m = rng.integers(0, 4, size=(h, w)).astype(np.float32)  # ties at the max
        boxes = [tuple(rng.uniform(0, max(h, w), size=4)) for _ in range(rng.integers(1, 4))]
        out = metrics.pointing_game([{5: m}], [{5: boxes}])
        assert out["hits"] == int(ref_pointing(m, boxes)), (trial, m, boxes)


def test_pointing_game_coco_gt_labels_and_image_size():
    small = np.zeros((4, 4), np.float32)
    small[0, 3] = 1.0  # top-right cell
    gt = {"boxes": [[60, 0, 40, 30], [0, 60, 10, 10]], "labels": ["cat", "dog"], "category_ids": [1, 2]}
    out = metrics.pointing_game([{1: small}], [gt], image_sizes=[(100, 100)], labels=["dog", "cat"])
    assert (out["hits"], out["evaluated"]) == (1, 1)
    out = metrics.pointing_game([{0: small}], [gt], image_sizes=[(100, 100)], labels=["dog", "cat"])
    assert (out["hits"], out["evaluated"]) == (0, 1)
    with pytest.raises(metrics.MetricError, match="labels="):
        metrics.pointing_game([{0: small}], [gt])
    with pytest.raises(metrics.MetricError, match="one per image"):
        metrics.pointing_game([{0: small}], [gt, gt], labels=["dog", "cat"])


# ----------------------------------------------------------------------------------------- insertion / deletion

@pytest.mark.parametrize("map_shape,steps,batch", [((H, W), 30, 64), ((4, 5), 7, 5), ((H, W), 1, 3)])
def test_insertion_deletion_matches_plain_loop(rng, map_shape, steps, batch):
    x = rng.uniform(-1, 2, size=(3, 3, H, W)).astype(np.float32)
    maps = rng.random((3, 3) + map_shape).astype(np.float32)
    maps[0, 0, :2] = 0.5  # ties: raster order
    targets = [[0, 2], [1], [0, 1]]
    baseline = np.array([-0.5, 0.0, 0.25], np.float32)
    out = metrics.insertion_deletion_auc(RegionMean(), torch.from_numpy(x), maps, steps=steps, targets=targets,
                                         batch_size=batch, baseline=baseline)
    got = [(d["image"], d["class"], d["insertion"], d["deletion"]) for d in out["per_map"]]
    want = []
    for b, ks in enumerate(targets):
        for k in ks:
            ins, dele = ref_insertion_deletion(lambda a: model_np(a[None])[0], x[b].astype(np.float64), maps[b, k], k,
                                               steps, baseline.astype(np.float64))
            want.append((b, k, ins, dele))
    assert [g[:2] for g in got] == [w_[:2] for w_ in want]
    np.testing.assert_allclose([g[2:] for g in got], [w_[2:] for w_ in want], rtol=1e-5, atol=1e-7)
    assert out["insertion"] == pytest.approx(np.mean([w_[2] for w_ in want]), rel=1e-5)
    assert out["delta"] == pytest.approx(out["insertion"] - out["deletion"])


def test_insertion_beats_deletion_on_the_region_map(rng):
    x = torch.from_numpy(rng.uniform(0.5, 1.0, size=(2, 3, H, W)).astype(np.float32))
    good = [{0: region_map(0, 0.01, rng)}, {1: region_map(1, 0.01, rng)}]
    out = metrics.insertion_deletion_auc(RegionMean(), x, good)
    assert out["insertion"] > out["deletion"] + 0.2
    bad = [{0: 1.0 - region_map(0, 0.01, rng)}, {1: 1.0 - region_map(1, 0.01, rng)}]
    worse = metrics.insertion_deletion_auc(RegionMean(), x, bad)
    assert worse["delta"] < 0 < out["delta"]


def test_insertion_deletion_any_model_form(rng, tmp_path):
    """nn.Module, a numpy callable and a class-agnostic map scored on the predicted class agree."""
    x = torch.from_numpy(rng.uniform(0, 1, size=(2, 3, H, W)).astype(np.float32))
    maps = rng.random((2, 1, H, W)).astype(np.float32)
    a = metrics.insertion_deletion_auc(RegionMean(), x, maps, steps=10, batch_size=16, return_curves=True)
    b = metrics.insertion_deletion_auc(model_np, x, maps, steps=10, batch_size=7)
    assert [d["class"] for d in a["per_map"]] == list(np.argmax(model_np(x.numpy()), axis=1))
    np.testing.assert_allclose(a["insertion"], b["insertion"], rtol=1e-5)
    np.testing.assert_allclose(a["deletion"], b["deletion"], rtol=1e-5)
    assert a["curves"].shape == (2, 2, 11)
    scorer = as_scorer(model_np, batch_size=4)
    metrics.insertion_deletion_auc(scorer, x, maps, steps=10)
    assert scorer.inputs == 2 + 1 + 2 * 2 * 9  # images, the baseline, the interior points: nothing twice
    assert scorer.calls == 1 + 1 + 36 // 4


def test_insertion_deletion_bad_input(rng):
    x = torch.zeros(2, 3, H, W)
    with pytest.raises(metrics.MetricError, match="one per image"):
        metrics.insertion_deletion_auc(model_np, x, np.zeros((3, 1, H, W)))
    with pytest.raises(metrics.MetricError, match="NaN"):
        metrics.insertion_deletion_auc(model_np, x, np.full((2, 1, H, W), np.nan))
    with pytest.raises(metrics.MetricError, match="steps"):
        metrics.insertion_deletion_auc(model_np, x, np.zeros((2, 1, H, W)), steps=0)
    with pytest.raises(metrics.MetricError, match="heat maps"):
        metrics.insertion_deletion_auc(model_np, x, [{0: np.zeros((H, W, 3))}, {0: np.zeros((H, W))}])


# ----------------------------------------------------------------------------------------- ADCC

def channel_mean_explainer(x, classes):
    return np.asarray(x).mean(axis=1)


def test_adcc_matches_plain_loop(rng):
    import cv2
    x = rng.uniform(0, 1, size=(2, 3, H, W)).astype(np.float32)
    maps = [{0: rng.random((4, 5)) * 7, 2: rng.random((H, W))}, {1: rng.random((8, 10))}]
    out = metrics.adcc(RegionMean(), torch.from_numpy(x), maps, explainer=channel_mean_explainer)
    rows = []
    for b, d in enumerate(maps):
        for k, m in d.items():
            s = cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR) if m.shape != (H, W) else m
            if not (s.min() >= 0 and s.max() <= 1):
                s = (s - s.min()) / (s.max() - s.min() + 1e-12)
            masked = x[b].astype(np.float64) * s[None]
            y, o = model_np(x[b:b + 1])[0, k], model_np(masked[None])[0, k]
            drop = max(0.0, y - o) / y
            s2 = masked.mean(axis=0)
            s2 = (s2 - s2.min()) / (s2.max() - s2.min() + 1e-12)
            coh = (np.corrcoef(s.ravel(), s2.ravel())[0, 1] + 1) / 2
            com = s.mean()
            rows.append((coh, com, drop))
            got = out["per_map"][len(rows) - 1]
            assert (got["image"], got["class"]) == (b, k)
            np.testing.assert_allclose([got["coherency"], got["complexity"], got["average_drop"]], [coh, com, drop],
                                       rtol=1e-4, atol=1e-6)
            assert got["adcc"] == pytest.approx(3 / (1 / coh + 1 / (1 - com) + 1 / (1 - drop)), rel=1e-4)
    coh, com, drop = np.mean(rows, axis=0)
    assert out["adcc"] == pytest.approx(3 / (1 / coh + 1 / (1 - com) + 1 / (1 - drop)), rel=1e-4)


def test_adcc_region_map_keeps_the_score():
    """A map that is 1 on R_0 keeps class 0's evidence: no drop; complexity = the region's share."""
    x = torch.rand(1, 3, H, W) + 0.5
    out = metrics.adcc(RegionMean(), x, [{0: region_map(0)}], explainer=channel_mean_explainer)
    assert out["average_drop"] == pytest.approx(0.0, abs=1e-6)
    assert out["complexity"] == pytest.approx(30 / (H * W))
    assert harmonic3(0.5, 1.0, 0.0) == 0.0 and np.isnan(harmonic3(float("nan"), 0.1, 0.1))


# ----------------------------------------------------------------------------------------- engines and files

@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scorer_through_engine_and_onnx(rng, tmp_path):
    import xaifast
    from xaifast.engines import make_engine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    x = torch.from_numpy(rng.uniform(-1, 1, size=(5, 3, 12, 12)).astype(np.float32))
    want = torch.softmax(model(x), 1).detach()
    engine = make_engine(model, xaifast.ExplainConfig(algorithm="activationmap"), engine="pytorch")
    np.testing.assert_allclose(as_scorer(engine, batch_size=2)(x), want, rtol=1e-5, atol=1e-6)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x[:1],), str(path), input_names=["x"], output_names=["logits"], dynamo=False)
    np.testing.assert_allclose(as_scorer(str(path), batch_size=3)(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(xaifast.XaifastError, match=".xml or an .onnx"):
        as_scorer("model.pt")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("dynamic", [False, True])
def test_file_scorer_async_pieces_keep_order(rng, tmp_path, dynamic):
    """A model file's chunks are cut into infer_batch pieces on async requests: every piece size
    (1, uneven, larger than the chunk) gives the module's scores, rows in order."""
    from pathlib import Path

    from xaifast.engines.scorer import _file_scorer

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 7)).eval()
    x = torch.from_numpy(rng.uniform(-1, 1, size=(23, 3, 10, 14)).astype(np.float32))
    want = torch.softmax(model(x), 1).detach()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x[:2],), str(path), input_names=["x"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}} if dynamic else None)
    for infer_batch, batch_size in [(1, 5), (3, 10), (4, 23), (8, 64), (30, 7)]:
        scorer = _file_scorer(Path(path), "softmax", batch_size, infer_batch=infer_batch)
        np.testing.assert_allclose(scorer(x), want, rtol=1e-4, atol=1e-5, err_msg=f"{infer_batch}, {batch_size}")
        np.testing.assert_allclose(scorer(x[:1]), want[:1], rtol=1e-4, atol=1e-5)


def test_module_scorer_moves_to_openvino_for_long_work(rng, monkeypatch):
    """A CPU nn.Module scores in PyTorch until OPENVINO_AFTER_SECONDS of work, then through its
    OpenVINO conversion (the same scores); engine="openvino" converts at once, "pytorch" never; a
    model OpenVINO cannot take keeps PyTorch, with a warning."""
    import xaifast.engines.scorer as S
    from xaifast.zoo import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(num_classes=4).eval()
    x = torch.from_numpy(rng.normal(size=(7, 3, 24, 20)).astype(np.float32))
    with torch.no_grad():
        want = torch.softmax(model(x), 1)
    torch_only = as_scorer(model, engine="pytorch")
    np.testing.assert_allclose(torch_only(x), want, rtol=1e-6, atol=1e-7)
    assert not torch_only.openvino()
    at_once = as_scorer(model, engine="openvino", batch_size=3)
    np.testing.assert_allclose(at_once(x), want, rtol=1e-4, atol=1e-6)
    assert at_once.openvino()
    monkeypatch.setattr(S, "OPENVINO_AFTER_SECONDS", 1e-9)
    model = SmallCNN(num_classes=4).eval()  # (the one above is converted already: a later scorer uses that)
    with torch.no_grad():
        want = torch.softmax(model(x), 1)
    auto = as_scorer(model, batch_size=5)
    first = auto(x[:5])  # PyTorch (nothing spent yet), then OpenVINO
    assert not auto.openvino()
    np.testing.assert_allclose(torch.cat([first, auto(x[5:])]), want, rtol=1e-4, atol=1e-6)
    assert auto.openvino()
    again = as_scorer(model, batch_size=5)  # a later scorer of the same model: OpenVINO from its first batch
    np.testing.assert_allclose(again(x), want, rtol=1e-4, atol=1e-6)
    assert again.openvino()
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)  # new weights: converted again
        want = torch.softmax(model(x), 1)
    np.testing.assert_allclose(auto(x), want, rtol=1e-4, atol=1e-6)
    fresh = as_scorer(model, batch_size=5)  # (not converted for these weights yet: PyTorch first)
    np.testing.assert_allclose(fresh(x[:5]), want[:5], rtol=1e-4, atol=1e-6)

    class NotConvertible(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(np.asarray(x.numpy().mean(axis=(2, 3))))  # leaves torch: no graph

    odd = as_scorer(NotConvertible(), engine="openvino")
    with pytest.warns(UserWarning, match="could not be run with OpenVINO"):
        got = odd(x)
    np.testing.assert_allclose(got, torch.softmax(x.mean((2, 3)), 1), rtol=1e-6)
    assert not odd.openvino()
