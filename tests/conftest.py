import os
import random
import sys
import zlib

import torch

if not torch.cuda.is_available():
    # Triton decides at import whether it interprets; torch.export may import it. Set it first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The existing suites test the PyTorch engine (its raw maps against float64 references); the
# OpenVINO engine, and the default engine choice, are tested in test_openvino_engine.py.
os.environ.setdefault("XAIFAST_ENGINE", "pytorch")

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py

# Fresh random inputs every run; XAIFAST_TEST_SEED=<n> replays a run (the seed is in the header).
RUN_SEED = int(os.environ.get("XAIFAST_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"xaifast random inputs: XAIFAST_TEST_SEED={RUN_SEED}"


def _seed_for(nodeid: str) -> int:
    return (zlib.crc32(nodeid.encode()) ^ RUN_SEED) % (2**31)


@pytest.fixture
def rng(request):
    return np.random.default_rng(_seed_for(request.node.nodeid))


@pytest.fixture(autouse=True)
def _seed_torch(request):
    torch.manual_seed(_seed_for(request.node.nodeid))


@pytest.fixture(scope="session")
def skimage_data():
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


@pytest.fixture(scope="session")
def efficientnet():
    from xaifast.zoo.efficientnet import efficientnet_lite0

    return efficientnet_lite0()


@pytest.fixture
def make_recipe(tmp_path):
    """make_recipe(num_classes) -> (recipe YAML path, checkpoint path) of a SmallCNN with fixed random
    weights (the same weights for every run that uses the pair)."""
    import torch

    from xaifast.zoo import SmallCNN

    def make(num_classes: int = 3, input_size: int = 32, name: str = "recipe"):
        ckpt = tmp_path / f"{name}.pth"
        torch.save({"state_dict": SmallCNN(num_classes=num_classes).state_dict()}, ckpt)
        path = tmp_path / f"{name}.yaml"
        labels = ", ".join(f"c{k}" for k in range(num_classes))
        path.write_text(f"model:\n  class_path: xaifast.zoo.builtin.SmallCNN\n  init_args: {{num_classes: {num_classes}}}\n"
                        f"input_size: [{input_size}, {input_size}]\nlabels: [{labels}]\n")
        return path, ckpt

    return make
