// Fused saliency-map postprocessing: resize (OpenCV INTER_LINEAR, 8-bit) -> JET -> overlay.
// See postprocess.hpp for the exact contract.
#include "postprocess.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

namespace xaifast {

// OpenCV's COLORMAP_JET as RGB: generated from
//   cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1]
// (tests/test_postprocess.py checks it against OpenCV entry by entry).
const std::uint8_t kJetRGB[256 * 3] = {
      0,   0, 128,   0,   0, 132,   0,   0, 136,   0,   0, 140,  // 0-3
      0,   0, 144,   0,   0, 148,   0,   0, 152,   0,   0, 156,  // 4-7
      0,   0, 160,   0,   0, 164,   0,   0, 168,   0,   0, 172,  // 8-11
      0,   0, 176,   0,   0, 180,   0,   0, 184,   0,   0, 188,  // 12-15
      0,   0, 192,   0,   0, 196,   0,   0, 200,   0,   0, 204,  // 16-19
      0,   0, 208,   0,   0, 212,   0,   0, 216,   0,   0, 220,  // 20-23
      0,   0, 224,   0,   0, 228,   0,   0, 232,   0,   0, 236,  // 24-27
      0,   0, 240,   0,   0, 244,   0,   0, 248,   0,   0, 252,  // 28-31
      0,   0, 255,   0,   4, 255,   0,   8, 255,   0,  12, 255,  // 32-35
      0,  16, 255,   0,  20, 255,   0,  24, 255,   0,  28, 255,  // 36-39
      0,  32, 255,   0,  36, 255,   0,  40, 255,   0,  44, 255,  // 40-43
      0,  48, 255,   0,  52, 255,   0,  56, 255,   0,  60, 255,  // 44-47
      0,  64, 255,   0,  68, 255,   0,  72, 255,   0,  76, 255,  // 48-51
      0,  80, 255,   0,  84, 255,   0,  88, 255,   0,  92, 255,  // 52-55
      0,  96, 255,   0, 100, 255,   0, 104, 255,   0, 108, 255,  // 56-59
      0, 112, 255,   0, 116, 255,   0, 120, 255,   0, 124, 255,  // 60-63
      0, 128, 255,   0, 132, 255,   0, 136, 255,   0, 140, 255,  // 64-67
      0, 144, 255,   0, 148, 255,   0, 152, 255,   0, 156, 255,  // 68-71
      0, 160, 255,   0, 164, 255,   0, 168, 255,   0, 172, 255,  // 72-75
      0, 176, 255,   0, 180, 255,   0, 184, 255,   0, 188, 255,  // 76-79
      0, 192, 255,   0, 196, 255,   0, 200, 255,   0, 204, 255,  // 80-83
      0, 208, 255,   0, 212, 255,   0, 216, 255,   0, 220, 255,  // 84-87
      0, 224, 255,   0, 228, 255,   0, 232, 255,   0, 236, 255,  // 88-91
      0, 240, 255,   0, 244, 255,   0, 248, 255,   0, 252, 255,  // 92-95
      2, 255, 254,   6, 255, 250,  10, 255, 246,  14, 255, 242,  // 96-99
     18, 255, 238,  22, 255, 234,  26, 255, 230,  30, 255, 226,  // 100-103
     34, 255, 222,  38, 255, 218,  42, 255, 214,  46, 255, 210,  // 104-107
     50, 255, 206,  54, 255, 202,  58, 255, 198,  62, 255, 194,  // 108-111
     66, 255, 190,  70, 255, 186,  74, 255, 182,  78, 255, 178,  // 112-115
     82, 255, 174,  86, 255, 170,  90, 255, 166,  94, 255, 162,  // 116-119
     98, 255, 158, 102, 255, 154, 106, 255, 150, 110, 255, 146,  // 120-123
    114, 255, 142, 118, 255, 138, 122, 255, 134, 126, 255, 130,  // 124-127
    130, 255, 126, 134, 255, 122, 138, 255, 118, 142, 255, 114,  // 128-131
    146, 255, 110, 150, 255, 106, 154, 255, 102, 158, 255,  98,  // 132-135
    162, 255,  94, 166, 255,  90, 170, 255,  86, 174, 255,  82,  // 136-139
    178, 255,  78, 182, 255,  74, 186, 255,  70, 190, 255,  66,  // 140-143
    194, 255,  62, 198, 255,  58, 202, 255,  54, 206, 255,  50,  // 144-147
    210, 255,  46, 214, 255,  42, 218, 255,  38, 222, 255,  34,  // 148-151
    226, 255,  30, 230, 255,  26, 234, 255,  22, 238, 255,  18,  // 152-155
    242, 255,  14, 246, 255,  10, 250, 255,   6, 254, 255,   1,  // 156-159
    255, 252,   0, 255, 248,   0, 255, 244,   0, 255, 240,   0,  // 160-163
    255, 236,   0, 255, 232,   0, 255, 228,   0, 255, 224,   0,  // 164-167
    255, 220,   0, 255, 216,   0, 255, 212,   0, 255, 208,   0,  // 168-171
    255, 204,   0, 255, 200,   0, 255, 196,   0, 255, 192,   0,  // 172-175
    255, 188,   0, 255, 184,   0, 255, 180,   0, 255, 176,   0,  // 176-179
    255, 172,   0, 255, 168,   0, 255, 164,   0, 255, 160,   0,  // 180-183
    255, 156,   0, 255, 152,   0, 255, 148,   0, 255, 144,   0,  // 184-187
    255, 140,   0, 255, 136,   0, 255, 132,   0, 255, 128,   0,  // 188-191
    255, 124,   0, 255, 120,   0, 255, 116,   0, 255, 112,   0,  // 192-195
    255, 108,   0, 255, 104,   0, 255, 100,   0, 255,  96,   0,  // 196-199
    255,  92,   0, 255,  88,   0, 255,  84,   0, 255,  80,   0,  // 200-203
    255,  76,   0, 255,  72,   0, 255,  68,   0, 255,  64,   0,  // 204-207
    255,  60,   0, 255,  56,   0, 255,  52,   0, 255,  48,   0,  // 208-211
    255,  44,   0, 255,  40,   0, 255,  36,   0, 255,  32,   0,  // 212-215
    255,  28,   0, 255,  24,   0, 255,  20,   0, 255,  16,   0,  // 216-219
    255,  12,   0, 255,   8,   0, 255,   4,   0, 255,   0,   0,  // 220-223
    252,   0,   0, 248,   0,   0, 244,   0,   0, 240,   0,   0,  // 224-227
    236,   0,   0, 232,   0,   0, 228,   0,   0, 224,   0,   0,  // 228-231
    220,   0,   0, 216,   0,   0, 212,   0,   0, 208,   0,   0,  // 232-235
    204,   0,   0, 200,   0,   0, 196,   0,   0, 192,   0,   0,  // 236-239
    188,   0,   0, 184,   0,   0, 180,   0,   0, 176,   0,   0,  // 240-243
    172,   0,   0, 168,   0,   0, 164,   0,   0, 160,   0,   0,  // 244-247
    156,   0,   0, 152,   0,   0, 148,   0,   0, 144,   0,   0,  // 248-251
    140,   0,   0, 136,   0,   0, 132,   0,   0, 128,   0,   0,  // 252-255
};

namespace {

// The build is portable (no -march): the two vectorisable row loops are also compiled for
// AVX2 and picked at load time (GCC function multi-versioning, glibc ifunc; define
// XAIFAST_NO_TARGET_CLONES to opt out, e.g. for ThreadSanitizer builds). Both versions do the
// same integer and float32 operations (no FMA: -ffp-contract=off, and "avx2" does not enable
// FMA), so results do not depend on the CPU (checked: SSE2, AVX2 and -march=native builds give
// identical bytes).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    defined(__GLIBC__) && !defined(XAIFAST_NO_TARGET_CLONES)
#define XAIFAST_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define XAIFAST_TARGET_CLONES
#endif

constexpr int kCoefBits = 11;                 // OpenCV's INTER_RESIZE_COEF_BITS
constexpr int kCoefScale = 1 << kCoefBits;    // 2048
constexpr std::int64_t kUnitPixels = 32768;   // output pixels per work unit (about)

// Interpolation table of one axis: for each output coordinate, the two source indices and
// their 11-bit fixed-point weights (w0 + w1 == 2048 up to rounding).
struct Axis {
  std::vector<std::int32_t> i0, i1;
  std::vector<std::int32_t> w0, w1;
};

// OpenCV: saturate_cast<short>(float) == cvRound (round half to even); the weights are in
// [0, 2048], so no saturation can happen.
inline std::int32_t fixed_coef(float c) {
  return static_cast<std::int32_t>(std::lrint(static_cast<double>(c * static_cast<float>(kCoefScale))));
}

// clamp_coord: columns (OpenCV clamps the coordinate and zeroes the fraction out of range);
// rows keep their fractions and only the two source row indices are clamped.
Axis make_axis(int in, int out, bool clamp_coord) {
  Axis a;
  a.i0.resize(out);
  a.i1.resize(out);
  a.w0.resize(out);
  a.w1.resize(out);
  const double scale = 1.0 / (static_cast<double>(out) / static_cast<double>(in));
  for (int d = 0; d < out; ++d) {
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int s = static_cast<int>(std::floor(f));
    f -= static_cast<float>(s);
    if (clamp_coord) {
      if (s < 0) {
        s = 0;
        f = 0.0f;
      }
      if (s >= in - 1) {
        s = in - 1;
        f = 0.0f;
      }
    }
    a.i0[d] = std::min(std::max(s, 0), in - 1);
    a.i1[d] = std::min(std::max(s + 1, 0), in - 1);
    a.w0[d] = fixed_coef(1.0f - f);
    a.w1[d] = fixed_coef(f);
  }
  return a;
}

struct Job {
  const std::uint8_t* maps;
  int h, w;
  const std::uint8_t* image;
  int H, W;
  float wa, wb;  // float(1 - alpha), float(alpha)
  std::uint8_t* heat;
  std::uint8_t* overlay;
  const Axis* ax;
  const Axis* ay;
  const std::uint8_t* lut4;  // JET RGB padded to 4 bytes per entry
  std::int64_t rows_per_unit;
  std::int64_t units_per_map;
  std::int64_t num_units;
};

// Horizontal pass of one source row, kept as OpenCV's vertical pass uses it: (sum) >> 4,
// which fits int16 (at most 255 * 2048 / 16 = 32640).
inline void hpass_row(const std::uint8_t* __restrict src, const Axis& ax, int W,
                      std::int16_t* __restrict out) {
  const std::int32_t* i0 = ax.i0.data();
  const std::int32_t* i1 = ax.i1.data();
  const std::int32_t* w0 = ax.w0.data();
  const std::int32_t* w1 = ax.w1.data();
  for (int x = 0; x < W; ++x) {
    const std::int32_t v = src[i0[x]] * w0[x] + src[i1[x]] * w1[x];
    out[x] = static_cast<std::int16_t>(v >> 4);
  }
}

// Vertical pass, OpenCV's 8-bit arithmetic (v_mul_hi on int16, then a rounding shift by 2).
// The result is at most (1020 + 2) >> 2 = 255: no saturation needed.
XAIFAST_TARGET_CLONES void vpass_row(const std::int16_t* __restrict p0, const std::int16_t* __restrict p1,
                      std::int16_t b0, std::int16_t b1, int W, std::uint8_t* __restrict u) {
  for (int x = 0; x < W; ++x) {
    const std::int16_t t0 = static_cast<std::int16_t>((static_cast<std::int32_t>(p0[x]) * b0) >> 16);
    const std::int16_t t1 = static_cast<std::int16_t>((static_cast<std::int32_t>(p1[x]) * b1) >> 16);
    u[x] = static_cast<std::uint8_t>((t0 + t1 + 2) >> 2);
  }
}

// heat row: 3 bytes per pixel from the padded LUT; 4-byte copies that overlap the next
// pixel (rewritten right after), the last pixel with an exact 3-byte copy.
inline void colorize_row(const std::uint8_t* __restrict u, const std::uint8_t* __restrict lut4, int W,
                         std::uint8_t* __restrict dst) {
  int x = 0;
  for (; x + 1 < W; ++x) std::memcpy(dst + 3 * x, lut4 + 4 * u[x], 4);
  std::memcpy(dst + 3 * x, lut4 + 4 * u[x], 3);
}

// overlay row, n = 3 W channel values: floor(wa * image + wb * heat + 0.5f) in float32. Every
// term is >= 0, so the truncating conversion is floor; the result is at most 255.5 -> 255.
XAIFAST_TARGET_CLONES void blend_row(const std::uint8_t* __restrict img, const std::uint8_t* __restrict hr, float wa,
                      float wb, std::int64_t n, std::uint8_t* __restrict out) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float f = wa * static_cast<float>(img[i]) + wb * static_cast<float>(hr[i]) + 0.5f;
    const std::int32_t v = static_cast<std::int32_t>(f);
    out[i] = static_cast<std::uint8_t>(v < 255 ? v : 255);
  }
}

