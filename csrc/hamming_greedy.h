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

// A permutation of n <= 16 tiles packed as n 4-bit nibbles, so a Hamming distance is a few word
// operations (XOR, fold each nibble to its low bit, popcount) instead of n byte compares.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline uint64_t pack_permutation(const uint8_t* row, int64_t n) {
  uint64_t packed = 0;
  for (int64_t p = 0; p < n; ++p) packed |= uint64_t(row[p] & 0xF) << (4 * p);
  return packed;
}

#if defined(__CUDACC__)
__device__ inline int64_t packed_hamming(uint64_t a, uint64_t b) {
  uint64_t x = a ^ b;
  x |= x >> 1;
  x |= x >> 2;
  return __popcll(x & 0x1111111111111111ULL);
}
#else
inline int64_t packed_hamming(uint64_t a, uint64_t b) {
  uint64_t x = a ^ b;
  x |= x >> 1;
  x |= x >> 2;
  return __builtin_popcountll(x & 0x1111111111111111ULL);
}
#endif

}  // namespace fastssl
