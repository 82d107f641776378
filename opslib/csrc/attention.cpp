// scaled_dot_product_attention's CPU kernels: flash-attention's blocking of the math derived in
// opslib/ops/scaled_dot_product_attention.py, whose Python kernels call these through
// torch.ops.opslib_cpu.* (for plain float32/float64 calls: no mask, finite q, k, v) and fall
// back to its torch-op formula everywhere else.
//
// Why a kernel: the torch-op formula takes [rows, S] blocks of scores, several MiB each, which
// fall out of the L2 cache between the matmul that writes them and the softmax that reads
// them. Here one task holds a [q_block, kv_block] tile of scores (128 x 512 floats: 256 KiB)
// and everything done to it happens while it is in cache; the matmuls are ATen's (at::addmm_out
// on views: MKL/oneDNN), the elementwise work at::vec, the tasks at::parallel_for.
//
// Shapes: q [N, R, E], k [N, S, E], v [N, S, Ev]: head n of q reads head n of k and v. Scores
// s = scale · q kᵀ; is_causal hides key j from row i where j > i (top-left aligned), i counted
// within a query head of head_rows rows: grouped-query attention stacks the G query heads that
// read one key/value head into one head of R = G·L rows (head_rows L), so that one matmul serves
// the G of them where G smaller ones did; otherwise R = head_rows = L.
//
//   forward (per row i; online softmax over key blocks b: the flash-attention recurrence)
//     m_i  = running max of s_ij,   l_i = Σ_j e^(s_ij - m_i),   acc_i = Σ_j e^(s_ij - m_i) v_j
//     a new block: m' = max(m, max_b s),  l ← l·e^(m - m') + Σ_b e^(s - m'),  acc likewise
//     out_i = acc_i / l_i,   lse_i = m_i + log l_i
//   backward (per head, then blocks of rows and of keys)
//     D_i  = rowsum(dO ⊙ O)_i - g_i                     (g = dL/dlse, 0 when lse is unused)
//     p    = e^(s - lse),  dP = dO vᵀ,  dS = p ⊙ (dP - D)
//     Where a tile holds every key a row sees (S <= kv_block, or the first kv_block rows under
//     is_causal), the torch-op formula's choices are made, for its accuracy: p is the row's
//     softmax normalised in the tile (e^(s - lse) carries lse's rounding, ulp(lse)/2, into
//     every p: with scores of 1e4 a p off by 5e-4 and Σ_j dS_ij far from 0), and D_i is
//     c_i + Σ_j p_ij (dP_ij - c_i) with c_i = rowsum(dO ⊙ O)_i (its _softmax_jacobian says
//     why: a one-hot row's dS is then exactly 0, where rowsum(dO ⊙ O) and the matmul's dP_ii,
//     rounded in different orders, differ: a float32 dQ of 1e-6 where the answer is 0). Rows
//     over several tiles take e^(s - lse) and rowsum(dO ⊙ O) alone, as native's flash kernel
//     does; their float32 error is within 2x native's there (tests/test_attention.py).
//     dV  += pᵀ dO,  dQ += scale · dS k,  dK += scale · dSᵀ q
//
// The ATen calls run below autograd (AutoDispatchBelowADInplaceOrView, in each thread): the
// inputs may require grad, but these kernels are what autograd's registered backward calls.
//
// Rows and keys are never all in one tensor: memory is the inputs, the outputs and one tile of
// scores (two in backward) per thread. Results do not depend on the number of threads: each
// output element is summed by one task in a fixed order (forward: a task is one block of rows
// of one head; backward: one head, which owns its dK and dV rows).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