// One unit: map k, output rows [y_begin, y_end). rows: scratch for 2 horizontal-pass rows
// (2 * W int16), u: scratch for one row of resized values (W bytes).
void run_unit(const Job& job, std::int64_t k, int y_begin, int y_end, std::int16_t* rows,
              std::uint8_t* u) {
  const int W = job.W;
  const std::int64_t row_bytes = static_cast<std::int64_t>(W) * 3;
  const std::uint8_t* src = job.maps + k * static_cast<std::int64_t>(job.h) * job.w;
  std::int16_t* slot[2] = {rows, rows + W};
  int slot_row[2] = {-1, -1};

  // Returns the horizontal pass of source row r, computing it (when not cached) into a slot
  // that does not hold row `keep`. Rows come in non-decreasing order, so two slots suffice.
  auto get_row = [&](int r, int keep) -> const std::int16_t* {
    if (slot_row[0] == r) return slot[0];
    if (slot_row[1] == r) return slot[1];
    const int s = (slot_row[0] == keep && keep >= 0) ? 1 : 0;
    hpass_row(src + static_cast<std::int64_t>(r) * job.w, *job.ax, W, slot[s]);
    slot_row[s] = r;
    return slot[s];
  };

  for (int y = y_begin; y < y_end; ++y) {
    const int r0 = job.ay->i0[y];
    const int r1 = job.ay->i1[y];
    const std::int16_t* p0 = get_row(r0, r1);
    const std::int16_t* p1 = (r1 == r0) ? p0 : get_row(r1, r0);
    vpass_row(p0, p1, static_cast<std::int16_t>(job.ay->w0[y]), static_cast<std::int16_t>(job.ay->w1[y]),
              W, u);
    const std::int64_t out_ofs = (k * job.H + y) * row_bytes;
    std::uint8_t* hrow = job.heat + out_ofs;
    colorize_row(u, job.lut4, W, hrow);
    if (job.overlay != nullptr) {
      blend_row(job.image + static_cast<std::int64_t>(y) * row_bytes, hrow, job.wa, job.wb, row_bytes,
                job.overlay + out_ofs);
    }
  }
}

}  // namespace

