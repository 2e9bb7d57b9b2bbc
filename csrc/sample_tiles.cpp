// fastssl::sample_tiles, CPU kernel (schema in ops.cpp, CUDA kernel in cuda/sample_tiles.cu): cut the
// jigsaw / context tiles of a batch of images, one at::parallel_for task per output tile.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "sample_tiles.h"

namespace fastssl {

using namespace tiles;

// Checks shared by both devices (no host sync: only shapes, dtypes and scalars). Returns the number of
// permutations K (jigsaw) or 8 (context).
int64_t check_sample_tiles_args(const at::Tensor& images, const std::optional<at::Tensor>& perms,
                                const std::optional<at::Tensor>& draws, int64_t mode, int64_t grid, int64_t tile,
                                bool channels_last, double gray_p, double drop_p, double eps) {
  TORCH_CHECK(mode == kJigsaw || mode == kContext, "sample_tiles: mode must be 0 (jigsaw) or 1 (context), got ",
              mode);
  TORCH_CHECK(images.dim() == 4, "sample_tiles: images must be 4-D ", channels_last ? "[B, H, W, C]" : "[B, C, H, W]",
              ", got shape ", images.sizes());
  const auto st = images.scalar_type();
  TORCH_CHECK(st == at::kByte || st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "sample_tiles: images must be uint8 or floating point, got ", st);
  TORCH_CHECK(grid >= 2 && grid <= kMaxGrid, "sample_tiles: grid must be in [2, ", kMaxGrid, "], got ", grid);
  TORCH_CHECK(mode == kJigsaw || grid == 3, "sample_tiles: context needs grid=3, got ", grid);
  const int64_t C = images.size(channels_last ? 3 : 1);
  const int64_t H = images.size(channels_last ? 1 : 2), W = images.size(channels_last ? 2 : 3);
  TORCH_CHECK(C >= 1, "sample_tiles: images have no channels");
  TORCH_CHECK(tile >= 1, "sample_tiles: tile must be >= 1, got ", tile);
  // tile <= side / grid, not grid * tile <= side: a huge tile must not overflow into a pass.
  TORCH_CHECK(tile <= H / grid && tile <= W / grid, "sample_tiles: images of ", H, "x", W,
              " px are too small for a ", grid, "x", grid, " grid of ", tile, " px tiles (need a side >= ",
              grid, " x ", tile, ")");
  TORCH_CHECK(gray_p >= 0 && gray_p <= 1, "sample_tiles: gray_p must be in [0, 1], got ", gray_p);
  TORCH_CHECK(drop_p >= 0 && drop_p <= 1, "sample_tiles: drop_p must be in [0, 1], got ", drop_p);
  TORCH_CHECK(gray_p == 0 || C == 3, "sample_tiles: grayscale (gray_p > 0) needs 3 channels, got ", C);
  TORCH_CHECK(eps > 0, "sample_tiles: eps must be > 0, got ", eps);
  int64_t num_labels = 8;
  if (mode == kJigsaw) {
    TORCH_CHECK(perms.has_value(), "sample_tiles: jigsaw needs a permutation table");
    const auto& p = *perms;
    TORCH_CHECK(p.dim() == 2 && p.size(1) == grid * grid, "sample_tiles: perms must be [K, ", grid * grid,
                "] for a ", grid, "x", grid, " grid, got shape ", p.sizes());
    TORCH_CHECK(p.scalar_type() == at::kLong, "sample_tiles: perms must be int64, got ", p.scalar_type());
    TORCH_CHECK(p.size(0) >= 1 && p.size(0) < (int64_t(1) << 31), "sample_tiles: need 1 <= K < 2^31 permutations, got ",
                p.size(0));
    // CPU perms with CUDA images: checked on the host, then copied (see sample_tiles_cuda).
    TORCH_CHECK(p.device() == images.device() || (p.is_cpu() && images.is_cuda()), "sample_tiles: perms on ",
                p.device(), ", images on ", images.device());
    num_labels = p.size(0);
  }
  if (draws.has_value()) {
    const auto& d = *draws;
    TORCH_CHECK(d.scalar_type() == at::kLong, "sample_tiles: draws must be int64, got ", d.scalar_type());
    TORCH_CHECK(d.dim() == 2 && d.size(0) == images.size(0) && d.size(1) == n_draws(mode, grid),
                "sample_tiles: draws must be [B, ", n_draws(mode, grid), "] = [", images.size(0), ", ",
                n_draws(mode, grid), "], got shape ", d.sizes());
    TORCH_CHECK(d.device() == images.device() || (d.is_cpu() && images.is_cuda()), "sample_tiles: draws on ",
                d.device(), ", images on ", images.device());
  }
  return num_labels;
}

// Host checks of the values the kernels index with (CPU tensors only: reading device memory here would
// be a host sync). `perms` is a contiguous CPU [K, n_cells] int64 table.
void check_perms_host(const at::Tensor& perms, int64_t n_cells) {
  const int64_t* p = perms.data_ptr<int64_t>();
  for (int64_t r = 0; r < perms.size(0); ++r)
    TORCH_CHECK(perm_row_valid(p + r * n_cells, n_cells), "sample_tiles: perms row ", r,
                " is not a permutation of 0..", n_cells - 1);
}

// `draws` is a contiguous CPU [B, n_draws] int64 tensor; names the first bad entry and its valid range.
void check_draws_host(const at::Tensor& draws, int64_t mode, int64_t grid, int64_t num_labels, int64_t C,
                      int64_t H, int64_t W, int64_t tile) {
  const int64_t B = draws.size(0), D = n_draws(mode, grid);
  const int64_t* all = draws.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* d = all + b * D;
    const int64_t col = first_bad_draw(d, mode, grid, num_labels, C, H, W, tile);
    if (col < 0) continue;
    const auto where = [&](const std::string& what) {
      return c10::str("sample_tiles: draws row ", b, " is out of range: column ", col, " (", what, ") = ", d[col]);
    };
    TORCH_CHECK(col != 0, where("label"), ", must be in [0, ", mode == kJigsaw ? num_labels : 8, ")");
    TORCH_CHECK(col != 1, where("grayscale flag"), ", must be 0 or 1",
                C == 3 ? std::string() : c10::str(" and 0 for ", C, "-channel images (grayscale needs 3 channels)"));
    TORCH_CHECK(col != 2, where("kept channel"), ", must be in [-1, ", C, ")");
    const int64_t slot = (col - kHeader) / 2;
    int64_t range_y, range_x;
    jitter_range(mode, grid, slot, d[0], H, W, tile, &range_y, &range_x);
    const bool is_y = (col - kHeader) % 2 == 0;
    TORCH_CHECK(false, where(c10::str(is_y ? "dy" : "dx", " of slot ", slot)), ", must be in [0, ",
                is_y ? range_y : range_x, ")");
  }
}

