// Shared by the CPU (ops.cpp) and CUDA (cuda/hamming_greedy.cu) kernels of fastssl::hamming_greedy,
// so both pick exactly the same permutations.
#pragma once
#include <cstdint>

namespace fastssl {

// A candidate's rank in the greedy argmax: its score first, then its (seeded, unique) priority.
// Taken candidates get -1 and are never picked again. priority < 2^22, score < 2^40.
constexpr int kPriorityBits = 22;
constexpr int64_t kMaxCandidates = int64_t(1) << kPriorityBits;

#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t greedy_key(int64_t score, int64_t priority) {
  return (score << kPriorityBits) | priority;
}

}  // namespace fastssl
