// Routed masked GEMV / skinny GEMM on CUDA for small batches (decode): plain C++ interface
// (CUDA runtime types only) between the kernel and its torch binding.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace rtl_cuda {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// most rows one launch handles (all rows' accumulators live in registers)
constexpr int64_t kMaxRows = 64;

// y[m, n] = sum_c x[m, c] * (w[n, c] if bit (c % 32) of bits[route(m), n, c / 32] else 0) + bias[n]
// x [M, C], w [N, C], bits [K, N, ceil(C / 32)], perm [M] (rows sorted by ticket), offsets [K + 1],
// bias [N] or null, y [M, N]; all of `dtype` except bits (int32), perm and offsets (int64).
// Requires 1 <= M <= kMaxRows. Accumulates in fp32.
cudaError_t launch_routed_gemv(int dtype, const void* x, const void* w, const uint32_t* bits, const int64_t* perm, const int64_t* offsets, const void* bias,
                               void* y, int64_t M, int64_t N, int64_t C, int64_t K, cudaStream_t stream);

}  // namespace rtl_cuda
