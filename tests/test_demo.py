"""The embedded-default demo and the run folder it writes."""
import io
import json
import os

import cv2
import numpy as np
import pytest

from xaifast.demo import demo_photos, run_demo


@pytest.mark.slow
def test_demo_writes_maps_overlays_index_and_latest(tmp_path, skimage_data):
    photos = [os.path.join(skimage_data, n) for n in ("coffee.png", "chelsea.png")]
    out = io.StringIO()
    first = run_demo(str(tmp_path), photos, out=out)
    text = out.getvalue()
    assert "espresso" in text and "explained 2 images, 4 files" in text
    maps = first / "explain" / "saliency_maps"
    assert sorted(os.listdir(maps)) == ["chelsea_class_285_overlay.png", "chelsea_class_285_saliency_map.png",
                                        "coffee_class_967_overlay.png", "coffee_class_967_saliency_map.png"]
    overlay = cv2.imread(str(maps / "coffee_class_967_overlay.png"))
    assert overlay.shape == (400, 600, 3)
    index = json.loads((first / "explain" / "index.json").read_text())
    assert [r["predictions"][0]["label"] for r in index["images"]] == ["espresso", "Egyptian cat"]
    assert index["images"][0]["files"] == ["explain/saliency_maps/coffee_class_967_saliency_map.png",
                                           "explain/saliency_maps/coffee_class_967_overlay.png"]
    assert os.path.realpath(tmp_path / ".latest") == str(first)
    second = run_demo(str(tmp_path), photos[:1], out=io.StringIO())
    assert second != first and (maps / "coffee_class_967_overlay.png").exists()  # first run kept
    assert os.path.realpath(tmp_path / ".latest") == str(second)


def test_demo_photos_are_bundled():
    photos = demo_photos()
    assert any(p.endswith("coffee.png") for p in photos) and all(os.path.isfile(p) for p in photos)
