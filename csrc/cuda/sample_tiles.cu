// CUDA kernel of fastssl::sample_tiles (schema in ops.cpp, CPU kernel in sample_tiles.cpp). One block per
// output tile (sample b, position p). Every block derives its sample's draws itself (Philox keyed by the
// seed, subsequence b: the same numbers as the CPU kernel, sample_tiles.h) or reads them, then copies /
// grays / drops / normalizes the tile with block reductions for the per-channel statistics. Block 0 of
// each sample writes the draws out.
//
// Where the values the kernel indexes with are checked (no host sync, no device assert, which would
// kill the CUDA context):
// - CPU draws / perms (allowed with CUDA images): on the host, before the launch, on a private pinned
//   copy (so what is checked is what is copied to the device): a clear error.
// - draws / perms already on the device: by the block itself before it reads a pixel (the same
//   first_bad_draw / perm_row_valid as the host): a sample whose draws row, or the perms row it
//   indexes, is out of range reads nothing out of bounds and gets NaN tiles.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>

#include "../sample_tiles.h"

namespace fastssl {

int64_t check_sample_tiles_args(const at::Tensor& images, const std::optional<at::Tensor>& perms,
                                const std::optional<at::Tensor>& draws, int64_t mode, int64_t grid, int64_t tile,
                                bool channels_last, double gray_p, double drop_p, double eps);
void check_perms_host(const at::Tensor& perms, int64_t n_cells);
void check_draws_host(const at::Tensor& draws, int64_t mode, int64_t grid, int64_t num_labels, int64_t C,
                      int64_t H, int64_t W, int64_t tile);

namespace {

using namespace tiles;

constexpr int kThreads = 256;   // threads per tile; a 64x64 tile is 16 pixels per thread and channel
constexpr int kMaxDraws = 64;   // >= n_draws(jigsaw, kMaxGrid) = 3 + 2 * 16 = 35

template <typename acc_t, typename in_t>
__device__ __forceinline__ acc_t load_scaled(in_t v) {
  if constexpr (std::is_same_v<in_t, uint8_t>) {
    return static_cast<acc_t>(v) / acc_t(255);
  } else {
    return static_cast<acc_t>(v);
  }
}

// Sum of v over the block (all threads call it; the result is returned to every thread).
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem may still be read by the previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) total += smem[w];
  return total;
}

template <typename in_t, typename out_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) sample_tiles_kernel(
    const in_t* __restrict__ images,     // [B, C, H, W] or [B, H, W, C] through the strides below
    int64_t sb, int64_t sc, int64_t sy, int64_t sx,  // element strides of batch, channel, row, column
    const int64_t* __restrict__ perms,   // [K, grid*grid] permutation table (jigsaw) or nullptr
    const int64_t* __restrict__ draws_in,  // [B, D] given draws, or nullptr: draw from Philox
    int64_t* __restrict__ draws_out,     // [B, D] the draws used
    out_t* __restrict__ out,             // [B, n_out, C, tile, tile]
    int64_t n_out, int64_t C, int64_t H, int64_t W, int64_t mode, int64_t grid, int64_t tile, int64_t num_labels,
    uint64_t seed, double gray_p, double drop_p, bool normalize, double eps) {
  __shared__ int64_t d[kMaxDraws];
  __shared__ int64_t perm_row[kMaxGrid * kMaxGrid];
  __shared__ acc_t smem[kThreads / 32];
  __shared__ bool valid;
  const int64_t job = blockIdx.x, b = job / n_out, p = job % n_out;
  const int64_t D = n_draws(mode, grid), n_cells = grid * grid;
  if (threadIdx.x == 0) {
    if (draws_in != nullptr) {
      for (int64_t i = 0; i < D; ++i) d[i] = draws_in[b * D + i];
    } else {
      philox_draws(seed, b, mode, grid, num_labels, C, H, W, tile, gray_p, drop_p, d);
    }
    // Checked, not asserted: the label must be in range before it indexes perms, the perms row before
    // its entries index the jitter slots, the rest before any pixel is read (see the file comment).
    bool ok = first_bad_draw(d, mode, grid, num_labels, C, H, W, tile) < 0;
    if (ok && mode == kJigsaw) {
      for (int64_t i = 0; i < n_cells; ++i) perm_row[i] = perms[d[0] * n_cells + i];
      ok = perm_row_valid(perm_row, n_cells);
    }
    valid = ok;
    if (p == 0)
      for (int64_t i = 0; i < D; ++i) draws_out[b * D + i] = d[i];
  }
  __syncthreads();
  const int64_t T = tile * tile;
  out_t* o = out + job * C * T;
  if (!valid) {  // the whole block returns: no block_sum (__syncthreads) below is left half-entered
    const out_t nan = static_cast<out_t>(__int_as_float(0x7fc00000));
    for (int64_t i = threadIdx.x; i < C * T; i += blockDim.x) o[i] = nan;
    return;
  }
  int64_t y0, x0;
  tile_origin(d, perm_row, p, mode, grid, H, W, &y0, &x0);
  const in_t* img = images + b * sb + y0 * sy + x0 * sx;
  const bool gray = d[1] != 0;  // valid: only with C == 3, so channels 1 and 2 exist
  const int64_t keep = d[2];
  // Value of channel c at pixel i of the tile after grayscale (luma, ITU-R 601).
  auto value = [&](int64_t c, int64_t i) -> acc_t {
    const int64_t y = i / tile, x = i % tile;
    const in_t* px = img + y * sy + x * sx;
    if (gray) {
      return acc_t(0.299) * load_scaled<acc_t>(px[0]) + acc_t(0.587) * load_scaled<acc_t>(px[sc]) +
             acc_t(0.114) * load_scaled<acc_t>(px[2 * sc]);
    }
    return load_scaled<acc_t>(px[c * sc]);
  };
  for (int64_t c = 0; c < C; ++c) {
    if (keep >= 0 && c != keep) {  // colour dropping: only channel `keep` survives
      for (int64_t i = threadIdx.x; i < T; i += blockDim.x) o[c * T + i] = static_cast<out_t>(0);
      continue;
    }
    if (normalize) {  // two passes over the (cached) tile: mean, then biased variance
      acc_t s = 0;
      for (int64_t i = threadIdx.x; i < T; i += blockDim.x) s += value(c, i);
      const acc_t mean = block_sum(s, smem) / acc_t(T);
      acc_t q = 0;
      for (int64_t i = threadIdx.x; i < T; i += blockDim.x) {
        const acc_t v = value(c, i) - mean;
        q += v * v;
      }
      const acc_t inv = acc_t(1) / sqrt(block_sum(q, smem) / acc_t(T) + acc_t(eps));
      for (int64_t i = threadIdx.x; i < T; i += blockDim.x) o[c * T + i] = static_cast<out_t>((value(c, i) - mean) * inv);
    } else {
      for (int64_t i = threadIdx.x; i < T; i += blockDim.x) o[c * T + i] = static_cast<out_t>(value(c, i));
    }
  }
}