namespace {

// Pixel value in the accumulation type: uint8 is scaled to [0, 1], floats are kept as they are.
template <typename acc_t, typename in_t>
inline acc_t load_scaled(in_t v) {
  if constexpr (std::is_same_v<in_t, uint8_t>) return static_cast<acc_t>(v) / acc_t(255);
  return static_cast<acc_t>(v);
}

// Sum of v[i] - center (kSquares false) or of (v[i] - center)^2 over n values, in 8 independent lanes so the
// compiler can keep them in one SIMD register (a single running sum has to be added in order).
template <bool kSquares, typename acc_t>
inline acc_t lane_sum(const acc_t* v, int64_t n, acc_t center) {
  acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  constexpr bool squares = kSquares;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) {
      const acc_t t = v[i + k] - center;
      lanes[k] += squares ? t * t : t;
    }
  acc_t total = 0;
  for (; i < n; ++i) {
    const acc_t t = v[i] - center;
    total += squares ? t * t : t;
  }
  for (int k = 0; k < 8; ++k) total += lanes[k];
  return total;
}

template <typename in_t, typename out_t, typename acc_t>
void cut_tiles(const at::Tensor& images, const int64_t* perms, const int64_t* draws, at::Tensor& out, int64_t mode,
               int64_t grid, int64_t tile, bool channels_last, bool normalize, double eps) {
  const int64_t B = out.size(0), n_out = out.size(1), C = out.size(2);
  const int64_t H = images.size(channels_last ? 1 : 2), W = images.size(channels_last ? 2 : 3);
  const int64_t sb = images.stride(0), sc = images.stride(channels_last ? 3 : 1);
  const int64_t sy = images.stride(channels_last ? 1 : 2), sx = images.stride(channels_last ? 2 : 3);
  const int64_t D = n_draws(mode, grid), T = tile * tile, n_cells = grid * grid;
  const in_t* src = images.data_ptr<in_t>();
  out_t* dst = out.data_ptr<out_t>();
  const bool channels_inner = sc < sx;  // NHWC-like memory: read pixel by pixel, all channels at once
  at::parallel_for(0, B * n_out, 4, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(C * T);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / n_out, p = job % n_out;
      const int64_t* d = draws + b * D;
      const int64_t* perm_row = mode == kJigsaw ? perms + d[0] * n_cells : nullptr;
      int64_t y0, x0;
      tile_origin(d, perm_row, p, mode, grid, H, W, &y0, &x0);
      const in_t* img = src + b * sb + y0 * sy + x0 * sx;
      for (int64_t y = 0; y < tile; ++y) {
        const in_t* row = img + y * sy;
        acc_t* out_row = buf.data() + y * tile;
        if (channels_inner) {
          for (int64_t x = 0; x < tile; ++x)
            for (int64_t c = 0; c < C; ++c) out_row[c * T + x] = load_scaled<acc_t>(row[x * sx + c * sc]);
        } else {
          for (int64_t c = 0; c < C; ++c)
            for (int64_t x = 0; x < tile; ++x) out_row[c * T + x] = load_scaled<acc_t>(row[c * sc + x * sx]);
        }
      }
      if (d[1]) {  // grayscale: every channel becomes the luma (ITU-R 601); checked above: only with C == 3
        acc_t* r = buf.data();
        for (int64_t i = 0; i < T; ++i) {
          const acc_t g = acc_t(0.299) * r[i] + acc_t(0.587) * r[T + i] + acc_t(0.114) * r[2 * T + i];
          r[i] = r[T + i] = r[2 * T + i] = g;
        }
      }
      out_t* o = dst + job * C * T;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* v = buf.data() + c * T;
        out_t* oc = o + c * T;
        if (d[2] >= 0 && c != d[2]) {  // colour dropping: only channel d[2] survives
          for (int64_t i = 0; i < T; ++i) oc[i] = static_cast<out_t>(0);
          continue;
        }
        if (normalize) {  // two passes: mean, then biased variance (8 partial sums each: vectorizable)
          const acc_t mean = lane_sum<false>(v, T, acc_t(0)) / acc_t(T);
          const acc_t var = lane_sum<true>(v, T, mean) / acc_t(T);
          const acc_t inv = acc_t(1) / std::sqrt(var + acc_t(eps));
          for (int64_t i = 0; i < T; ++i) oc[i] = static_cast<out_t>((v[i] - mean) * inv);
        } else {
          for (int64_t i = 0; i < T; ++i) oc[i] = static_cast<out_t>(v[i]);
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sample_tiles_cpu(const at::Tensor& images, const std::optional<at::Tensor>& perms_in,
                                                    const std::optional<at::Tensor>& draws_in, int64_t mode,
                                                    int64_t grid, int64_t tile, int64_t seed, bool channels_last,
                                                    bool normalize, double gray_p, double drop_p, double eps) {
  const int64_t K = check_sample_tiles_args(images, perms_in, draws_in, mode, grid, tile, channels_last, gray_p,
                                            drop_p, eps);
  const int64_t B = images.size(0), C = images.size(channels_last ? 3 : 1);
  const int64_t H = images.size(channels_last ? 1 : 2), W = images.size(channels_last ? 2 : 3);
  const int64_t D = n_draws(mode, grid), n_cells = grid * grid;
  // Every value the kernel indexes with is checked here, before any write: the perms table (all rows)
  // and the given draws (a private copy, so what is checked is what is used).
  at::Tensor perms;
  if (mode == kJigsaw) {
    perms = perms_in->contiguous();
    check_perms_host(perms, n_cells);
  }
  at::Tensor draws;
  if (draws_in.has_value()) {
    draws = draws_in->clone(at::MemoryFormat::Contiguous);
    check_draws_host(draws, mode, grid, K, C, H, W, tile);
  } else {
    draws = at::empty({B, D}, images.options().dtype(at::kLong));
    int64_t* d = draws.data_ptr<int64_t>();
    const uint64_t s = static_cast<uint64_t>(seed);
    at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        philox_draws(s, b, mode, grid, K, C, H, W, tile, gray_p, drop_p, d + b * D);
    });
  }
  const auto out_type = images.scalar_type() == at::kByte ? at::kFloat : images.scalar_type();
  const int64_t n_out = mode == kJigsaw ? n_cells : 2;
  auto out = at::empty({B, n_out, C, tile, tile}, images.options().dtype(out_type));
  if (B == 0) return {out, draws};
  const int64_t* pp = mode == kJigsaw ? perms.data_ptr<int64_t>() : nullptr;
  const int64_t* dp = draws.data_ptr<int64_t>();
  if (images.scalar_type() == at::kByte) {
    cut_tiles<uint8_t, float, float>(images, pp, dp, out, mode, grid, tile, channels_last, normalize, eps);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "sample_tiles_cpu", [&] {
      cut_tiles<scalar_t, scalar_t, at::opmath_type<scalar_t>>(images, pp, dp, out, mode, grid, tile, channels_last, normalize, eps);
    });
  }
  return {out, draws};
}

TORCH_LIBRARY_IMPL(fastssl, CPU, m) { m.impl("sample_tiles", &sample_tiles_cpu); }

}  // namespace fastssl