void postprocess_maps_u8(const std::uint8_t* maps, std::int64_t num_maps, int map_h, int map_w,
                         const std::uint8_t* image, int out_h, int out_w, double alpha,
                         std::uint8_t* heat, std::uint8_t* overlay, int num_threads) {
  if (num_maps <= 0 || map_h <= 0 || map_w <= 0 || out_h <= 0 || out_w <= 0) return;
  if (image == nullptr || overlay == nullptr) {
    image = nullptr;
    overlay = nullptr;
  }
  const Axis ax = make_axis(map_w, out_w, /*clamp_coord=*/true);
  const Axis ay = make_axis(map_h, out_h, /*clamp_coord=*/false);
  std::uint8_t lut4[256 * 4];
  for (int v = 0; v < 256; ++v) {
    lut4[4 * v + 0] = kJetRGB[3 * v + 0];
    lut4[4 * v + 1] = kJetRGB[3 * v + 1];
    lut4[4 * v + 2] = kJetRGB[3 * v + 2];
    lut4[4 * v + 3] = 0;
  }

  Job job;
  job.maps = maps;
  job.h = map_h;
  job.w = map_w;
  job.image = image;
  job.H = out_h;
  job.W = out_w;
  // As numpy evaluates (1.0 - alpha) * image_f32 + alpha * heat_f32: the Python-float
  // weights are computed in double and rounded to float32 once.
  job.wa = static_cast<float>(1.0 - alpha);
  job.wb = static_cast<float>(alpha);
  job.heat = heat;
  job.overlay = overlay;
  job.ax = &ax;
  job.ay = &ay;
  job.lut4 = lut4;
  job.rows_per_unit = std::max<std::int64_t>(1, std::min<std::int64_t>(out_h, (kUnitPixels + out_w - 1) / out_w));
  job.units_per_map = (out_h + job.rows_per_unit - 1) / job.rows_per_unit;
  job.num_units = num_maps * job.units_per_map;

  if (num_threads <= 0) {
    num_threads = static_cast<int>(std::thread::hardware_concurrency());
    if (num_threads <= 0) num_threads = 1;
  }
  const int workers = static_cast<int>(std::min<std::int64_t>(num_threads, job.num_units));

  // All scratch memory up front, on the calling thread.
  std::vector<std::int16_t> row_scratch(static_cast<std::size_t>(workers) * 2 * out_w);
  std::vector<std::uint8_t> u_scratch(static_cast<std::size_t>(workers) * out_w);

  std::atomic<std::int64_t> next{0};
  auto worker = [&job, &next, &row_scratch, &u_scratch, out_w](int id) {
    std::int16_t* rows = row_scratch.data() + static_cast<std::size_t>(id) * 2 * out_w;
    std::uint8_t* u = u_scratch.data() + static_cast<std::size_t>(id) * out_w;
    for (;;) {
      const std::int64_t unit = next.fetch_add(1, std::memory_order_relaxed);
      if (unit >= job.num_units) break;
      const std::int64_t k = unit / job.units_per_map;
      const std::int64_t block = unit % job.units_per_map;
      const int y0 = static_cast<int>(block * job.rows_per_unit);
      const int y1 = static_cast<int>(std::min<std::int64_t>(job.H, y0 + job.rows_per_unit));
      run_unit(job, k, y0, y1, rows, u);
    }
  };

  if (workers <= 1) {
    worker(0);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(workers - 1));
  for (int id = 1; id < workers; ++id) {
    try {
      threads.emplace_back(worker, id);
    } catch (...) {
      break;  // could not start a thread (resource limits): the others take its units
    }
  }
  worker(0);
  for (auto& t : threads) t.join();
}

}  // namespace xaifast