namespace opslib {
namespace {

using at::vec::Vectorized;

// The keys row r (of the block of rows starting at r0) sees in the key block starting at j0 of
// `cols` keys: all of them, or under is_causal those with j0 + j <= r0 + r (maybe none).
int64_t visible_keys(bool is_causal, int64_t row, int64_t j0, int64_t cols) {
  if (!is_causal) return cols;
  return std::clamp<int64_t>(row - j0 + 1, 0, cols);
}

// The keys a causal block of rows r0 .. r0 + nr - 1 sees at most: those of its last row within
// its query head, or of a head's last row where the block spans two heads (stacked heads).
int64_t causal_keys_seen(int64_t r0, int64_t nr, int64_t head_rows, int64_t keys) {
  const int64_t last = r0 + nr - 1;
  const bool one_head = r0 / head_rows == last / head_rows;
  return std::min(keys, (one_head ? last % head_rows : head_rows - 1) + 1);
}

template <typename T>
T max_of(const T* x, int64_t n) {
  using Vec = Vectorized<T>;
  T largest = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  if (n >= Vec::size()) {
    Vec acc = Vec::loadu(x);
    for (j = Vec::size(); j + Vec::size() <= n; j += Vec::size()) {
      acc = at::vec::maximum(acc, Vec::loadu(x + j));
    }
    largest = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); },
                                         acc);
  }
  for (; j < n; ++j) largest = std::max(largest, x[j]);
  return largest;
}

// x[j] = e^(x[j] - shift) for j < n, 0 for n <= j < cols; returns the sum of the exponentials.
// kFast: at::vec's exp_u20 (float32: a polynomial, within 20 ulp; double: exp itself), which
// native's flash forward uses for the online softmax; its backward, and this one's, take the
// 1-ulp exp for the p that the gradients are made of.
template <bool kFast, typename T>
T exp_shifted(T* x, int64_t n, int64_t cols, T shift) {
  using Vec = Vectorized<T>;
  const Vec shift_v(shift);
  Vec sum_v(T(0));
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    const Vec shifted = Vec::loadu(x + j) - shift_v;
    const Vec e = kFast ? shifted.exp_u20() : shifted.exp();
    e.store(x + j);
    sum_v = sum_v + e;
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, sum_v);
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  std::fill(x + n, x + cols, T(0));
  return sum;
}

// x[j] *= 1 / total for j < n: a softmax's normalisation, as ATen's softmax kernel rounds it.
template <typename T>
void normalize_row(T* x, int64_t n, T total) {
  using Vec = Vectorized<T>;
  const T inverse = T(1) / total;
  const Vec inverse_v(inverse);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) (Vec::loadu(x + j) * inverse_v).store(x + j);
  for (; j < n; ++j) x[j] *= inverse;
}

// ds[j] = p[j] * (ds[j] - d) for j < cols (ds holds dP on entry).
template <typename T>
void softmax_jacobian_row(const T* p, T* ds, int64_t cols, T d) {
  using Vec = Vectorized<T>;
  const Vec d_v(d);
  int64_t j = 0;
  for (; j + Vec::size() <= cols; j += Vec::size()) {
    (Vec::loadu(p + j) * (Vec::loadu(ds + j) - d_v)).store(ds + j);
  }
  for (; j < cols; ++j) ds[j] = p[j] * (ds[j] - d);
}

// dp[j] -= c, then returns Σ_j p[j] * dp[j] over cols: with c = rowsum(dO ⊙ O), c plus this is
// Σ_j p_ij dP_ij, the form of D that cancels exactly where a row is one-hot, and the shifted
// dP - c, which is then used, is exact where dP is close to c (see backward_blocks). ATen's
// softmax backward, which the torch-op formula uses, rounds in this order too.
template <typename T>
T shift_and_dot(const T* p, T* dp, int64_t cols, T c) {
  using Vec = Vectorized<T>;
  const Vec c_v(c);
  Vec acc(T(0));
  int64_t j = 0;
  for (; j + Vec::size() <= cols; j += Vec::size()) {
    const Vec shifted = Vec::loadu(dp + j) - c_v;
    shifted.store(dp + j);
    acc = acc + Vec::loadu(p + j) * shifted;
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& x, Vec& y) { return x + y; }, acc);
  for (; j < cols; ++j) {
    dp[j] -= c;
    sum += p[j] * dp[j];
  }
  return sum;
}

// scale · rows, in the buffer's first rows: the scores are (scale·q) kᵀ, as the torch-op
// formula computes them (q rounded once scaled, then the matmul). Where the scale is applied
// matters on ill-conditioned rows (scores of 1e4 whose differences of ~1 decide p): scaling
// after the matmul moved a float32 output 1e-4 away from native's in tests/test_properties.py.
at::Tensor scaled_rows(const at::Tensor& rows, double scale, at::Tensor& buffer) {
  at::Tensor out = buffer.narrow(0, 0, rows.size(0));
  return at::mul_out(out, rows, at::scalar_tensor(scale, rows.options()));
}

