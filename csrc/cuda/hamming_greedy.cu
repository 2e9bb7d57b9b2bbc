// CUDA kernels of fastssl::hamming_greedy (schema and CPU kernel in ops.cpp). Same keys as the CPU
// kernel (hamming_greedy.h), so both devices pick the same rows. The k-step greedy loop stays on the
// device: no host synchronisation between steps, nor before them.
//
// Where the inputs are checked (a device assert would kill the CUDA context; reading device memory on
// the host would be a sync):
// - a CPU priority (what jigsaw_permutations passes): on the host, on a private pinned copy, before any
//   launch: a clear error.
// - a priority already on the device, and the candidates: by check kernels that run first on the stream.
//   A bad input sets `status`; every later kernel then reads nothing it indexes with and the result is
//   all -1 (no row is -1, so it cannot pass for a pick; jigsaw_permutations raises on it).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../hamming_greedy.h"

namespace fastssl {

void check_hamming_greedy_args(const at::Tensor& candidates, const at::Tensor& priority, int64_t k);
std::vector<int64_t> check_priority_host(const at::Tensor& priority);

namespace {

constexpr int kThreads = 256;
constexpr int kBadPriority = 1;    // status bit: priority is not a permutation of 0..M-1
constexpr int kBadCandidate = 2;   // status bit: a candidate value is >= 16

// row_of[priority[i]] = i, claiming each slot once: an entry outside [0, M) or a repeated one (then,
// with M entries, some other value is missing) marks the priority bad. row_of starts at -1.
__global__ void invert_priority_kernel(const int64_t* __restrict__ priority,  // [M]
                                       int64_t* __restrict__ row_of,          // [M] out, -1 on entry
                                       int* __restrict__ status,              // [1] error bits
                                       int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M) return;
  const int64_t p = priority[i];
  if (p < 0 || p >= M) {
    atomicOr(status, kBadPriority);
    return;
  }
  auto* slot = reinterpret_cast<unsigned long long*>(row_of + p);
  if (atomicCAS(slot, ~0ULL, static_cast<unsigned long long>(i)) != ~0ULL) atomicOr(status, kBadPriority);
}

// packed[i] = row i as n 4-bit nibbles; a value >= 16 would alias another tile: marks the input bad.
__global__ void pack_kernel(const uint8_t* __restrict__ cand,  // [M, n] candidate permutations
                            uint64_t* __restrict__ packed,     // [M] out
                            int* __restrict__ status,          // [1] error bits
                            int64_t M, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M) return;
  const uint8_t* row = cand + i * n;
  uint8_t top = 0;
  for (int64_t p = 0; p < n; ++p) top = row[p] > top ? row[p] : top;
  if (top >= 16) atomicOr(status, kBadCandidate);
  packed[i] = pack_permutation(row, n);
}

// First pick: the row with the highest priority, M-1 (or -1 on bad input).
__global__ void first_pick_kernel(const int* __restrict__ status, const int64_t* __restrict__ row_of,
                                  int64_t* __restrict__ picked, int64_t M) {
  picked[0] = *status ? -1 : row_of[M - 1];
}

// Fold the distance to the last pick into each row's score and atomically raise best_key.
__global__ void update_kernel(const uint64_t* __restrict__ packed,  // [M] packed candidates
                              const int64_t* __restrict__ priority,  // [M] tie-break order
                              const int64_t* __restrict__ picked,    // [k] picks so far
                              int64_t t,                             // pick being made (t >= 1)
                              int64_t* __restrict__ score,           // [M] min or sum of distances
                              uint8_t* __restrict__ taken,           // [M] already picked
                              unsigned long long* __restrict__ best_key,  // [1] max key, reset to 0
                              const int* __restrict__ status,        // [1] error bits: nothing to do
                              int64_t M, bool use_min) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M || *status) return;
  const int64_t last = picked[t - 1];
  const int64_t d = packed_hamming(packed[i], packed[last]);
  const int64_t s = use_min ? min(score[i], d) : score[i] + d;
  score[i] = s;
  if (i == last) taken[i] = 1;
  // Keys of untaken rows are >= 0; shift by one so an empty max (0) means "none left".
  if (!taken[i] && i != last) atomicMax(best_key, (unsigned long long)(greedy_key(s, priority[i]) + 1));
}

