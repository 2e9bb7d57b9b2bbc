// fastssl._C: operator schemas (TORCH_LIBRARY) + CPU kernels; the pybind11 module holds only
// non-tensor helpers (build info). CUDA kernels live in cuda/*.cu.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "hamming_greedy.h"

#ifndef FASTSSL_CUDA_ARCHS
#define FASTSSL_CUDA_ARCHS none
#endif
#define FASTSSL_STR_(...) #__VA_ARGS__
#define FASTSSL_STR(...) FASTSSL_STR_(__VA_ARGS__)

namespace fastssl {

// Checks of shapes, dtypes and devices only (no tensor data is read: on CUDA that would be a host sync).
void check_hamming_greedy_args(const at::Tensor& candidates, const at::Tensor& priority, int64_t k) {
  TORCH_CHECK(candidates.dim() == 2, "hamming_greedy: candidates must be [M, n], got ", candidates.sizes());
  TORCH_CHECK(candidates.scalar_type() == at::kByte, "hamming_greedy: candidates must be uint8");
  TORCH_CHECK(priority.scalar_type() == at::kLong, "hamming_greedy: priority must be int64");
  TORCH_CHECK(priority.dim() == 1 && priority.size(0) == candidates.size(0),
              "hamming_greedy: priority must be [M] with M = candidates.size(0)");
  // A CPU priority with CUDA candidates is checked on the host, then copied (cuda/hamming_greedy.cu).
  TORCH_CHECK(candidates.device() == priority.device() || (priority.is_cpu() && candidates.is_cuda()),
              "hamming_greedy: candidates on ", candidates.device(), ", priority on ", priority.device());
  TORCH_CHECK(candidates.size(0) <= kMaxCandidates, "hamming_greedy: at most 2^22 candidates");
  TORCH_CHECK(candidates.size(1) >= 1 && candidates.size(1) <= 16, "hamming_greedy: n must be in [1, 16]");
  TORCH_CHECK(k >= 1 && k <= candidates.size(0), "hamming_greedy: need 1 <= k <= M, got k=", k);
}

// Host check of a contiguous CPU priority: a permutation of 0..M-1, so a key's low bits name exactly one
// row. Returns row_of (row_of[priority[i]] = i).
std::vector<int64_t> check_priority_host(const at::Tensor& priority) {
  const int64_t M = priority.size(0);
  const int64_t* prio = priority.data_ptr<int64_t>();
  std::vector<int64_t> row_of(M, -1);
  for (int64_t i = 0; i < M; ++i) {
    TORCH_CHECK(prio[i] >= 0 && prio[i] < M && row_of[prio[i]] < 0,
                "hamming_greedy: priority must be a permutation of 0..M-1 (entry ", i, " is ", prio[i], ")");
    row_of[prio[i]] = i;
  }
  return row_of;
}

// Host check of contiguous CPU candidates: rows are packed as 4-bit nibbles (hamming_greedy.h), so tile
// indices must be < 16.
void check_candidates_host(const at::Tensor& candidates) {
  const uint8_t* c = candidates.data_ptr<uint8_t>();
  uint8_t top = 0;
  for (int64_t i = 0; i < candidates.numel(); ++i) top = std::max(top, c[i]);
  TORCH_CHECK(top < 16, "hamming_greedy: candidate values must be < 16, got ", int(top));
}

// Greedy selection of k rows of `candidates` (all permutations of n tiles) maximising the minimum
// (use_min) or summed Hamming distance to the rows already selected. The first row is the one with
// the highest priority; ties are broken by priority (a seeded permutation of 0..M-1), so the result
// is deterministic and independent of the thread count. Returns int64 [k] row indices.
// Both inputs are checked on the host here, before any work.
at::Tensor hamming_greedy_cpu(const at::Tensor& candidates_in, const at::Tensor& priority_in, int64_t k,
                              bool use_min) {
  check_hamming_greedy_args(candidates_in, priority_in, k);
  const auto candidates = candidates_in.contiguous();
  const auto priority = priority_in.contiguous();
  check_candidates_host(candidates);
  const std::vector<int64_t> row_of = check_priority_host(priority);
  const int64_t M = candidates.size(0), n = candidates.size(1);
  const uint8_t* cand = candidates.data_ptr<uint8_t>();
  const int64_t* prio = priority.data_ptr<int64_t>();

  std::vector<int64_t> score(M, use_min ? n + 1 : 0);  // n+1 = "no distance yet" for the min
  std::vector<uint8_t> taken(M, 0);
  auto out = at::empty({k}, priority.options());
  int64_t* picked = out.data_ptr<int64_t>();
  picked[0] = row_of[M - 1];

  std::vector<uint64_t> packed(M);
  at::parallel_for(0, M, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) packed[i] = pack_permutation(cand + i * n, n);
  });
  for (int64_t t = 1; t < k; ++t) {
    const int64_t last = picked[t - 1];
    taken[last] = 1;
    const uint64_t ref = packed[last];
    // One pass: fold in the distance to the last pick and find the best remaining key.
    const int64_t best_key = at::parallel_reduce(
        0, M, 16384, int64_t(-1),
        [&](int64_t begin, int64_t end, int64_t best) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t d = packed_hamming(packed[i], ref);
            score[i] = use_min ? std::min(score[i], d) : score[i] + d;
            if (!taken[i]) best = std::max(best, greedy_key(score[i], prio[i]));
          }
          return best;
        },
        [](int64_t a, int64_t b) { return std::max(a, b); });
    TORCH_CHECK(best_key >= 0, "hamming_greedy: ran out of candidates");
    picked[t] = row_of[best_key & ((int64_t(1) << kPriorityBits) - 1)];
  }
  return out;
}

}  // namespace fastssl

TORCH_LIBRARY(fastssl, m) {
  m.def("hamming_greedy(Tensor candidates, Tensor priority, int k, bool use_min) -> Tensor");
  // Jigsaw / context tiles (kernels in sample_tiles.cpp and cuda/sample_tiles.cu): -> (tiles, draws).
  m.def("sample_tiles(Tensor images, Tensor? perms, Tensor? draws, int mode, int grid, int tile, int seed, "
        "bool channels_last, bool normalize, float gray_p, float drop_p, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastssl, CPU, m) { m.impl("hamming_greedy", &fastssl::hamming_greedy_cpu); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastssl C++/CUDA extension (operators are under torch.ops.fastssl)";
  m.def("build_info", []() {
    pybind11::dict info;
    info["cpu"] = true;
#ifdef FASTSSL_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_archs"] = std::string(FASTSSL_STR(FASTSSL_CUDA_ARCHS));
    info["threads"] = at::get_num_threads();
    return info;
  });
}