void check_inputs(const char* name, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  int64_t head_rows, int64_t q_block, int64_t kv_block) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "opslib_cpu.", name,
              ": q, k, v must be [heads, rows, features]");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "opslib_cpu.", name,
              ": q, k, v must be contiguous");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "opslib_cpu.", name, ": q, k, v must have one dtype");
  TORCH_CHECK(q.size(0) == k.size(0) && v.size(0) == k.size(0) &&
                  k.size(1) == v.size(1) && k.size(2) == q.size(2),
              "opslib_cpu.", name, ": shapes do not match");
  TORCH_CHECK(q_block >= 1 && kv_block >= 1, "opslib_cpu.", name, ": blocks must be >= 1");
  TORCH_CHECK(head_rows >= 1 && q.size(1) % head_rows == 0, "opslib_cpu.", name,
              ": head_rows must divide q's rows");
}

template <typename T>
void forward_blocks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    at::Tensor& out, at::Tensor& lse, bool is_causal,
                    double scale, int64_t head_rows, int64_t q_block, int64_t kv_block) {
  const int64_t heads = q.size(0), rows = q.size(1), keys = k.size(1), ev = v.size(2);
  const int64_t row_blocks = (rows + q_block - 1) / q_block;
  double* lse_data = lse.data_ptr<double>();
  at::parallel_for(0, heads * row_blocks, 1, [&](int64_t t0, int64_t t1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // per thread: it is thread-local
    at::Tensor scores = at::empty({q_block, kv_block}, q.options());
    at::Tensor scaled_q = at::empty({q_block, q.size(2)}, q.options());
    at::Tensor acc = at::empty({q_block, ev}, q.options());
    std::vector<T> running_max(q_block), running_sum(q_block);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / row_blocks, r0 = (t % row_blocks) * q_block;
      const int64_t nr = std::min(q_block, rows - r0);
      const at::Tensor q_rows = scaled_rows(q[n].narrow(0, r0, nr), scale, scaled_q);
      const at::Tensor k_n = k[n], v_n = v[n];
      at::Tensor acc_rows = acc.narrow(0, 0, nr);
      acc_rows.zero_();
      std::fill(running_max.begin(), running_max.end(), -std::numeric_limits<T>::infinity());
      std::fill(running_sum.begin(), running_sum.end(), T(0));
      // under is_causal the keys past the block's last row are hidden from all its rows
      const int64_t seen = is_causal ? causal_keys_seen(r0, nr, head_rows, keys) : keys;
      for (int64_t j0 = 0; j0 < seen; j0 += kv_block) {
        const int64_t nc = std::min(kv_block, seen - j0);
        at::Tensor s = scores.narrow(0, 0, nr).narrow(1, 0, nc);
        at::mm_out(s, q_rows, k_n.narrow(0, j0, nc).t());  // (scale·q) kᵀ
        T* s_data = scores.data_ptr<T>();
        T* acc_data = acc.data_ptr<T>();
        for (int64_t r = 0; r < nr; ++r) {
          T* p = s_data + r * kv_block;
          const int64_t visible = visible_keys(is_causal, (r0 + r) % head_rows, j0, nc);
          const T m_old = running_max[r];
          const T m_new = std::max(m_old, max_of(p, visible));
          // visible == 0 leaves m at -inf: that row's p is all 0 here, as e^(-inf) would be
          const T shift = visible == 0 ? T(0) : m_new;
          const T block_sum = exp_shifted</*kFast=*/true>(p, visible, nc, shift);
          if (visible == 0) continue;
          const T correction = std::exp(m_old - m_new);  // e^(-inf) = 0 for the first block
          running_sum[r] = running_sum[r] * correction + block_sum;
          running_max[r] = m_new;
          if (correction != T(1)) {
            T* a = acc_data + r * ev;
            for (int64_t c = 0; c < ev; ++c) a[c] *= correction;
          }
        }
        at::addmm_out(acc_rows, acc_rows, s, v_n.narrow(0, j0, nc));  // acc += p v
      }
      T* out_rows = out[n].narrow(0, r0, nr).data_ptr<T>();
      const T* acc_data = acc.data_ptr<T>();
      for (int64_t r = 0; r < nr; ++r) {
        const T l = running_sum[r];
        for (int64_t c = 0; c < ev; ++c) out_rows[r * ev + c] = acc_data[r * ev + c] / l;
        // in double: lse of scores of 1e4 in float32 would be off by up to ulp(1e4)/2 = 5e-4
        lse_data[n * rows + r0 + r] = static_cast<double>(running_max[r]) + std::log(double(l));
      }
    }
  });
}

