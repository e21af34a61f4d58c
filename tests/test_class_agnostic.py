"""ActivationMap and EigenCAM against float64 references; EigenCAM's sign rule."""
import numpy as np
import pytest
import torch

import xaifast
from xaifast import functional as XF
from xaifast.zoo import SmallCNN
from reference import activation_map_reference, eigen_cam_reference


@pytest.mark.parametrize("shape", [(1, 8, 4, 4), (3, 16, 5, 3), (2, 32, 7, 9), (2, 3, 2, 2)])
def test_activation_map(shape):
    f = torch.randn(*shape)
    np.testing.assert_allclose(XF.activation_map(f).numpy(), activation_map_reference(f), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 8, 4, 4), (3, 16, 5, 3), (2, 64, 7, 7), (2, 3, 6, 2)])
def test_eigen_cam_equals_reference(shape):
    f = torch.randn(*shape) + torch.linspace(0, 2, shape[3])  # a dominant spatial direction
    np.testing.assert_allclose(XF.eigen_cam(f).numpy(), eigen_cam_reference(f), rtol=1e-5, atol=1e-5)


def test_eigen_cam_sign_follows_the_activation_map():
    b, c, h, w = 4, 16, 6, 6
    blob = torch.zeros(h, w)
    blob[1:3, 3:5] = 1.0
    for sign in (1.0, -1.0):
        # every channel peaks (sign=+1) or dips (sign=-1) on the same blob
        f = sign * (blob * torch.rand(b, c, 1, 1) * 5) + 0.01 * torch.randn(b, c, h, w)
        maps = XF.eigen_cam(f)
        act = XF.activation_map(f)
        for m, a in zip(maps, act):
            corr = ((m - m.mean()) * (a - a.mean())).sum()
            assert corr >= 0
        # the blob is where the activation map is extreme: EigenCAM follows the activation map's sign
        assert (maps[:, 1:3, 3:5].mean() > maps.mean()) == (sign > 0)
    f = torch.randn(b, c, h, w)
    torch.testing.assert_close(XF.eigen_cam(-f), -XF.eigen_cam(f), rtol=1e-5, atol=1e-5)


def test_image_group_gives_one_class_agnostic_map():
    model = SmallCNN(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    for algorithm, fn in [("auto", XF.activation_map), ("activationmap", XF.activation_map), ("eigencam", XF.eigen_cam)]:
        cfg = xaifast.ExplainConfig(target_explain_group="IMAGE", algorithm=algorithm)
        exs = list(xaifast.explain(model, x, cfg))
        assert all(list(e.saliency_map) == ["image"] for e in exs)
        feature = model.features(x)
        expected = XF.normalize(fn(feature).detach())
        for e, m in zip(exs, expected):
            assert np.abs(e.saliency_map["image"].astype(int) - m.numpy().astype(int)).max() <= 1


def test_saliency_maps_class_agnostic_shape():
    model = SmallCNN(num_classes=4).eval()
    maps = xaifast.saliency_maps(model, torch.randn(2, 3, 32, 32), algorithm="eigencam")
    assert maps.shape == (2, 1, 4, 4) and maps.dtype == torch.float32
