// Routed masked GEMV / skinny GEMM (decode regime, 1..64 rows) for fp16 / bf16 / fp32 weights.
//
// One warp per weight row n: the warp streams W[n, :] from global memory exactly once with
// 16-byte coalesced loads (32 lanes x 16 B = 512 B per step). Each lane keeps its slice of W in
// registers and, for every active ticket (rows arrive sorted by ticket), selects it with that
// ticket's mask bits, loaded once per ticket per step, then accumulates x[row] . (W & mask) for
// each of the ticket's rows. All rows' partial sums live in registers (MAXR <= 64); a warp
// shuffle reduction and the bias finish each output. Masks use the canonical layout: bit (c % 32)
// of word bits[k][n][c / 32] (LSB first).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "routed_gemv.h"

namespace rtl_cuda {
namespace {

constexpr int kWarps = 4;  // weight rows per CTA

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// VEC consecutive elements of T as floats; VEC * sizeof(T) is 16 (one uint4) or sizeof(T) (scalar path)
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = to_f32(e[j]);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = to_f32(p[j]);
  }
}

// streaming load of weights: read once, do not keep in L1
template <typename T, int VEC>
__device__ __forceinline__ void load_weight(const T* p, float (&out)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = to_f32(e[j]);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = to_f32(p[j]);
  }
}

template <typename T, int VEC, int MAXR>
__global__ void __launch_bounds__(kWarps * 32) routed_gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, const uint32_t* __restrict__ bits,
                                                                  const int64_t* __restrict__ perm, const int64_t* __restrict__ offsets,
                                                                  const T* __restrict__ bias, T* __restrict__ y, int M, int64_t N, int64_t C, int K) {
  __shared__ int s_row[MAXR];     // row id of sorted position p (-1: skip)
  __shared__ int s_ticket[MAXR];  // ticket of sorted position p
  for (int p = threadIdx.x; p < MAXR; p += blockDim.x) {
    int row = -1, ticket = 0;
    if (p < M) {
      const int64_t r = perm[p];
      row = (r >= 0 && r < M) ? static_cast<int>(r) : -1;
      int lo = 0, hi = K;  // largest k with offsets[k] <= p
      while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (offsets[mid] <= p) lo = mid; else hi = mid;
      }
      ticket = lo;
    }
    s_row[p] = row;
    s_ticket[p] = ticket;
  }
  __syncthreads();

  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (n >= N) return;
  const int64_t words = (C + 31) / 32;
  const T* wrow = w + n * C;

  float acc[MAXR];
#pragma unroll
  for (int p = 0; p < MAXR; ++p) acc[p] = 0.0f;

  constexpr int64_t kStep = 32 * VEC;
  for (int64_t base = 0; base < C; base += kStep) {
    const int64_t c = base + lane * VEC;
    if (c < C) {  // with VEC > 1, C % VEC == 0, so the whole vector is inside the row
      float wv[VEC];
      load_weight<T, VEC>(wrow + c, wv);
      const int shift = static_cast<int>(c & 31);
      float wm[VEC];
      int cur = -1;
#pragma unroll
      for (int p = 0; p < MAXR; ++p) {
        if (p < M) {
          const int row = s_row[p];
          const int k = s_ticket[p];
          if (k != cur) {  // rows are sorted by ticket: one mask load per active ticket
            cur = k;
            const uint32_t word = __ldg(bits + (static_cast<int64_t>(k) * N + n) * words + (c >> 5)) >> shift;
#pragma unroll
            for (int j = 0; j < VEC; ++j) wm[j] = ((word >> j) & 1u) ? wv[j] : 0.0f;
          }
          if (row >= 0) {
            float xv[VEC];
            load_vec<T, VEC>(x + static_cast<int64_t>(row) * C + c, xv);
#pragma unroll
            for (int j = 0; j < VEC; ++j) acc[p] = fmaf(xv[j], wm[j], acc[p]);
          }
        }
      }
    }
  }

  const float b = bias != nullptr ? to_f32(bias[n]) : 0.0f;
#pragma unroll
  for (int p = 0; p < MAXR; ++p) {
    if (p < M) {
      float v = acc[p];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      const int row = s_row[p];
      if (lane == 0 && row >= 0) y[static_cast<int64_t>(row) * N + n] = from_f32<T>(v + b);
    }
  }
}

template <typename T, int VEC>
cudaError_t launch_vec(const T* x, const T* w, const uint32_t* bits, const int64_t* perm, const int64_t* offsets, const T* bias, T* y, int64_t M, int64_t N,
                       int64_t C, int64_t K, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((N + kWarps - 1) / kWarps));
  const dim3 block(kWarps * 32);
  const int m = static_cast<int>(M), k = static_cast<int>(K);
  if (M <= 8)
    routed_gemv_kernel<T, VEC, 8><<<grid, block, 0, stream>>>(x, w, bits, perm, offsets, bias, y, m, N, C, k);
  else if (M <= 16)
    routed_gemv_kernel<T, VEC, 16><<<grid, block, 0, stream>>>(x, w, bits, perm, offsets, bias, y, m, N, C, k);
  else if (M <= 32)
    routed_gemv_kernel<T, VEC, 32><<<grid, block, 0, stream>>>(x, w, bits, perm, offsets, bias, y, m, N, C, k);
  else
    routed_gemv_kernel<T, VEC, 64><<<grid, block, 0, stream>>>(x, w, bits, perm, offsets, bias, y, m, N, C, k);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const void* x, const void* w, const uint32_t* bits, const int64_t* perm, const int64_t* offsets, const void* bias, void* y, int64_t M,
                         int64_t N, int64_t C, int64_t K, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) && (reinterpret_cast<uintptr_t>(w) % 16 == 0) && (C % kVec == 0);
  const T* xt = static_cast<const T*>(x);
  const T* wt = static_cast<const T*>(w);
  const T* bt = static_cast<const T*>(bias);
  T* yt = static_cast<T*>(y);
  if (aligned) return launch_vec<T, kVec>(xt, wt, bits, perm, offsets, bt, yt, M, N, C, K, stream);
  return launch_vec<T, 1>(xt, wt, bits, perm, offsets, bt, yt, M, N, C, K, stream);
}

}  // namespace

cudaError_t launch_routed_gemv(int dtype, const void* x, const void* w, const uint32_t* bits, const int64_t* perm, const int64_t* offsets, const void* bias,
                               void* y, int64_t M, int64_t N, int64_t C, int64_t K, cudaStream_t stream) {
  if (M < 1 || M > kMaxRows || N < 0 || C < 0 || K < 1) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  switch (dtype) {
    case kFloat32: return launch_typed<float>(x, w, bits, perm, offsets, bias, y, M, N, C, K, stream);
    case kFloat16: return launch_typed<__half>(x, w, bits, perm, offsets, bias, y, M, N, C, K, stream);
    case kBFloat16: return launch_typed<__nv_bfloat16>(x, w, bits, perm, offsets, bias, y, M, N, C, K, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace rtl_cuda
