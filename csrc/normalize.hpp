// xaifast native kernels: per-map min-max normalisation to uint8.
//
// Plain C++17, no Python headers; the pybind11 glue lives in bindings.cpp.
#pragma once

#include <cstdint>

namespace xaifast {

// Normalises `num_maps` float32 maps of `map_size` elements each (stored
// contiguously, map after map) to uint8, writing to `out` (same layout).
//
// Contract (shared by every xaifast backend), per map, in float32, in this order:
//   mn = min(x); mx = max(x); denom = (mx - mn) + 1e-12f;
//   u  = floor(((x - mn) / denom) * 255.0f), clamped to [0, 255], cast to uint8 (OTX's order).
// A constant map gives zeros. NaNs are ignored when computing min/max and map
// to 0 (as the minimum does); an all-NaN map gives zeros. Any other value whose
// formula result is NaN (e.g. from infinities) also maps to 0.
//
// Maps are split into contiguous chunks over min(num_threads, num_maps)
// std::threads; num_threads <= 0 means std::thread::hardware_concurrency().
// With one thread the work runs inline on the calling thread.
void normalize_maps_u8(const float* in, std::uint8_t* out, std::int64_t num_maps,
                       std::int64_t map_size, int num_threads);

// Single-map worker, exposed for tests and benchmarks.
void normalize_map_u8(const float* in, std::uint8_t* out, std::int64_t map_size);

}  // namespace xaifast