template <typename T>
void backward_blocks(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse,
                     const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq,
                     at::Tensor& dk, at::Tensor& dv, bool is_causal,
                     double scale, int64_t head_rows, int64_t q_block, int64_t kv_block) {
  using Vec = Vectorized<T>;
  const int64_t heads = q.size(0), rows = q.size(1), keys = k.size(1), ev = v.size(2);
  const double* lse_data = lse.const_data_ptr<double>();
  const T* g_data = grad_lse ? grad_lse->const_data_ptr<T>() : nullptr;
  at::parallel_for(0, heads, 1, [&](int64_t n0, int64_t n1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor probs = at::empty({q_block, kv_block}, q.options());
    at::Tensor d_scores = at::empty({q_block, kv_block}, q.options());
    at::Tensor scaled_q = at::empty({q_block, q.size(2)}, q.options());
    std::vector<T> rowsum(rows);
    for (int64_t n = n0; n < n1; ++n) {
      const at::Tensor k_h = k[n], v_h = v[n];
      at::Tensor dk_h = dk[n], dv_h = dv[n];
      const T* o = out[n].const_data_ptr<T>();
      const T* d_o = grad_out[n].const_data_ptr<T>();
      for (int64_t i = 0; i < rows; ++i) {
        rowsum[i] = at::vec::map2_reduce_all<T>([](Vec x, Vec y) { return x * y; },
                                                [](Vec x, Vec y) { return x + y; },
                                                d_o + i * ev, o + i * ev, ev);
      }
      for (int64_t r0 = 0; r0 < rows; r0 += q_block) {
        const int64_t nr = std::min(q_block, rows - r0);
        const at::Tensor q_rows = scaled_rows(q[n].narrow(0, r0, nr), scale, scaled_q);
        const at::Tensor d_out_rows = grad_out[n].narrow(0, r0, nr);
        at::Tensor dq_rows = dq[n].narrow(0, r0, nr);
        const int64_t seen = is_causal ? causal_keys_seen(r0, nr, head_rows, keys) : keys;
        for (int64_t j0 = 0; j0 < seen; j0 += kv_block) {
          const int64_t nc = std::min(kv_block, seen - j0);
          const at::Tensor k_cols = k_h.narrow(0, j0, nc), v_cols = v_h.narrow(0, j0, nc);
          at::Tensor p = probs.narrow(0, 0, nr).narrow(1, 0, nc);
          at::Tensor ds = d_scores.narrow(0, 0, nr).narrow(1, 0, nc);
          at::mm_out(p, q_rows, k_cols.t());  // s = (scale·q) kᵀ
          at::addmm_out(ds, ds, d_out_rows, v_cols.t(), /*beta=*/0);  // dP = dO vᵀ
          T* p_data = probs.data_ptr<T>();
          T* ds_data = d_scores.data_ptr<T>();
          for (int64_t r = 0; r < nr; ++r) {
            const int64_t i = r0 + r, row_in_head = i % head_rows;
            const int64_t visible = visible_keys(is_causal, row_in_head, j0, nc);
            T* p_row = p_data + r * kv_block;
            T* ds_row = ds_data + r * kv_block;
            // every key row i sees is in this tile (the first): its softmax is normalised here
            const bool whole_row =
                j0 == 0 && (is_causal ? std::min(row_in_head + 1, keys) : keys) <= nc;
            if (whole_row) {
              const T total = exp_shifted<false>(p_row, visible, nc, max_of(p_row, visible));
              normalize_row(p_row, visible, total);
            } else {
              // e^(s - lse) = e^(s - lse_T) · e^(lse_T - lse), lse_T = lse rounded to T: the
              // first exponent is exact where p matters (s close to lse), the second carries
              // the rounding that e^(s - lse_T) alone would leave in every p of the row
              const double lse_i = lse_data[n * rows + i];
              const T shift = static_cast<T>(lse_i);
              exp_shifted<false>(p_row, visible, nc, shift);
              if (std::isfinite(lse_i)) {
                const T excess = static_cast<T>(std::exp(lse_i - double(shift)));
                normalize_row(p_row, visible, excess);  // p · e^(lse_T - lse)
              }
            }
            const T g = g_data ? g_data[n * rows + i] : T(0);
            // dS = p ⊙ (dP - D): D = c + Σ_j p_ij (dP_ij - c), with dP - c held, or D = c
            const T d = whole_row ? shift_and_dot(p_row, ds_row, nc, rowsum[i]) : rowsum[i];
            softmax_jacobian_row(p_row, ds_row, nc, d - g);
          }
          at::Tensor dv_cols = dv_h.narrow(0, j0, nc), dk_cols = dk_h.narrow(0, j0, nc);
          at::addmm_out(dv_cols, dv_cols, p.t(), d_out_rows);            // dV += pᵀ dO
          at::addmm_out(dk_cols, dk_cols, ds.t(), q_rows);               // dK += dSᵀ (scale·q)
          at::addmm_out(dq_rows, dq_rows, ds, k_cols, j0 == 0 ? 0 : 1);  // dQ += dS k
        }
        if (seen == 0) dq_rows.zero_();
        dq_rows.mul_(scale);  // dQ = scale · dS k
      }
    }
  });
}

}  // namespace

