"""xaifast._C.normalize_u8 (C++, std::thread) against slow, obviously correct references.

The contract, per map (last two axes), in float32 and in this order:
    mn, mx = min(x), max(x)          (NaNs ignored)
    denom  = (mx - mn) + 1e-12
    u      = floor(((x - mn) / denom) * 255), clamped to [0, 255]  (NaN -> 0)  [OTX's order]
"""
import os
import sysconfig

import numpy as np
import pytest

import xaifast._C as _C  # a missing extension must fail the run, not skip it

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ref_normalize_f32(maps: np.ndarray) -> np.ndarray:
    """The float32 contract, one map at a time, with numpy float32 scalars."""
    x = np.array(maps, dtype=np.float32)  # copy, C order
    shape = x.shape
    flat = x.reshape(-1, shape[-2] * shape[-1])
    out = np.zeros(flat.shape, dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for k in range(flat.shape[0]):
            m = flat[k]
            valid = m[~np.isnan(m)]
            if valid.size == 0:
                continue  # all NaN -> zeros
            mn = np.float32(valid.min())
            mx = np.float32(valid.max())
            denom = np.float32(np.float32(mx - mn) + np.float32(1e-12))
            u = np.floor(((m - mn) / denom) * np.float32(255.0))
            assert u.dtype == np.float32
            u = np.where(np.isnan(u), np.float32(0), np.clip(u, 0, 255))
            out[k] = u.astype(np.uint8)
    return out.reshape(shape)


def ref_normalize_f64(maps: np.ndarray) -> np.ndarray:
    """floor(255 * (x - min) / (max - min + 1e-12)) evaluated in float64 (finite, NaN-free maps)."""
    x = np.asarray(maps, dtype=np.float64)
    shape = x.shape
    flat = x.reshape(-1, shape[-2] * shape[-1])
    mn = flat.min(axis=1, keepdims=True)
    mx = flat.max(axis=1, keepdims=True)
    u = np.floor(255.0 * (flat - mn) / (mx - mn + 1e-12))
    return np.clip(u, 0, 255).astype(np.uint8).reshape(shape)


def _random_maps(rng, shape, scale=None):
    scale = float(10.0 ** rng.uniform(-3, 3)) if scale is None else scale
    return (rng.standard_normal(shape) * scale + rng.uniform(-scale, scale)).astype(np.float32)


# --- the installed package, not the source tree ------------------------------------------------

def test_imports_installed_package_not_source_tree():
    import xaifast
    import xaifast._C as c

    site_dirs = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    pkg_dir = os.path.realpath(os.path.dirname(xaifast.__file__))
    assert os.path.dirname(pkg_dir) in site_dirs, (
        f"xaifast was imported from {pkg_dir}, not from this interpreter's site-packages {sorted(site_dirs)}; "
        "run tests with `make test` (or `.venv/bin/python -P -m pytest`) so the source folder does not "
        "shadow the installed package")
    assert pkg_dir != os.path.realpath(os.path.join(REPO_ROOT, "xaifast"))
    assert os.path.realpath(os.path.dirname(c.__file__)) == pkg_dir
    import xaifast.kernels as k
    assert os.path.realpath(os.path.dirname(k.__file__)) == os.path.join(pkg_dir, "kernels")


def test_build_info():
    info = _C.build_info()
    assert isinstance(info, dict)
    assert info["cxx_standard"] >= 201703
    assert "-O3" in info["cxx_flags"] or "/O2" in info["cxx_flags"]
    assert "-march=native" not in info["cxx_flags"]


# --- hand-computed values (independent of the reference implementation) ------------------------

def test_known_values():
    x = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    np.testing.assert_array_equal(_C.normalize_u8(x), [[0, 127, 255, 63]])
    y = np.array([[[-2.0, 2.0], [0.0, 1.0]]], dtype=np.float32)  # range 4
    np.testing.assert_array_equal(_C.normalize_u8(y), [[[0, 255], [127, 191]]])


def test_output_dtype_shape_and_input_untouched(rng):
    x = _random_maps(rng, (3, 4, 9, 11))
    before = x.copy()
    out = _C.normalize_u8(x)
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(x, before)
    # each map uses its own min/max: every map has a 0
    assert (out.reshape(12, -1).min(axis=1) == 0).all()


# --- random inputs vs the float32 and float64 references ---------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 7), (2, 5, 13, 17), (4, 1000, 7, 7), (1, 1, 224, 224),
                                   (2, 3, 1, 33), (5, 16, 1)])
def test_matches_float32_contract_exactly(rng, shape):
    x = _random_maps(rng, shape)
    out = _C.normalize_u8(x)
    np.testing.assert_array_equal(out, ref_normalize_f32(x))
    diff = np.abs(out.astype(np.int16) - ref_normalize_f64(x).astype(np.int16))
    assert diff.max(initial=0) <= 1


