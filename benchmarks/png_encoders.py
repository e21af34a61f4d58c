"""PNG / JPEG encoder speed and size on the images a dump writes: which encoder should
xaifast.stages.encode use? Prints one table (ms per image, bytes per image, both averaged over
the images of a case) and a threads check. Every PNG candidate is checked to decode to exactly
the input pixels (cv2.imdecode) before it is timed.

Cases (all RGB uint8):
    heat_640x480, heat_1200x900       JET heat maps of smooth 7x7 maps (3 seeds) resized with
                                      INTER_LINEAR, as xaifast.postprocess makes them
    overlay_640x480, overlay_1200x900 those heat maps blended 50/50 over scikit-image photos
                                      (astronaut, coffee, chelsea, rocket, motorcycle_left)
Encoders:
    cv2 default                       cv2.imencode(".png") with OpenCV's defaults (what xaifast used)
    cv2 c<L> <strategy> <filter>      IMWRITE_PNG_COMPRESSION L (0..3), IMWRITE_PNG_STRATEGY,
                                      IMWRITE_PNG_FILTER ("-" = not set); the full grid with --grid
    fpng                              fpng.from_ndarray (PyPI "fpng", a wrapper of Rich Geldreich's fpng)
    pillow c1                         PIL.Image.save(format="PNG", compress_level=1), for reference
    numpy-sub + zlib 1                SUB filter in numpy + the standard library's zlib level 1
    xaifast encode_png                xaifast.stages.encode.encode_png (the choice)
    jpg q90                           xaifast.stages.encode.encode_jpg(quality=90)

    python benchmarks/png_encoders.py            # the short list
    python benchmarks/png_encoders.py --grid     # + every cv2 level / strategy / filter combination
    python benchmarks/png_encoders.py --reps 15 --threads-n 300
"""
from __future__ import annotations

import argparse
import io
import os
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/ (also under python -P)
try:  # benchmarks/idle.py: wait for a quiet machine (shared) before each measurement
    from idle import wait_summary, wait_until_idle
except ImportError:  # pragma: no cover
    def wait_until_idle(*args, **kwargs):
        return 0.0

    def wait_summary():
        return "no idle waits"

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]  # skimage.data files
SIZES = [(480, 640), (900, 1200)]
STRATEGIES = {"default": cv2.IMWRITE_PNG_STRATEGY_DEFAULT, "rle": cv2.IMWRITE_PNG_STRATEGY_RLE,
              "huffman": cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, "filtered": cv2.IMWRITE_PNG_STRATEGY_FILTERED,
              "fixed": cv2.IMWRITE_PNG_STRATEGY_FIXED}
FILTERS = {"-": None, "none": cv2.IMWRITE_PNG_FILTER_NONE, "sub": cv2.IMWRITE_PNG_FILTER_SUB,
           "up": cv2.IMWRITE_PNG_FILTER_UP, "paeth": cv2.IMWRITE_PNG_FILTER_PAETH,
           "fast": cv2.IMWRITE_PNG_FAST_FILTERS}


