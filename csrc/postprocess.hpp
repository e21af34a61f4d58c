// xaifast native kernels: saliency-map postprocessing, fused in one pass per output pixel.
//
//   normalized uint8 map [h, w]
//     -> bilinear resize to [H, W]           (OpenCV cv2.resize INTER_LINEAR, 8-bit fixed point)
//     -> JET colormap                        (OpenCV COLORMAP_JET table, written as RGB)
//     -> overlay on an RGB image [H, W, 3]   (round((1 - a) * image + a * heat), float32)
//
// Plain C++17, no Python headers; the pybind11 glue lives in bindings.cpp.
#pragma once

#include <cstdint>

namespace xaifast {

// OpenCV's COLORMAP_JET, 256 entries, RGB order (cv2.applyColorMap gives BGR; this is
// that table with the channels reversed): kJetRGB[3 * v + c].
extern const std::uint8_t kJetRGB[256 * 3];

// Postprocesses `num_maps` uint8 maps of map_h x map_w (contiguous, map after map).
//
//   heat    [num_maps, out_h, out_w, 3] RGB: JET(resize(map)) (always written).
//   overlay [num_maps, out_h, out_w, 3] RGB: written only when `image` is non-null, then
//           `image` is RGB uint8 [out_h, out_w, 3] (contiguous) and `overlay` non-null.
//
// Resize: OpenCV's INTER_LINEAR for 8-bit images, bit for bit: source coordinates
//   f = float((d + 0.5) * (1 / (out / in)) - 0.5) (double, then float), s = floor(f), t = f - s;
//   weights round((1 - t) * 2048), round(t * 2048) (11 fractional bits, round half to even);
//   columns out of range are clamped with t = 0; rows keep their weights and clamp the row
//   indices. Horizontal pass in exact integers, H = S[x0] * a0 + S[x1] * a1; vertical pass as
//   OpenCV's 8-bit path computes it: u = (((H0 >> 4) * b0 >> 16) + ((H1 >> 4) * b1 >> 16) + 2) >> 2.
// Overlay: per channel, in float32 without FMA contraction,
//   o = floor(float(1 - alpha) * image + float(alpha) * heat + 0.5f)
// i.e. round half up of the float32 blend (the numpy float32 expression of SPEC.md).
//
// Work is split into (map, block of output rows) units of about 32K output pixels each, handed
// out dynamically to min(num_threads, units) std::threads (num_threads <= 0: all hardware
// threads), so one large map also uses several threads. With one worker everything runs on the
// calling thread. Results do not depend on the number of threads.
//
// Preconditions (checked by the caller): num_maps >= 1, map_h, map_w, out_h, out_w >= 1,
// 0 <= alpha <= 1. Never throws once started: all scratch memory is allocated up front on
// the calling thread (std::bad_alloc is thrown from there, before any work).
void postprocess_maps_u8(const std::uint8_t* maps, std::int64_t num_maps, int map_h, int map_w,
                         const std::uint8_t* image, int out_h, int out_w, double alpha,
                         std::uint8_t* heat, std::uint8_t* overlay, int num_threads);

}  // namespace xaifast