@pytest.mark.parametrize("view", ["slice", "transpose", "fortran", "negative_stride", "broadcast"])
def test_non_contiguous_input(rng, view):
    base = _random_maps(rng, (4, 6, 20, 18))
    x = {
        "slice": lambda: base[:, ::2, 1::3, ::2],
        "transpose": lambda: base.transpose(1, 0, 3, 2),
        "fortran": lambda: np.asfortranarray(base),
        "negative_stride": lambda: base[::-1, :, ::-1, :],
        "broadcast": lambda: np.broadcast_to(base[0, 0], (3, 2, 20, 18)),
    }[view]()
    if view != "fortran":
        assert not x.flags.c_contiguous
    out = _C.normalize_u8(x)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, ref_normalize_f32(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(out, _C.normalize_u8(np.ascontiguousarray(x)))


@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1.0, 1e6, 1e20, 1e30])
def test_tiny_negative_and_huge_values(rng, scale):
    x = _random_maps(rng, (6, 15, 15), scale=scale)
    x[0] -= np.float32(5 * scale)  # all negative
    x[1] = -np.abs(x[1])
    out = _C.normalize_u8(x)
    np.testing.assert_array_equal(out, ref_normalize_f32(x))
    if scale >= 1e-6:  # far above the 1e-12 epsilon: float64 agrees within 1, max reaches >= 254
        diff = np.abs(out.astype(np.int16) - ref_normalize_f64(x).astype(np.int16))
        assert diff.max() <= 1
        assert (out.reshape(6, -1).max(axis=1) >= 254).all()
        if scale >= 1.0:  # the epsilon vanishes in float32: (mx - mn) / (mx - mn) == 1, the max is 255
            assert (out.reshape(6, -1).max(axis=1) == 255).all()
    else:  # range below ~1e-12: the epsilon dominates, so nothing reaches 255
        assert out.max() < 255


def test_constant_maps_are_zero(rng):
    x = _random_maps(rng, (5, 12, 12))
    x[1] = 0.0
    x[2] = 3.5
    x[3] = -1e30
    out = _C.normalize_u8(x)
    assert not out[1:4].any()
    assert out[0].max() >= 254 and out[4].max() >= 254  # the others are untouched


def test_nan_handling(rng):
    x = _random_maps(rng, (4, 10, 10))
    ok = x.copy()
    x[0, 3, 4] = np.nan
    x[0, 0, :] = np.nan
    x[1] = np.nan  # all NaN -> zeros
    x[2, ::2, ::3] = np.nan
    out = _C.normalize_u8(x)
    np.testing.assert_array_equal(out, ref_normalize_f32(x))
    assert not out[1].any()
    assert out[0, 3, 4] == 0 and not out[0, 0].any()
    assert not out[2, ::2, ::3].any()
    # NaNs are ignored for min/max: the non-NaN values are normalised as if the NaNs were not there
    valid = ~np.isnan(x[2])
    ref = ref_normalize_f32(np.where(valid, x[2], np.nanmin(x[2]))[None])[0]
    np.testing.assert_array_equal(out[2][valid], ref[valid])
    assert out[2][valid].max() >= 254
    # untouched map
    np.testing.assert_array_equal(out[3], ref_normalize_f32(ok[3:4])[0])


def test_nan_only_in_one_of_many_maps_does_not_leak(rng):
    x = _random_maps(rng, (64, 8, 8))
    x[17, 2, 2] = np.nan
    out = _C.normalize_u8(x, 4)
    clean = np.delete(np.arange(64), 17)
    np.testing.assert_array_equal(out[clean], ref_normalize_f32(x[clean]))


def test_infinities_follow_the_float32_formula():
    x = np.array([[[0.0, 1.0], [np.inf, 2.0]], [[-np.inf, 1.0], [2.0, 3.0]]], dtype=np.float32)
    out = _C.normalize_u8(x)
    np.testing.assert_array_equal(out, ref_normalize_f32(x))


# --- threads ----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_maps", [1, 2, 3, 7, 64, 1001])
def test_thread_counts_give_identical_results(rng, num_maps):
    x = _random_maps(rng, (num_maps, 9, 13))
    x.reshape(num_maps, -1)[::5, 3] = np.nan
    ref = ref_normalize_f32(x)
    for threads in (1, 2, 3, 8, 0, -1, 64):
        out = _C.normalize_u8(x, threads)
        np.testing.assert_array_equal(out, ref, err_msg=f"num_threads={threads}")
    np.testing.assert_array_equal(_C.normalize_u8(x, num_threads=2), ref)


def test_concurrent_calls_from_python_threads(rng):
    # the GIL is released inside; concurrent callers must not interfere
    import threading
    x = _random_maps(rng, (256, 64, 64))
    ref = _C.normalize_u8(x, 1)
    results = [None] * 4

    def work(i):
        results[i] = _C.normalize_u8(x, 1)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, ref)


# --- edge shapes and errors -------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 5, 5), (3, 0, 4), (2, 4, 0), (0, 0)])
def test_zero_size(shape):
    x = np.zeros(shape, dtype=np.float32)
    out = _C.normalize_u8(x)
    assert out.shape == shape and out.dtype == np.uint8


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8, np.int64, bool])
def test_rejects_non_float32(dtype):
    x = np.ones((2, 3, 3), dtype=dtype)
    with pytest.raises(TypeError, match=r"normalize_u8 expects float32 maps, got .*astype\(np.float32\)"):
        _C.normalize_u8(x)


def test_rejects_big_endian_float32():
    x = np.ones((2, 3, 3), dtype=">f4")
    with pytest.raises(TypeError, match="float32"):
        _C.normalize_u8(x)


@pytest.mark.parametrize("shape", [(5,), ()])
def test_rejects_ndim_below_2(shape):
    x = np.ones(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"ndim >= 2.*got shape \(" + ("5," if shape else "") + r"\)"):
        _C.normalize_u8(x)
