"""The embedded-default demo (`make demo`) and the run folder it writes."""
import json
import os

import cv2
import pytest

from xaifast.demo import demo_photos, main


@pytest.mark.slow
def test_demo_writes_maps_overlays_index_and_latest(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "coffee.png: espresso" in out and "chelsea.png: Egyptian cat" in out
    n = len(demo_photos())
    assert f"explained {n} images: {n} maps, {2 * n} files, 0 failed" in out
    first = os.path.realpath(tmp_path / ".latest")
    maps = os.path.join(first, "explain", "saliency_maps")
    for name in ("coffee_class_967", "chelsea_class_285"):
        for kind in ("saliency_map", "overlay"):
            assert os.path.isfile(os.path.join(maps, f"{name}_{kind}.png"))
    assert cv2.imread(os.path.join(maps, "coffee_class_967_overlay.png")).shape == (400, 600, 3)
    index = json.loads(open(os.path.join(first, "explain", "index.json")).read())
    assert index["images"][0]["predictions"][0]["label"] == "espresso"
    assert index["images"][0]["files"] == ["explain/saliency_maps/coffee_class_967_saliency_map.png",
                                           "explain/saliency_maps/coffee_class_967_overlay.png"]
    assert main([str(tmp_path)]) == 0  # a second run: a new folder, the first kept
    assert os.path.realpath(tmp_path / ".latest") != first and os.path.isdir(maps)


def test_demo_photos_are_bundled():
    photos = demo_photos()
    assert any(p.endswith("coffee.png") for p in photos) and all(os.path.isfile(p) for p in photos)
