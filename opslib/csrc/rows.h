// Helpers of the row-wise kernels (rms_norm.cpp, layer_norm.cpp): a row is the trailing dims
// that an op normalises over, contiguous in memory.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace opslib {
namespace rows {

using at::vec::Vectorized;

// Rows per parallel task and per partial sum of a weight's gradient: fixed, so that results
// never depend on the number of threads.
constexpr int64_t kRowsPerBlock = 16;

// sum(a * b) over n contiguous elements in T, with four vector accumulators.
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  Vec acc0(T(0)), acc1(T(0)), acc2(T(0)), acc3(T(0));
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    acc0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc0);
    acc1 = at::vec::fmadd(Vec::loadu(a + i + W), Vec::loadu(b + i + W), acc1);
    acc2 = at::vec::fmadd(Vec::loadu(a + i + 2 * W), Vec::loadu(b + i + 2 * W), acc2);
    acc3 = at::vec::fmadd(Vec::loadu(a + i + 3 * W), Vec::loadu(b + i + 3 * W), acc3);
  }
  for (; i < n; i += W) {
    const int64_t k = std::min(W, n - i);  // loadu(ptr, k) fills lanes past k with 0
    acc0 = at::vec::fmadd(Vec::loadu(a + i, k), Vec::loadu(b + i, k), acc0);
  }
  const Vec total = (acc0 + acc1) + (acc2 + acc3);
  return at::vec::vec_reduce_all<T>([](Vec& x, Vec& y) { return x + y; }, total);
}

// sum(a) over n contiguous elements in T, with four vector accumulators.
template <typename T>
T sum(const T* a, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  Vec acc0(T(0)), acc1(T(0)), acc2(T(0)), acc3(T(0));
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    acc0 = acc0 + Vec::loadu(a + i);
    acc1 = acc1 + Vec::loadu(a + i + W);
    acc2 = acc2 + Vec::loadu(a + i + 2 * W);
    acc3 = acc3 + Vec::loadu(a + i + 3 * W);
  }
  for (; i < n; i += W) acc0 = acc0 + Vec::loadu(a + i, std::min(W, n - i));
  const Vec total = (acc0 + acc1) + (acc2 + acc3);
  return at::vec::vec_reduce_all<T>([](Vec& x, Vec& y) { return x + y; }, total);
}

// sum((a - center)^2) over n contiguous elements in T, with four vector accumulators.
template <typename T>
T squared_deviations_in(const T* a, T center, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const Vec c(center);
  Vec acc0(T(0)), acc1(T(0)), acc2(T(0)), acc3(T(0));
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    const Vec d0 = Vec::loadu(a + i) - c, d1 = Vec::loadu(a + i + W) - c;
    const Vec d2 = Vec::loadu(a + i + 2 * W) - c, d3 = Vec::loadu(a + i + 3 * W) - c;
    acc0 = at::vec::fmadd(d0, d0, acc0);
    acc1 = at::vec::fmadd(d1, d1, acc1);
    acc2 = at::vec::fmadd(d2, d2, acc2);
    acc3 = at::vec::fmadd(d3, d3, acc3);
  }
  T tail = T(0);
  for (; i < n; ++i) tail += (a[i] - center) * (a[i] - center);
  const Vec total = (acc0 + acc1) + (acc2 + acc3);
  return tail + at::vec::vec_reduce_all<T>([](Vec& x, Vec& y) { return x + y; }, total);
}

// sum((a - center)^2) over n contiguous elements, converted to and accumulated in double: a
// row's second moment never overflows (float32 squares overflow from |a| ~ 2e19) and keeps
// its digits when it is a small difference of large values.
template <typename T>
double squared_deviations(const T* a, double center, int64_t n) {
  using VecD = Vectorized<double>;
  constexpr int64_t W = VecD::size();
  constexpr int64_t kChunk = 256;
  double buffer[kChunk];
  const VecD c(center);
  VecD acc0(0.0), acc1(0.0);
  double tail = 0.0;
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t k = std::min(kChunk, n - i);
    at::vec::convert(a + i, buffer, k);
    int64_t j = 0;
    for (; j + 2 * W <= k; j += 2 * W) {
      const VecD d0 = VecD::loadu(buffer + j) - c, d1 = VecD::loadu(buffer + j + W) - c;
      acc0 = at::vec::fmadd(d0, d0, acc0);
      acc1 = at::vec::fmadd(d1, d1, acc1);
    }
    for (; j < k; ++j) tail += (buffer[j] - center) * (buffer[j] - center);
  }
  return tail +
         at::vec::vec_reduce_all<double>([](VecD& x, VecD& y) { return x + y; }, acc0 + acc1);
}