// (out, lse): out [N, L, Ev] in q's dtype, lse [N, L] in float64.
std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, bool is_causal,
                                                         double scale,
                                                         int64_t head_rows, int64_t q_block,
                                                         int64_t kv_block) {
  check_inputs("attention_forward", q, k, v, head_rows, q_block, kv_block);
  TORCH_CHECK(k.size(1) > 0, "opslib_cpu.attention_forward: needs at least one key");
  at::Tensor out = at::empty({q.size(0), q.size(1), v.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_fwd", [&] {
    forward_blocks<scalar_t>(q, k, v, out, lse, is_causal, scale, head_rows, q_block, kv_block);
  });
  return {out, lse};
}

// (dq, dk, dv), shaped as q, k, v.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    bool is_causal, double scale, int64_t head_rows, int64_t q_block, int64_t kv_block) {
  check_inputs("attention_backward", q, k, v, head_rows, q_block, kv_block);
  const auto like_out = [&](const at::Tensor& t) {
    return t.sizes() == out.sizes() && t.is_contiguous() && t.scalar_type() == q.scalar_type();
  };
  TORCH_CHECK(out.size(0) == q.size(0) && out.size(1) == q.size(1) && out.size(2) == v.size(2) &&
                  like_out(out) && like_out(grad_out),
              "opslib_cpu.attention_backward: out and grad_out must be contiguous [N, L, Ev]");
  for (const at::Tensor* t : {&lse, grad_lse ? &*grad_lse : &lse}) {
    const auto dtype = t == &lse ? at::kDouble : q.scalar_type();
    TORCH_CHECK(t->dim() == 2 && t->size(0) == q.size(0) && t->size(1) == q.size(1) &&
                    t->is_contiguous() && t->scalar_type() == dtype,
                "opslib_cpu.attention_backward: lse (float64) and grad_lse (q's dtype) must be "
                "contiguous [N, L]");
  }
  at::Tensor dq = at::empty_like(q);
  at::Tensor dk = at::zeros_like(k);
  at::Tensor dv = at::zeros_like(v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_bwd", [&] {
    backward_blocks<scalar_t>(grad_out, grad_lse, q, k, v, out, lse, dq, dk, dv, is_causal,
                              scale, head_rows, q_block, kv_block);
  });
  return {dq, dk, dv};
}

}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def(
      "attention_forward(Tensor q, Tensor k, Tensor v, bool is_causal, float scale, "
      "int head_rows, int q_block, int kv_block) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, bool is_causal, float scale, int head_rows, "
      "int q_block, int kv_block) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(opslib_cpu, CPU, m) {
  m.impl("attention_forward", &opslib::attention_forward_cpu);
  m.impl("attention_backward", &opslib::attention_backward_cpu);
}
