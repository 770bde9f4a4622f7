// Argument checks and threading shared by the torch bindings of the CPU kernels (binding.cpp,
// masked_delta_binding.cpp): every check runs before any pointer is read.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <string>
#include <vector>

namespace rtl_bind {

inline std::string shape_of(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

inline void check_common(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.defined(), name, ": expected a tensor, got None");
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK_VALUE(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got shape ", shape_of(t));
  TORCH_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor, got strides ", t.strides());
}

inline void check_float(const at::Tensor& t, const char* name, int64_t dim, at::ScalarType like) {
  check_common(t, name, dim);
  TORCH_CHECK_TYPE(t.scalar_type() == like, name, ": expected dtype ", like, ", got ", t.scalar_type());
}

inline void check_shape(const at::Tensor& t, const char* name, std::vector<int64_t> want) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(want), name, ": expected shape ", at::IntArrayRef(want), ", got ", shape_of(t));
}

struct Plan {
  const int64_t* perm;
  const int64_t* offsets;
};

// routing plan over K tickets and M rows: offsets must partition [0, M) and perm must index rows
inline Plan check_plan(int64_t K, int64_t M, const at::Tensor& perm, const at::Tensor& offsets) {
  check_common(perm, "perm", 1);
  check_common(offsets, "offsets", 1);
  TORCH_CHECK_TYPE(perm.scalar_type() == at::kLong, "perm: expected dtype int64, got ", perm.scalar_type());
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kLong, "offsets: expected dtype int64, got ", offsets.scalar_type());
  check_shape(perm, "perm", {M});
  check_shape(offsets, "offsets", {K + 1});
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(off[0] == 0 && off[K] == M, "offsets: expected offsets[0] = 0 and offsets[K] = ", M, " (rows), got ", off[0], " and ", off[K]);
  for (int64_t k = 0; k < K; ++k) TORCH_CHECK_VALUE(off[k] <= off[k + 1], "offsets: expected a non-decreasing sequence, got offsets[", k, "] = ", off[k], " > offsets[", k + 1, "] = ", off[k + 1]);
  const int64_t* pr = perm.data_ptr<int64_t>();
  for (int64_t i = 0; i < M; ++i) TORCH_CHECK_VALUE(pr[i] >= 0 && pr[i] < M, "perm: expected row ids in [0, ", M, "), got ", pr[i], " at position ", i);
  return {pr, off};
}

// at::parallel_for over blocks of `block` items, with at least ~64k multiply-adds per task
template <typename F>
void parallel_blocks(int64_t items, int64_t block, int64_t work_per_item, const F& fn) {
  if (items <= 0) return;
  const int64_t blocks = (items + block - 1) / block;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, block * work_per_item));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) { fn(b0 * block, std::min(items, b1 * block)); });
}

}  // namespace rtl_bind
