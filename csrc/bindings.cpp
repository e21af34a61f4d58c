// pybind11 bindings: the `xaifast._C` extension module.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "normalize.hpp"
#include "postprocess.hpp"

namespace py = pybind11;

#ifndef XAIFAST_CXX_FLAGS
#define XAIFAST_CXX_FLAGS ""
#endif
#ifndef XAIFAST_BUILD_TYPE
#define XAIFAST_BUILD_TYPE ""
#endif

namespace {

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d) s << ", ";
    s << a.shape(d);
  }
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

py::array normalize_u8(const py::array& maps, int num_threads) {
  if (!maps.dtype().equal(py::dtype::of<float>())) {
    throw py::type_error("normalize_u8 expects float32 maps, got " +
                         py::str(maps.dtype()).cast<std::string>() +
                         "; convert with maps.astype(np.float32)");
  }
  if (maps.ndim() < 2) {
    throw py::value_error("normalize_u8 expects maps of ndim >= 2 (..., H, W), got shape " +
                          shape_str(maps));
  }
  std::vector<py::ssize_t> shape(maps.shape(), maps.shape() + maps.ndim());
  py::array_t<std::uint8_t> out(shape);
  if (maps.size() == 0) return std::move(out);

  // Same dtype by now, so this only copies when `maps` is not C-contiguous.
  auto in = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(maps);
  if (!in) throw py::error_already_set();

  const std::int64_t map_size =
      static_cast<std::int64_t>(shape[shape.size() - 2]) * static_cast<std::int64_t>(shape.back());
  const std::int64_t num_maps = static_cast<std::int64_t>(maps.size()) / map_size;
  const float* src = in.data();
  std::uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    xaifast::normalize_maps_u8(src, dst, num_maps, map_size, num_threads);
  }
  return std::move(out);
}

// Largest accepted size along one axis of a map or of the output (keeps all index arithmetic
// in the kernels comfortably inside 32-bit ints).
constexpr std::int64_t kMaxSide = std::int64_t{1} << 24;

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

py::tuple postprocess_u8(const py::object& maps_obj, const py::object& image_obj, std::int64_t out_h,
                         std::int64_t out_w, double alpha, int num_threads) {
  if (!py::isinstance<py::array>(maps_obj)) {
    throw py::type_error("postprocess_u8 expects maps as a uint8 numpy array [K, h, w], got " +
                         py::str(py::type::of(maps_obj).attr("__name__")).cast<std::string>());
  }
  const py::array maps = py::reinterpret_borrow<py::array>(maps_obj);
  if (!maps.dtype().equal(py::dtype::of<std::uint8_t>())) {
    throw py::type_error("postprocess_u8 expects uint8 maps [K, h, w], got dtype " + dtype_str(maps) +
                         "; normalize float maps first (xaifast.functional.normalize)");
  }
  if (maps.ndim() != 3) {
    throw py::value_error("postprocess_u8 expects maps of shape [K, h, w], got shape " + shape_str(maps));
  }
  const std::int64_t num_maps = maps.shape(0), map_h = maps.shape(1), map_w = maps.shape(2);
  // K = 0 is fine (no maps: empty outputs, e.g. a multi-label image without predictions);
  // a map itself must have at least one pixel.
  if (map_h < 1 || map_w < 1) {
    throw py::value_error("postprocess_u8 needs maps of at least 1x1 pixels, got maps of shape " +
                          shape_str(maps));
  }
  if (map_h > kMaxSide || map_w > kMaxSide) {
    throw py::value_error("postprocess_u8: maps of shape " + shape_str(maps) + " are too large (at most " +
                          std::to_string(kMaxSide) + " per side)");
  }
  if (out_h < 1 || out_w < 1 || out_h > kMaxSide || out_w > kMaxSide) {
    throw py::value_error("postprocess_u8: output size must be within 1.." + std::to_string(kMaxSide) +
                          " per side, got (" + std::to_string(out_h) + ", " + std::to_string(out_w) + ")");
  }
  if (!(alpha >= 0.0 && alpha <= 1.0)) {  // also rejects NaN
    std::ostringstream msg;
    msg << "postprocess_u8: alpha must be within [0, 1], got " << alpha;
    throw py::value_error(msg.str());
  }
  const std::int64_t pixels = out_h * out_w * 3;
  if (num_maps > std::numeric_limits<py::ssize_t>::max() / 2 / pixels) {
    throw py::value_error("postprocess_u8: output of " + std::to_string(num_maps) + " x " + std::to_string(out_h) +
                          " x " + std::to_string(out_w) + " x 3 bytes is too large");
  }

  py::array_t<std::uint8_t, py::array::c_style> image_c;
  const bool with_overlay = !image_obj.is_none();
  if (with_overlay) {
    if (!py::isinstance<py::array>(image_obj)) {
      throw py::type_error("postprocess_u8 expects the image as an RGB uint8 numpy array [H, W, 3] or None, got " +
                           py::str(py::type::of(image_obj).attr("__name__")).cast<std::string>());
    }
    const py::array image = py::reinterpret_borrow<py::array>(image_obj);
    if (!image.dtype().equal(py::dtype::of<std::uint8_t>())) {
      throw py::type_error("postprocess_u8 expects an RGB uint8 image [H, W, 3], got dtype " + dtype_str(image));
    }
    if (image.ndim() != 3 || image.shape(0) != out_h || image.shape(1) != out_w || image.shape(2) != 3) {
      throw py::value_error("postprocess_u8 expects an RGB image of shape (" + std::to_string(out_h) + ", " +
                            std::to_string(out_w) + ", 3) (the output size), got shape " + shape_str(image));
    }
    // Same dtype by now: this only copies a non-C-contiguous image.
    image_c = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>::ensure(image);
    if (!image_c) throw py::error_already_set();
  }
  auto maps_c = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>::ensure(maps);
  if (!maps_c) throw py::error_already_set();

  const std::vector<py::ssize_t> shape = {static_cast<py::ssize_t>(num_maps), static_cast<py::ssize_t>(out_h),
                                          static_cast<py::ssize_t>(out_w), 3};
  py::array_t<std::uint8_t> heat(shape);
  py::object overlay_obj = py::none();
  std::uint8_t* overlay_ptr = nullptr;
  const std::uint8_t* image_ptr = nullptr;
  if (with_overlay) {
    py::array_t<std::uint8_t> overlay(shape);
    overlay_ptr = overlay.mutable_data();
    image_ptr = image_c.data();
    overlay_obj = std::move(overlay);
  }
  const std::uint8_t* maps_ptr = maps_c.data();
  std::uint8_t* heat_ptr = heat.mutable_data();
  if (num_maps > 0) {
    py::gil_scoped_release release;
    xaifast::postprocess_maps_u8(maps_ptr, num_maps, static_cast<int>(map_h), static_cast<int>(map_w), image_ptr,
                                 static_cast<int>(out_h), static_cast<int>(out_w), alpha, heat_ptr, overlay_ptr,
                                 num_threads);
  }
  return py::make_tuple(std::move(heat), std::move(overlay_obj));
}

