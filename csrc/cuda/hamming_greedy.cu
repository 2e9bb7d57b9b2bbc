// CUDA kernels of fastssl::hamming_greedy (schema and CPU kernel in ops.cpp). Same keys as the CPU
// kernel (hamming_greedy.h), so both devices pick the same rows. The k-step greedy loop stays on the
// device: no host synchronisation between steps.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../hamming_greedy.h"

namespace fastssl {

void check_hamming_greedy_args(const at::Tensor& candidates, const at::Tensor& priority, int64_t k);

namespace {

constexpr int kThreads = 256;

// row_of[priority[i]] = i (priority is a permutation of 0..M-1).
__global__ void invert_priority_kernel(const int64_t* __restrict__ priority,  // [M]
                                       int64_t* __restrict__ row_of,          // [M] out
                                       int64_t M) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < M) row_of[priority[i]] = i;
}

// packed[i] = row i as n 4-bit nibbles.
__global__ void pack_kernel(const uint8_t* __restrict__ cand,  // [M, n] candidate permutations
                            uint64_t* __restrict__ packed,     // [M] out
                            int64_t M, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < M) packed[i] = pack_permutation(cand + i * n, n);
}

// Fold the distance to the last pick into each row's score and atomically raise best_key.
__global__ void update_kernel(const uint64_t* __restrict__ packed,  // [M] packed candidates
                              const int64_t* __restrict__ priority,  // [M] tie-break order
                              const int64_t* __restrict__ picked,    // [k] picks so far
                              int64_t t,                             // pick being made (t >= 1)
                              int64_t* __restrict__ score,           // [M] min or sum of distances
                              uint8_t* __restrict__ taken,           // [M] already picked
                              unsigned long long* __restrict__ best_key,  // [1] max key, reset to 0
                              int64_t M, bool use_min) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M) return;
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
                              int64_t* __restrict__ picked, int64_t t) {
  const int64_t key = int64_t(*best_key) - 1;
  picked[t] = row_of[key & ((int64_t(1) << kPriorityBits) - 1)];
  *best_key = 0;
}

at::Tensor hamming_greedy_cuda(const at::Tensor& candidates_in, const at::Tensor& priority_in, int64_t k,
                               bool use_min) {
  check_hamming_greedy_args(candidates_in, priority_in, k);
  const c10::cuda::CUDAGuard guard(candidates_in.device());
  const auto candidates = candidates_in.contiguous();
  const auto priority = priority_in.contiguous();
  const int64_t M = candidates.size(0), n = candidates.size(1);
  auto opts = priority.options();
  auto score = at::full({M}, use_min ? n + 1 : 0, opts);
  auto taken = at::zeros({M}, candidates.options());
  auto row_of = at::empty({M}, opts);
  auto best = at::zeros({1}, opts);  // reinterpreted as unsigned long long
  auto packed = at::empty({M}, opts);  // reinterpreted as uint64
  auto out = at::empty({k}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int blocks = int((M + kThreads - 1) / kThreads);

  invert_priority_kernel<<<blocks, kThreads, 0, stream>>>(priority.data_ptr<int64_t>(),
                                                           row_of.data_ptr<int64_t>(), M);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto* packed_ptr = reinterpret_cast<uint64_t*>(packed.data_ptr<int64_t>());
  pack_kernel<<<blocks, kThreads, 0, stream>>>(candidates.data_ptr<uint8_t>(), packed_ptr, M, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // First pick: the highest priority, M-1.
  out.narrow(0, 0, 1).copy_(row_of.narrow(0, M - 1, 1));
  auto* best_ptr = reinterpret_cast<unsigned long long*>(best.data_ptr<int64_t>());
  for (int64_t t = 1; t < k; ++t) {
    update_kernel<<<blocks, kThreads, 0, stream>>>(
        packed_ptr, priority.data_ptr<int64_t>(), out.data_ptr<int64_t>(), t, score.data_ptr<int64_t>(),
        taken.data_ptr<uint8_t>(), best_ptr, M, use_min);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    commit_kernel<<<1, 1, 0, stream>>>(best_ptr, row_of.data_ptr<int64_t>(), out.data_ptr<int64_t>(), t);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastssl, CUDA, m) { m.impl("hamming_greedy", &hamming_greedy_cuda); }

}  // namespace fastssl