def smooth_map(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = cv2.GaussianBlur(rng.random((7, 7)).astype(np.float32), (3, 3), 0)
    return np.floor((m - m.min()) / (m.max() - m.min() + 1e-12) * 255).astype(np.uint8)


def heat_map(m: np.ndarray, H: int, W: int) -> np.ndarray:
    resized = cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(cv2.applyColorMap(resized, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(photo: np.ndarray, heat: np.ndarray) -> np.ndarray:
    H, W = heat.shape[:2]
    p = cv2.resize(photo, (W, H), interpolation=cv2.INTER_AREA)
    return np.floor(0.5 * p.astype(np.float32) + 0.5 * heat.astype(np.float32) + 0.5).astype(np.uint8)


def cases() -> Dict[str, List[np.ndarray]]:
    import skimage.data

    folder = os.path.dirname(skimage.data.__file__)
    photos = [cv2.cvtColor(cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for name in PHOTOS]
    out = {}
    for H, W in SIZES:
        heats = [heat_map(smooth_map(s), H, W) for s in range(3)]
        out[f"heat_{W}x{H}"] = heats
        out[f"overlay_{W}x{H}"] = [overlay(p, heats[i % 3]) for i, p in enumerate(photos)]
    return out


def cv2_png(params: List[int]) -> Callable[[np.ndarray], bytes]:
    def enc(image):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        assert ok
        return buf.tobytes()
    return enc


def cv2_params(level, strategy, filt) -> List[int]:
    # OpenCV resets the strategy when it reads IMWRITE_PNG_COMPRESSION: the level goes first
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if strategy is not None:
        params += [cv2.IMWRITE_PNG_STRATEGY, STRATEGIES[strategy]]
    if FILTERS[filt] is not None:
        params += [cv2.IMWRITE_PNG_FILTER, FILTERS[filt]]
    return params


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def numpy_sub_zlib(image: np.ndarray, level: int = 1) -> bytes:
    """A minimal PNG writer: SUB filter in numpy, standard-library zlib (releases the GIL)."""
    H, W, C = image.shape
    a = image.reshape(H, W * C)
    raw = np.empty((H, W * C + 1), np.uint8)
    raw[:, 0] = 1
    raw[:, 1:C + 1] = a[:, :C]
    np.subtract(a[:, C:], a[:, :-C], out=raw[:, C + 1:])
    ihdr = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw.data, level))
            + _chunk(b"IEND", b""))


def encoders(grid: bool) -> Dict[str, Callable[[np.ndarray], bytes]]:
    from xaifast.stages import encode as E

    out: Dict[str, Callable] = {"cv2 default": cv2_png([])}
    if grid:
        for level in range(4):
            for strategy in (["default"] if level == 0 else list(STRATEGIES)):
                for filt in FILTERS:
                    out[f"cv2 c{level} {strategy} {filt}"] = cv2_png(cv2_params(level, strategy, filt))
    else:
        for name in ["c0 default none", "c0 default sub", "c1 default -", "c1 rle sub", "c1 huffman sub",
                     "c1 huffman up", "c1 filtered sub", "c1 default sub", "c1 rle up", "c2 rle sub",
                     "c3 default -"]:
            level, strategy, filt = name.split()
            out[f"cv2 {name}"] = cv2_png(cv2_params(int(level[1:]), strategy, filt))
    try:
        import fpng

        out["fpng"] = fpng.from_ndarray
    except ImportError:
        print("fpng not installed: skipped", file=sys.stderr)
    try:
        from PIL import Image

        def pillow(image):
            f = io.BytesIO()
            Image.fromarray(image).save(f, format="PNG", compress_level=1)
            return f.getvalue()
        out["pillow c1"] = pillow
    except ImportError:
        pass
    out["numpy-sub + zlib 1"] = numpy_sub_zlib
    out["xaifast encode_png"] = E.encode_png
    out["jpg q90 (lossy)"] = lambda image: E.encode_jpg(image, 90)
    return out


def _decode_rgb(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def measure(enc, images, reps: int):
    """(ms per image, bytes per image): mean over the images of each image's median time."""
    times, sizes = [], []
    wait_until_idle()
    for image in images:
        data = enc(image)  # warm-up
        sizes.append(len(data))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            enc(image)
            ts.append(time.perf_counter() - t0)
        times.append(float(np.median(ts)))
    return 1e3 * float(np.mean(times)), float(np.mean(sizes))


def threads_check(enc, image, n: int, threads: int) -> float:
    """images/s encoding `n` copies of `image` on `threads` threads (best of 3)."""
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(enc, [image] * threads))
        for _ in range(3):
            wait_until_idle()
            t0 = time.perf_counter()
            list(pool.map(enc, [image] * n))
            best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", action="store_true", help="every cv2 level / strategy / filter combination")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads-n", type=int, default=200, help="images per threads-check round")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--threads-only", action="store_true", help="only the threads check")
    a = ap.parse_args(argv)
    data = cases()
    if a.only:
        data = {k: v for k, v in data.items() if k in a.only.split(",")}
    encs = encoders(a.grid)
    print(f"machine: {os.cpu_count()} logical CPUs; cv2 {cv2.__version__}, numpy {np.__version__}; "
          f"median of {a.reps} per image, averaged over the images of a case")
    for case, images in ({} if a.threads_only else data).items():
        for name, enc in encs.items():
            if not name.startswith("jpg"):
                for image in images:
                    assert np.array_equal(_decode_rgb(enc(image)), image), (case, name)
        base_ms, base_b = measure(encs["cv2 default"], images, a.reps)
        print(f"\n{case} ({len(images)} images)")
        print(f"{'encoder':<28} {'ms/image':>9} {'bytes/image':>12} {'speed x':>8} {'size x':>7}")
        rows = []
        for name, enc in encs.items():
            ms, b = (base_ms, base_b) if name == "cv2 default" else measure(enc, images, a.reps)
            rows.append((name, ms, b))
        for name, ms, b in sorted(rows, key=lambda r: r[1]) if a.grid else rows:
            print(f"{name:<28} {ms:>9.2f} {b:>12.0f} {base_ms / ms:>8.2f} {b / base_b:>7.2f}")
        sys.stdout.flush()
    case = "overlay_640x480" if "overlay_640x480" in data else next(iter(data))
    image = data[case][0]
    print(f"\nthreads check: images/s encoding the first image of {case} {a.threads_n} times "
          f"(best of 3 rounds)")
    for name in ["cv2 default", "xaifast encode_png", "fpng", "numpy-sub + zlib 1", "jpg q90 (lossy)"]:
        if name in encs:
            one = threads_check(encs[name], image, a.threads_n, 1)
            two = threads_check(encs[name], image, a.threads_n, 2)
            print(f"{name:<28} 1 thread {one:>7.0f}/s   2 threads {two:>7.0f}/s   ({two / one:.2f}x)")
    print(f"note: {wait_summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