// A CPU tensor checked on the host and sent to `device` without a host sync: copied into a fresh pinned
// buffer first (the caching host allocator keeps it until the copy has run), so the bytes checked are the
// bytes copied even if the caller changes its tensor afterwards.
template <typename Check>
at::Tensor checked_on_host(const at::Tensor& cpu, const at::Device& device, const Check& check) {
  at::Tensor pinned = at::empty(cpu.sizes(), cpu.options().pinned_memory(true));
  pinned.copy_(cpu);
  check(pinned);
  return pinned.to(device, pinned.scalar_type(), /*non_blocking=*/true);
}

std::tuple<at::Tensor, at::Tensor> sample_tiles_cuda(const at::Tensor& images,
                                                     const std::optional<at::Tensor>& perms_in,
                                                     const std::optional<at::Tensor>& draws_in, int64_t mode,
                                                     int64_t grid, int64_t tile, int64_t seed, bool channels_last,
                                                     bool normalize, double gray_p, double drop_p, double eps) {
  const int64_t K = check_sample_tiles_args(images, perms_in, draws_in, mode, grid, tile, channels_last, gray_p,
                                            drop_p, eps);
  // CPU images with CUDA draws / perms dispatch here too.
  TORCH_CHECK(images.is_cuda(), "sample_tiles: images on ", images.device(), " with draws or perms on CUDA");
  const c10::cuda::CUDAGuard guard(images.device());
  const int64_t B = images.size(0), C = images.size(channels_last ? 3 : 1);
  const int64_t H = images.size(channels_last ? 1 : 2), W = images.size(channels_last ? 2 : 3);
  const int64_t D = n_draws(mode, grid), n_out = mode == kJigsaw ? grid * grid : 2;
  TORCH_CHECK(D <= kMaxDraws, "sample_tiles: too many draws per sample");
  TORCH_CHECK(B * n_out <= std::numeric_limits<int32_t>::max(), "sample_tiles: ", B, " x ", n_out,
              " tiles are more than one launch holds (2^31 - 1 blocks)");
  at::Tensor perms, given;
  if (mode == kJigsaw)
    perms = perms_in->is_cpu() ? checked_on_host(*perms_in, images.device(),
                                                 [&](const at::Tensor& t) { check_perms_host(t, grid * grid); })
                               : perms_in->contiguous();
  if (draws_in.has_value())
    given = draws_in->is_cpu() ? checked_on_host(*draws_in, images.device(),
                                                 [&](const at::Tensor& t) {
                                                   check_draws_host(t, mode, grid, K, C, H, W, tile);
                                                 })
                               : draws_in->contiguous();
  auto draws = at::empty({B, D}, images.options().dtype(at::kLong));
  const auto out_type = images.scalar_type() == at::kByte ? at::kFloat : images.scalar_type();
  auto out = at::empty({B, n_out, C, tile, tile}, images.options().dtype(out_type));
  if (B == 0) return {out, draws};
  const int64_t sb = images.stride(0), sc = images.stride(channels_last ? 3 : 1);
  const int64_t sy = images.stride(channels_last ? 1 : 2), sx = images.stride(channels_last ? 2 : 3);
  const int64_t* pp = mode == kJigsaw ? perms.data_ptr<int64_t>() : nullptr;
  const int64_t* dp = draws_in.has_value() ? given.data_ptr<int64_t>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 blocks(static_cast<unsigned>(B * n_out));
  if (images.scalar_type() == at::kByte) {
    sample_tiles_kernel<uint8_t, float, float><<<blocks, kThreads, 0, stream>>>(
        images.data_ptr<uint8_t>(), sb, sc, sy, sx, pp, dp, draws.data_ptr<int64_t>(), out.data_ptr<float>(), n_out,
        C, H, W, mode, grid, tile, K, static_cast<uint64_t>(seed), gray_p, drop_p, normalize, eps);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "sample_tiles_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      sample_tiles_kernel<scalar_t, scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          images.data_ptr<scalar_t>(), sb, sc, sy, sx, pp, dp, draws.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
          n_out, C, H, W, mode, grid, tile, K, static_cast<uint64_t>(seed), gray_p, drop_p, normalize, eps);
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, draws};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastssl, CUDA, m) { m.impl("sample_tiles", &sample_tiles_cuda); }

}  // namespace fastssl
