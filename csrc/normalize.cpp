// Per-map min-max normalisation to uint8; see normalize.hpp for the contract.
#include "normalize.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace xaifast {

namespace {

// NaN-ignoring min/max. `(x < m) ? x : m` keeps m when x is NaN; on x86 it is
// exactly one minps (maxps for the max), so no -ffast-math is needed and NaNs
// are skipped for free. GCC does not vectorise this reduction from a scalar
// loop, so the GCC/Clang path uses generic vector extensions (SSE2 on x86-64,
// NEON on aarch64) with 16 independent lanes; other compilers get the scalar loop.
#if defined(__GNUC__)
typedef float vf4 __attribute__((vector_size(16)));

inline vf4 load4(const float* p) {
  vf4 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
#endif

inline void min_max_ignore_nan(const float* x, std::int64_t n, float& mn_out, float& mx_out) {
  const float inf = std::numeric_limits<float>::infinity();
  float a = inf;
  float b = -inf;
  std::int64_t i = 0;
#if defined(__GNUC__)
  if (n >= 16) {
    const vf4 pinf = {inf, inf, inf, inf};
    vf4 mn0 = pinf, mn1 = pinf, mn2 = pinf, mn3 = pinf;
    vf4 mx0 = -pinf, mx1 = -pinf, mx2 = -pinf, mx3 = -pinf;
    for (; i + 16 <= n; i += 16) {
      const vf4 v0 = load4(x + i);
      const vf4 v1 = load4(x + i + 4);
      const vf4 v2 = load4(x + i + 8);
      const vf4 v3 = load4(x + i + 12);
      mn0 = (v0 < mn0) ? v0 : mn0;
      mn1 = (v1 < mn1) ? v1 : mn1;
      mn2 = (v2 < mn2) ? v2 : mn2;
      mn3 = (v3 < mn3) ? v3 : mn3;
      mx0 = (v0 > mx0) ? v0 : mx0;
      mx1 = (v1 > mx1) ? v1 : mx1;
      mx2 = (v2 > mx2) ? v2 : mx2;
      mx3 = (v3 > mx3) ? v3 : mx3;
    }
    mn0 = (mn1 < mn0) ? mn1 : mn0;
    mn2 = (mn3 < mn2) ? mn3 : mn2;
    mn0 = (mn2 < mn0) ? mn2 : mn0;
    mx0 = (mx1 > mx0) ? mx1 : mx0;
    mx2 = (mx3 > mx2) ? mx3 : mx2;
    mx0 = (mx2 > mx0) ? mx2 : mx0;
    for (int l = 0; l < 4; ++l) {
      a = (mn0[l] < a) ? mn0[l] : a;
      b = (mx0[l] > b) ? mx0[l] : b;
    }
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i];
    a = (v < a) ? v : a;
    b = (v > b) ? v : b;
  }
  mn_out = a;
  mx_out = b;
}

}  // namespace

void normalize_map_u8(const float* __restrict in, std::uint8_t* __restrict out,
                      std::int64_t map_size) {
  if (map_size <= 0) return;
  float mn = 0.0f;
  float mx = 0.0f;
  min_max_ignore_nan(in, map_size, mn, mx);
  if (!(mx >= mn)) {  // all NaN: mn = +inf, mx = -inf
    std::fill(out, out + map_size, std::uint8_t{0});
    return;
  }
  const float denom = (mx - mn) + 1e-12f;
  for (std::int64_t i = 0; i < map_size; ++i) {
    // Exactly the contract's float32 expression, in OTX's order (a subtraction,
    // a true division, then the product), so a map's maximum becomes 255.
    float u = ((in[i] - mn) / denom) * 255.0f;
    // Clamp before converting: on [0, 255] truncation equals floor, and every
    // value below 0 (floor < 0) or NaN becomes 0, every value >= 255 becomes 255.
    // This is identical to clamp(floor(u), 0, 255) and vectorises on plain SSE2.
    u = (u > 0.0f) ? u : 0.0f;  // NaN -> 0
    u = (u < 255.0f) ? u : 255.0f;
    out[i] = static_cast<std::uint8_t>(static_cast<std::int32_t>(u));
  }
}

void normalize_maps_u8(const float* in, std::uint8_t* out, std::int64_t num_maps,
                       std::int64_t map_size, int num_threads) {
  if (num_maps <= 0 || map_size <= 0) return;
  if (num_threads <= 0) {
    num_threads = static_cast<int>(std::thread::hardware_concurrency());
    if (num_threads <= 0) num_threads = 1;
  }
  const std::int64_t workers = std::min<std::int64_t>(num_threads, num_maps);

  auto run_range = [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t m = begin; m < end; ++m) {
      normalize_map_u8(in + m * map_size, out + m * map_size, map_size);
    }
  };

  if (workers <= 1) {
    run_range(0, num_maps);
    return;
  }

  // Contiguous, balanced chunks: the first `rem` workers take one extra map.
  const std::int64_t base = num_maps / workers;
  const std::int64_t rem = num_maps % workers;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(workers - 1));
  std::int64_t begin = 0;
  std::int64_t first_end = 0;
  for (std::int64_t w = 0; w < workers; ++w) {
    const std::int64_t end = begin + base + (w < rem ? 1 : 0);
    if (w == 0) {
      first_end = end;  // chunk 0 runs on the calling thread
    } else {
      try {
        threads.emplace_back(run_range, begin, end);
      } catch (...) {
        // Could not start a thread (resource limits): do that chunk here.
        run_range(begin, end);
      }
    }
    begin = end;
  }
  run_range(0, first_end);
  for (auto& t : threads) t.join();
}

}  // namespace xaifast