// sum(a * b) over n contiguous elements, converted to and accumulated in double.
template <typename T>
double dot_in_double(const T* a, const T* b, int64_t n) {
  using VecD = Vectorized<double>;
  constexpr int64_t W = VecD::size();
  constexpr int64_t kChunk = 256;
  double buffer_a[kChunk], buffer_b[kChunk];
  VecD acc(0.0);
  double tail = 0.0;
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t k = std::min(kChunk, n - i);
    at::vec::convert(a + i, buffer_a, k);
    at::vec::convert(b + i, buffer_b, k);
    int64_t j = 0;
    for (; j + W <= k; j += W) {
      acc = at::vec::fmadd(VecD::loadu(buffer_a + j), VecD::loadu(buffer_b + j), acc);
    }
    for (; j < k; ++j) tail += buffer_a[j] * buffer_b[j];
  }
  return tail + at::vec::vec_reduce_all<double>([](VecD& x, VecD& y) { return x + y; }, acc);
}

// sum(a) over n contiguous elements in double, compensated (Neumaier): what a plain double
// sum loses when large values cancel (±1e30 next to 1e4: ulp(1e30) is 1.4e14 in double, so
// the 1e4 vanish and a row's mean comes out as noise, of either sign) is carried in a second
// term. For the rows that need double at all (overflowing or cancelling ones): not a hot path.
template <typename T>
double sum_in_double(const T* a, int64_t n) {
  double sum = 0.0, lost = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(a[i]);
    const double t = sum + v;
    lost += std::abs(sum) >= std::abs(v) ? (sum - t) + v : (v - t) + sum;
    sum = t;
  }
  return sum + lost;
}

// Largest |a| over n contiguous elements (0 for none; nan propagates as a large value would
// not, so callers treat a non-finite result as "ill-conditioned").
template <typename T>
T max_abs(const T* a, int64_t n) {
  using Vec = Vectorized<T>;
  Vec m(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) m = at::vec::maximum(m, Vec::loadu(a + i).abs());
  T tail = T(0);
  for (; i < n; ++i) tail = std::max(tail, std::abs(a[i]));
  return std::max(tail, at::vec::vec_reduce_all<T>(
                            [](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, m));
}

// A backward row's result is a small difference of large terms when max|dx| is this much below
// the largest term: its float32 rounding error is then ~1e-7 * this ratio relative, so such a
// row is computed again in double (a per-row test: typical rows keep the vectorized path).
constexpr double kIllConditioned = 1e2;

// n values of a per-element parameter (a weight, a bias) in the compute type T, or none if
// ``values`` is null.
template <typename T>
std::vector<T> in_compute_type(const void* values, at::ScalarType dtype, int64_t n) {
  std::vector<T> out(values ? n : 0);
  if (values) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "to_compute", [&] {
      at::vec::convert(static_cast<const scalar_t*>(values), out.data(), n);
    });
  }
  return out;
}

// A row in the compute type T: from x directly (T == scalar_t) or converted into `buffer`.
template <typename scalar_t, typename T>
const T* as_compute(const scalar_t* row, T* buffer, int64_t n) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return row;
  } else {
    at::vec::convert(row, buffer, n);
    return buffer;
  }
}

// The blocks' partial sums [blocks, n] (double) added in block order into out[n]: the same
// bits whatever the number of threads (each column sums the blocks in order, whichever thread
// takes the column).
inline void sum_blocks(const double* partial, int64_t blocks, int64_t n, double* out) {
  at::parallel_for(0, n, 1024, [&](int64_t c0, int64_t c1) {
    for (int64_t i = c0; i < c1; ++i) out[i] = 0.0;
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t i = c0; i < c1; ++i) out[i] += partial[b * n + i];
    }
  });
}

}  // namespace rows
}  // namespace opslib
