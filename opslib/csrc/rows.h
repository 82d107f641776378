// Helpers of the row-wise kernels (rms_norm.cpp, layer_norm.cpp): a row is the trailing dims
// that an op normalises over, contiguous in memory.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

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

}  // namespace rows
}  // namespace opslib
