"""The OpenVINO engine splits a batch into one request per stream (so a batch alone uses every
core): the maps and logits are bit-identical to the unsplit run and to one image at a time, for
batch sizes 1, odd and even, at f32 and at OpenVINO's default precision."""
import numpy as np
import pytest
import torch

import xaifast
from xaifast.zoo import SmallCNN

ov = pytest.importorskip("openvino")
from xaifast.engines import openvino as E  # noqa: E402


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("XAIFAST_ENGINE", raising=False)
    monkeypatch.setenv("XAIFAST_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "split_cache"))


def hf_resnet(num_labels=7):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(num_labels=num_labels, embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
    return ResNetForImageClassification(cfg).eval()


def small_cnn():
    torch.manual_seed(0)  # the same weights in every test: converted once
    return SmallCNN(num_classes=6).eval()


def entries_of(keys):
    return [E._COMPILED[k] for k in keys if k in E._COMPILED]


def run(model, x, batch_size, precision):
    """(raw maps, logits) of every image, through the engine's stream (saliency_maps and explain)."""
    maps = xaifast.saliency_maps(model, x, engine="openvino", batch_size=batch_size, precision=precision)
    cfg = xaifast.ExplainConfig(target_explain_group="PREDICTIONS", postprocess=False)
    preds = np.stack([e.prediction for e in xaifast.explain(model, x, cfg, engine="openvino",
                                                          batch_size=batch_size, precision=precision)])
    return maps, preds


def test_parts_cover_the_batch_evenly():
    entry = E._Compiled(compiled=None, names=[], meta={}, depth=4, max_batch=1 << 30, streams=4, batch_invariant=True)
    for n in (1, 2, 3, 4, 5, 7, 16, 17, 64):
        parts = entry.parts(n)
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        sizes = [b - a for a, b in parts]
        assert len(parts) == min(n, 4) and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    entry.max_batch = 3  # transformers: requests bounded in memory
    assert sorted(b - a for a, b in entry.parts(16)) == [2, 2, 3, 3, 3, 3]  # 6 requests of <= 3
    assert [b - a for a, b in entry.parts(2)] == [1, 1]
    entry.max_batch, entry.batch_invariant = 1 << 30, False  # outputs depend on the batch: never split
    assert entry.parts(16) == [(0, 16)]
    entry.batch_invariant = None  # not checked yet
    assert entry.parts(16) == [(0, 16)]


@pytest.mark.parametrize("precision", ["f32", "auto"])
@pytest.mark.parametrize("make,size", [(hf_resnet, (64, 64)), (small_cnn, (48, 40))],
                         ids=["hf-resnet", "small-cnn"])
def test_split_batches_are_bit_identical(monkeypatch, make, size, precision):
    model = make().eval()
    x = torch.randn(16, 3, *size, generator=torch.Generator().manual_seed(1))
    before = set(E._COMPILED)
    per_image = run(model, x, 1, precision)  # one image per batch: never split
    keys = set(E._COMPILED) - before  # this model's compiled entries
    assert keys
    for streams in (None, 3):  # the compiled model's streams (2 on the CI machine), then forced to 3
        for e in entries_of(keys):
            e.streams = e.streams if streams is None else streams
        for batch_size in (1, 2, 5, 7, 16):
            got = run(model, x, batch_size, precision)
            for a, b in zip(got, per_image):
                assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), (batch_size, streams)
    checked = [e for e in entries_of(keys) if e.batch_invariant is not None]
    assert checked and all(e.batch_invariant for e in checked), \
        "OpenVINO's outputs depend on the batch on this CPU: batches are not split (slower per-batch calls)"
    assert max(e.streams for e in checked) == 3
    monkeypatch.setattr(E, "SPLIT_BATCHES", False)  # the unsplit run: one request per batch
    for batch_size in (5, 16):
        for a, b in zip(run(model, x, batch_size, precision), per_image):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_batches_are_split_across_requests(monkeypatch):
    """The requests really run as sub-batches (one per stream), and an unchecked or batch-dependent
    model runs whole batches."""
    model = small_cnn()
    x = torch.randn(7, 3, 48, 40)
    xaifast.saliency_maps(model, x[:1], engine="openvino")
    entry = E._COMPILED[next(reversed(E._COMPILED))]
    entry.streams = 3
    sizes = []
    real = entry.compiled.create_infer_request

    class Spy:
        def __init__(self):
            self.request = real()

        def start_async(self, inputs, **kw):
            sizes.append(inputs[0].shape[0])
            return self.request.start_async(inputs, **kw)

        def __getattr__(self, name):
            return getattr(self.request, name)

    class Compiled:
        def __getattr__(self, name):
            return getattr(entry.compiled, name)

        def create_infer_request(self):
            return Spy()

    original = entry.compiled
    entry.compiled = Compiled()
    try:
        ref = xaifast.saliency_maps(model, x, engine="openvino", batch_size=7)
        assert entry.batch_invariant is True
        assert sizes[-3:] == [2, 2, 3] and sum(sizes[-3:]) == 7
        sizes.clear()
        entry.batch_invariant = False
        assert torch.equal(xaifast.saliency_maps(model, x, engine="openvino", batch_size=7), ref)
        assert sizes == [7]
    finally:
        entry.compiled = original
        entry.batch_invariant = None
