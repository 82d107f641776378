// rotary_embedding's CPU kernel: the forward and dL/dx, one pass each over rows of the last
// dim, vectorized (at::vec) and multi-threaded (at::parallel_for). The math is derived in
// opslib/ops/rotary_embedding.py; the Python kernels there call this through
// torch.ops.opslib_cpu.rotary_embedding and fall back to torch ops where it is not built.
//
// Each row of D = 2h elements is split in halves, x = [x1, x2], cos = [c1, c2], sin = [s1, s2]:
//   forward  (inverse false)  y1 = x1*c1 - x2*s1     y2 = x2*c2 + x1*s2
//   dL/dx    (inverse true)   y1 = x1*c1 + x2*s2     y2 = x2*c2 - x1*s1   (x is then grad_y)
// Same products and sums as native's x*cos + rotate_half(x)*sin, in the same order (the build
// turns off contraction into FMA): float32 results equal native's bit for bit.
//
// Layouts: x in any layout whose last dim is contiguous (transformers' transposed [B, H, L, D]
// view of [B, L, H, D] included) is read where it lies; cos and sin are read through their
// broadcast to x (stride 0 along broadcast dims) with no copy. The output is empty_like(x),
// what the fake promises. A last dim that is not contiguous is copied first.
// dtypes: float and double (float16/bfloat16 take the torch-op path).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace opslib {
namespace {

using at::vec::Vectorized;

// Elements per parallel task, in whole rows.
constexpr int64_t kBlock = 1 << 14;

template <typename T, bool kInverse>
void rotate_row(const T* x, const T* c, const T* s, T* y, int64_t h) {
  using Vec = Vectorized<T>;
  auto step = [&](int64_t j, int64_t m) {
    const Vec x1 = Vec::loadu(x + j, m), x2 = Vec::loadu(x + h + j, m);
    const Vec c1 = Vec::loadu(c + j, m), c2 = Vec::loadu(c + h + j, m);
    const Vec s1 = Vec::loadu(s + j, m), s2 = Vec::loadu(s + h + j, m);
    if constexpr (kInverse) {
      (x1 * c1 + x2 * s2).store(y + j, m);
      (x2 * c2 - x1 * s1).store(y + h + j, m);
    } else {
      (x1 * c1 - x2 * s1).store(y + j, m);
      (x2 * c2 + x1 * s2).store(y + h + j, m);
    }
  };
  int64_t j = 0;
  for (; j + Vec::size() <= h; j += Vec::size()) step(j, Vec::size());
  if (j < h) step(j, h - j);
}

// Rows r0, r0+1, ... of x, cos, sin and y walked in order: the element offset of the current
// row in each, kept by a multi-index over the leading dims that is incremented with carries
// (one division per task, none per row).
struct RowWalker {
  std::vector<int64_t> sizes, index;
  std::vector<std::vector<int64_t>> strides;  // per tensor, per leading dim
  std::vector<int64_t> offsets;               // per tensor

  RowWalker(const std::vector<int64_t>& sizes_, std::vector<std::vector<int64_t>> strides_,
            int64_t r0)
      : sizes(sizes_), index(sizes_.size(), 0), strides(std::move(strides_)),
        offsets(strides.size(), 0) {
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      index[d] = r0 % sizes[d];
      r0 /= sizes[d];
      for (size_t t = 0; t < strides.size(); ++t) offsets[t] += index[d] * strides[t][d];
    }
  }

  void next() {
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      for (size_t t = 0; t < strides.size(); ++t) offsets[t] += strides[t][d];
      if (++index[d] < sizes[d]) return;
      for (size_t t = 0; t < strides.size(); ++t) offsets[t] -= strides[t][d] * sizes[d];
      index[d] = 0;
    }
  }
};

std::vector<int64_t> leading(c10::IntArrayRef values) {
  return std::vector<int64_t>(values.begin(), values.end() - 1);
}

}  // namespace

at::Tensor rotary_embedding_cpu(const at::Tensor& x_in, const at::Tensor& cos_in,
                                const at::Tensor& sin_in, bool inverse) {
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(x_in.device().is_cpu() && cos_in.device().is_cpu() && sin_in.device().is_cpu() &&
                  (dtype == at::kFloat || dtype == at::kDouble) &&
                  cos_in.scalar_type() == dtype && sin_in.scalar_type() == dtype &&
                  x_in.dim() >= 1 && x_in.size(-1) % 2 == 0,
              "opslib_cpu.rotary_embedding: unsupported arguments");
  auto last_contiguous = [](const at::Tensor& t) {
    return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
  };
  const at::Tensor x = last_contiguous(x_in);
  // cos and sin with a last dim of 1 (or none) are broadcast along it: made D wide first, so
  // that every row of them is D contiguous elements.
  auto rows_of = [&](const at::Tensor& t) {
    if (t.dim() > 0 && t.size(-1) == x.size(-1)) return last_contiguous(t).expand(x.sizes());
    std::vector<int64_t> sizes = t.dim() ? t.sizes().vec() : std::vector<int64_t>{1};
    sizes.back() = x.size(-1);
    return t.expand(sizes).contiguous().expand(x.sizes());
  };
  const at::Tensor cos = rows_of(cos_in), sin = rows_of(sin_in);
  at::Tensor y = at::empty_like(x_in);
  at::Tensor out = y.size(-1) <= 1 || y.stride(-1) == 1 ? y : at::empty_like(x);
  const int64_t d = x.size(-1), h = d / 2;
  const int64_t rows = d == 0 ? 0 : x.numel() / d;
  const std::vector<int64_t> sizes = leading(x.sizes());
  const std::vector<int64_t> x_strides = leading(x.strides()), c_strides = leading(cos.strides()),
                             s_strides = leading(sin.strides()), y_strides = leading(out.strides());
  const int64_t rows_per_task = std::max<int64_t>(1, kBlock / std::max<int64_t>(d, 1));
  AT_DISPATCH_FLOATING_TYPES(dtype, "rotary_embedding", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* cp = cos.const_data_ptr<scalar_t>();
    const scalar_t* sp = sin.const_data_ptr<scalar_t>();
    scalar_t* yp = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, rows_per_task, [&](int64_t r0, int64_t r1) {
      RowWalker walk(sizes, {x_strides, c_strides, s_strides, y_strides}, r0);
      for (int64_t r = r0; r < r1; ++r, walk.next()) {
        const scalar_t* xr = xp + walk.offsets[0];
        const scalar_t* cr = cp + walk.offsets[1];
        const scalar_t* sr = sp + walk.offsets[2];
        scalar_t* yr = yp + walk.offsets[3];
        if (inverse) {
          rotate_row<scalar_t, true>(xr, cr, sr, yr, h);
        } else {
          rotate_row<scalar_t, false>(xr, cr, sr, yr, h);
        }
      }
    });
  });
  if (!out.is_same(y)) y.copy_(out);
  return y;
}

}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def("rotary_embedding(Tensor x, Tensor cos, Tensor sin, bool inverse) -> Tensor");
}

TORCH_LIBRARY_IMPL(opslib_cpu, CPU, m) {
  m.impl("rotary_embedding", &opslib::rotary_embedding_cpu);
}
