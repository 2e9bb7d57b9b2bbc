// Shared by the CPU (sample_tiles.cpp) and CUDA (cuda/sample_tiles.cu) kernels of fastssl::sample_tiles:
// the grid geometry and the Philox draws, __host__ __device__, so both devices cut the same tiles
// from the same (seed, sample index).
#pragma once
#include <ATen/core/PhiloxRNGEngine.h>

#include <cstdint>

#if defined(__CUDACC__)
#define FASTSSL_HD __host__ __device__
#else
#define FASTSSL_HD
#endif

namespace fastssl {
namespace tiles {

constexpr int64_t kJigsaw = 0;   // mode: grid*grid tiles, reordered by one permutation
constexpr int64_t kContext = 1;  // mode: centre tile + one of its 8 neighbours (grid must be 3)
constexpr int64_t kMaxGrid = 4;  // at most 16 tiles (permutation rows fit a 16-bit mask)

// Draw layout, one int64 row per sample:
//   [0] label: permutation index in [0, K) (jigsaw) or neighbour 0..7 (context)
//   [1] grayscale flag 0/1
//   [2] kept channel of colour dropping, -1 = no dropping, else 0..C-1
//   [3 + 2s], [4 + 2s] (dy, dx) jitter of slot s inside its cell; slots = grid cells in row-major
//   order (jigsaw) or [centre, neighbour] (context).
constexpr int64_t kHeader = 3;

FASTSSL_HD inline int64_t n_slots(int64_t mode, int64_t grid) { return mode == kJigsaw ? grid * grid : 2; }
FASTSSL_HD inline int64_t n_draws(int64_t mode, int64_t grid) { return kHeader + 2 * n_slots(mode, grid); }

// Cell i of a side of length S cut into `grid` cells spans [cell_start(i), cell_start(i + 1)):
// 64 px in 3 cells -> 0, 21, 42, 64 (sizes 21, 21, 22). The smallest cell is floor(S / grid).
FASTSSL_HD inline int64_t cell_start(int64_t i, int64_t side, int64_t grid) { return i * side / grid; }

// Context: neighbour label 0..7 -> grid cell (row-major 3x3, the centre 4 skipped).
FASTSSL_HD inline int64_t neighbour_cell(int64_t label) { return label < 4 ? label : label + 1; }

// Which grid cell slot s of a sample reads.
FASTSSL_HD inline int64_t slot_cell(int64_t mode, int64_t grid, int64_t slot, int64_t label) {
  if (mode == kJigsaw) return slot;
  return slot == 0 ? (grid * grid) / 2 : neighbour_cell(label);
}

// Jitter range of slot s of a sample with label `label`: 0 <= d < range (the cell side - tile + 1).
FASTSSL_HD inline void jitter_range(int64_t mode, int64_t grid, int64_t slot, int64_t label, int64_t height,
                                    int64_t width, int64_t tile, int64_t* range_y, int64_t* range_x) {
  const int64_t cell = slot_cell(mode, grid, slot, label);
  const int64_t gy = cell / grid, gx = cell % grid;
  *range_y = cell_start(gy + 1, height, grid) - cell_start(gy, height, grid) - tile + 1;
  *range_x = cell_start(gx + 1, width, grid) - cell_start(gx, width, grid) - tile + 1;
}

// Uniform integer in [0, n) from one 32-bit draw (multiply-shift; bias < n / 2^32).
FASTSSL_HD inline int64_t uniform_int(uint32_t u, int64_t n) {
  return static_cast<int64_t>((static_cast<uint64_t>(u) * static_cast<uint64_t>(n)) >> 32);
}

// True with probability p: u / 2^32 < p, exact in double on host and device.
FASTSSL_HD inline bool coin(uint32_t u, double p) { return static_cast<double>(u) * 2.3283064365386963e-10 < p; }

// The draws of sample b, from Philox4x32-10 keyed by `seed`, subsequence b: 4 + 2 * slots numbers
// in a fixed order (label, gray coin, drop coin, drop channel, then dy, dx per slot).
FASTSSL_HD inline void philox_draws(uint64_t seed, int64_t b, int64_t mode, int64_t grid, int64_t num_perms,
                                    int64_t channels, int64_t height, int64_t width, int64_t tile,
                                    double gray_p, double drop_p, int64_t* out) {
  at::Philox4_32 rng(seed, static_cast<uint64_t>(b), 0);
  const int64_t label = uniform_int(rng(), mode == kJigsaw ? num_perms : 8);
  out[0] = label;
  out[1] = coin(rng(), gray_p) ? 1 : 0;
  const bool drop = coin(rng(), drop_p);
  const int64_t keep = uniform_int(rng(), channels);
  out[2] = drop ? keep : -1;
  for (int64_t s = 0; s < n_slots(mode, grid); ++s) {
    int64_t range_y, range_x;
    jitter_range(mode, grid, s, label, height, width, tile, &range_y, &range_x);
    out[kHeader + 2 * s] = uniform_int(rng(), range_y);
    out[kHeader + 2 * s + 1] = uniform_int(rng(), range_x);
  }
}

// The first column of a draw row that is out of range, or -1 if the row is valid: every index the
// kernels derive from it (label -> perms row / neighbour cell, kept channel, jitter -> pixel) is then
// in bounds. Grayscale reads channels 0, 1, 2 (luma), so a row may only ask for it with 3 channels.
FASTSSL_HD inline int64_t first_bad_draw(const int64_t* d, int64_t mode, int64_t grid, int64_t num_perms,
                                         int64_t channels, int64_t height, int64_t width, int64_t tile) {
  const int64_t label = d[0];
  if (label < 0 || label >= (mode == kJigsaw ? num_perms : 8)) return 0;
  if (d[1] != 0 && !(d[1] == 1 && channels == 3)) return 1;
  if (d[2] < -1 || d[2] >= channels) return 2;
  for (int64_t s = 0; s < n_slots(mode, grid); ++s) {
    int64_t range_y, range_x;
    jitter_range(mode, grid, s, label, height, width, tile, &range_y, &range_x);
    const int64_t dy = d[kHeader + 2 * s], dx = d[kHeader + 2 * s + 1];
    if (dy < 0 || dy >= range_y) return kHeader + 2 * s;
    if (dx < 0 || dx >= range_x) return kHeader + 2 * s + 1;
  }
  return -1;
}

// Whether row r of a [K, n] permutation table is a permutation of 0..n-1.
FASTSSL_HD inline bool perm_row_valid(const int64_t* row, int64_t n) {
  uint32_t seen = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (row[i] < 0 || row[i] >= n) return false;
    seen |= 1u << row[i];
  }
  return seen == (1u << n) - 1u;
}

// Top-left pixel (y, x) of output position p of a sample with draws d, and the slot it uses.
// Jigsaw: position p shows grid cell perm[p] (so perm inverted puts the tiles back in grid order).
FASTSSL_HD inline void tile_origin(const int64_t* d, const int64_t* perm_row, int64_t p, int64_t mode,
                                   int64_t grid, int64_t height, int64_t width, int64_t* y, int64_t* x) {
  const int64_t slot = mode == kJigsaw ? perm_row[p] : p;
  const int64_t cell = slot_cell(mode, grid, slot, d[0]);
  *y = cell_start(cell / grid, height, grid) + d[kHeader + 2 * slot];
  *x = cell_start(cell % grid, width, grid) + d[kHeader + 2 * slot + 1];
}

}  // namespace tiles
}  // namespace fastssl
