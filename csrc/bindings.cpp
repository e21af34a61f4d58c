// pybind11 bindings: the `xaifast._C` extension module.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "normalize.hpp"

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
  m.def("build_info", &build_info, "Compiler, flags and SIMD level the extension was built with.");
}