py::array jet_lut() {
  py::array_t<std::uint8_t> out(std::vector<py::ssize_t>{256, 3});
  std::copy(xaifast::kJetRGB, xaifast::kJetRGB + 256 * 3, out.mutable_data());
  return std::move(out);
}

py::dict build_info() {
  py::dict info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = "msvc " + std::to_string(_MSC_VER);
#else
  info["compiler"] = "unknown";
#endif
  info["cxx_standard"] = static_cast<long>(__cplusplus);
  info["cxx_flags"] = XAIFAST_CXX_FLAGS;
  info["build_type"] = XAIFAST_BUILD_TYPE;
  info["pybind11_version"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                             std::to_string(PYBIND11_VERSION_MINOR) + "." +
                             std::to_string(PYBIND11_VERSION_PATCH);
#if defined(__SSE2__) || defined(_M_X64)
  info["simd"] = "sse2";
#elif defined(__ARM_NEON)
  info["simd"] = "neon";
#else
  info["simd"] = "none";
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "xaifast native kernels (C++17, std::thread)";
  m.def("normalize_u8", &normalize_u8, py::arg("maps"), py::arg("num_threads") = 0,
        R"doc(Normalise each map (the last two axes) of a float32 array to uint8.

Per map, in float32: mn, mx = min, max (NaNs ignored);
u = floor(((x - mn) / ((mx - mn) + 1e-12)) * 255), clamped to [0, 255].
NaNs map to 0; constant and all-NaN maps give zeros. Accepts any strides
(non-contiguous input is copied); rejects non-float32 dtypes (TypeError) and
ndim < 2 (ValueError). num_threads <= 0 uses all hardware threads. The GIL is
released while computing. Returns a new uint8 array of the same shape.)doc");
  m.def("postprocess_u8", &postprocess_u8, py::arg("maps"), py::arg("image"), py::arg("out_h"),
        py::arg("out_w"), py::arg("alpha") = 0.5, py::arg("num_threads") = 0,
        R"doc(Fused postprocessing of uint8 saliency maps: resize -> JET -> overlay.

maps: uint8 [K, h, w] (K may be 0); image: RGB uint8 [out_h, out_w, 3] or None. Returns
(heat, overlay), both uint8 [K, out_h, out_w, 3] RGB; overlay is None when image is None.
Resize is OpenCV's cv2.resize INTER_LINEAR for 8-bit images (same fixed-point arithmetic),
the colormap OpenCV's COLORMAP_JET (as RGB), the overlay per channel
floor(float32(1 - alpha) * image + float32(alpha) * heat + 0.5) in float32.
Non-contiguous inputs are copied; wrong types raise TypeError, wrong shapes or alpha
outside [0, 1] ValueError. The GIL is released while computing; the work is split into
(map, row block) units over num_threads std::threads (<= 0: all hardware threads).)doc");
  m.def("jet_lut", &jet_lut, "The JET colormap table used by postprocess_u8: uint8 [256, 3], RGB.");
  m.def("build_info", &build_info, "Compiler, flags and SIMD level the extension was built with.");
}