__global__ void commit_kernel(unsigned long long* __restrict__ best_key,  // [1] in, reset to 0
                              const int64_t* __restrict__ row_of,         // [M]
                              const int* __restrict__ status,             // [1] error bits
                              int64_t* __restrict__ picked, int64_t t) {
  const unsigned long long best = *best_key;
  *best_key = 0;
  if (*status || best == 0) {  // bad input (or, unreachable for k <= M, no row left)
    picked[t] = -1;
    return;
  }
  const int64_t key = int64_t(best) - 1;
  picked[t] = row_of[key & ((int64_t(1) << kPriorityBits) - 1)];
}

at::Tensor hamming_greedy_cuda(const at::Tensor& candidates_in, const at::Tensor& priority_in, int64_t k,
                               bool use_min) {
  check_hamming_greedy_args(candidates_in, priority_in, k);
  // CPU candidates with a CUDA priority dispatch here too.
  TORCH_CHECK(candidates_in.is_cuda(), "hamming_greedy: candidates on ", candidates_in.device(),
              " with a CUDA priority");
  const c10::cuda::CUDAGuard guard(candidates_in.device());
  const auto device = candidates_in.device();
  const auto candidates = candidates_in.contiguous();
  at::Tensor priority;
  if (priority_in.is_cpu()) {
    // A fresh pinned copy: what is checked is what is copied, with no host sync (the caching host
    // allocator keeps the buffer until the copy has run).
    at::Tensor pinned = at::empty(priority_in.sizes(), priority_in.options().pinned_memory(true));
    pinned.copy_(priority_in);
    check_priority_host(pinned);
    priority = pinned.to(device, at::kLong, /*non_blocking=*/true);
  } else {
    priority = priority_in.contiguous();
  }
  const int64_t M = candidates.size(0), n = candidates.size(1);
  auto opts = priority.options();
  auto score = at::full({M}, use_min ? n + 1 : 0, opts);
  auto taken = at::zeros({M}, candidates.options());
  auto row_of = at::full({M}, -1, opts);
  auto status = at::zeros({1}, opts.dtype(at::kInt));
  auto best = at::zeros({1}, opts);  // reinterpreted as unsigned long long
  auto packed = at::empty({M}, opts);  // reinterpreted as uint64
  auto out = at::empty({k}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int blocks = int((M + kThreads - 1) / kThreads);
  int* status_ptr = status.data_ptr<int>();

  invert_priority_kernel<<<blocks, kThreads, 0, stream>>>(priority.data_ptr<int64_t>(),
                                                           row_of.data_ptr<int64_t>(), status_ptr, M);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto* packed_ptr = reinterpret_cast<uint64_t*>(packed.data_ptr<int64_t>());
  pack_kernel<<<blocks, kThreads, 0, stream>>>(candidates.data_ptr<uint8_t>(), packed_ptr, status_ptr, M, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  first_pick_kernel<<<1, 1, 0, stream>>>(status_ptr, row_of.data_ptr<int64_t>(), out.data_ptr<int64_t>(), M);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto* best_ptr = reinterpret_cast<unsigned long long*>(best.data_ptr<int64_t>());
  for (int64_t t = 1; t < k; ++t) {
    update_kernel<<<blocks, kThreads, 0, stream>>>(
        packed_ptr, priority.data_ptr<int64_t>(), out.data_ptr<int64_t>(), t, score.data_ptr<int64_t>(),
        taken.data_ptr<uint8_t>(), best_ptr, status_ptr, M, use_min);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    commit_kernel<<<1, 1, 0, stream>>>(best_ptr, row_of.data_ptr<int64_t>(), status_ptr, out.data_ptr<int64_t>(),
                                       t);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastssl, CUDA, m) { m.impl("hamming_greedy", &hamming_greedy_cuda); }

}  // namespace fastssl
