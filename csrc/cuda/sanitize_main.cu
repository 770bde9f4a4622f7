// Stand-alone check of the routed GEMV for compute-sanitizer (memcheck, racecheck): small random
// problems in every dtype, odd sizes, an empty ticket and unaligned rows, each compared with a
// float32 host computation. No torch: `nvcc -arch=sm_90 sanitize_main.cu routed_gemv.cu`.
// Exit code 0 only when every launch succeeded and every output element matched.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "routed_gemv.h"

namespace {

struct Case {
  int dtype;
  int64_t M, N, C, K;
  bool bias;
};

const char* kNames[] = {"float32", "float16", "bfloat16"};

// round a float to the storage dtype and back, and write its bits
float store(int dtype, float v, unsigned char* dst) {
  if (dtype == rtl_cuda::kFloat32) {
    std::memcpy(dst, &v, 4);
    return v;
  }
  if (dtype == rtl_cuda::kFloat16) {
    const __half h = __float2half_rn(v);
    std::memcpy(dst, &h, 2);
    return __half2float(h);
  }
  const __nv_bfloat16 b = __float2bfloat16_rn(v);
  std::memcpy(dst, &b, 2);
  return __bfloat162float(b);
}

float load(int dtype, const unsigned char* src) {
  if (dtype == rtl_cuda::kFloat32) {
    float v;
    std::memcpy(&v, src, 4);
    return v;
  }
  if (dtype == rtl_cuda::kFloat16) {
    __half h;
    std::memcpy(&h, src, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, src, 2);
  return __bfloat162float(b);
}

#define CHECK(call)                                                                          \
  do {                                                                                       \
    const cudaError_t err_ = (call);                                                         \
    if (err_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      return false;                                                                          \
    }                                                                                        \
  } while (0)

bool run_case(const Case& cs, std::mt19937& gen) {
  const size_t es = cs.dtype == rtl_cuda::kFloat32 ? 4 : 2;
  const int64_t words = (cs.C + 31) / 32;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int64_t> ticket(0, cs.K - 1);
  std::vector<unsigned char> hx(cs.M * cs.C * es), hw(cs.N * cs.C * es), hb(cs.N * es);
  std::vector<float> fx(cs.M * cs.C), fw(cs.N * cs.C), fb(cs.N, 0.0f);
  for (int64_t i = 0; i < cs.M * cs.C; ++i) fx[i] = store(cs.dtype, normal(gen), &hx[i * es]);
  for (int64_t i = 0; i < cs.N * cs.C; ++i) fw[i] = store(cs.dtype, normal(gen), &hw[i * es]);
  for (int64_t i = 0; i < cs.N; ++i) fb[i] = cs.bias ? store(cs.dtype, normal(gen), &hb[i * es]) : 0.0f;
  std::vector<uint32_t> bits(cs.K * cs.N * words);
  for (auto& w : bits) w = static_cast<uint32_t>(gen());
  if (cs.K > 1)  // the last ticket keeps nothing: an empty mask must give the bias alone
    std::fill(bits.begin() + (cs.K - 1) * cs.N * words, bits.end(), 0u);
  // routes, then rows sorted by ticket (perm) with offsets
  std::vector<int64_t> routes(cs.M), perm, offsets(cs.K + 1, 0);
  for (auto& r : routes) r = ticket(gen);
  for (int64_t k = 0; k < cs.K; ++k) {
    offsets[k] = static_cast<int64_t>(perm.size());
    for (int64_t m = 0; m < cs.M; ++m)
      if (routes[m] == k) perm.push_back(m);
  }
  offsets[cs.K] = cs.M;

  void *dx, *dw, *db = nullptr, *dy;
  uint32_t* dbits;
  int64_t *dperm, *doff;
  CHECK(cudaMalloc(&dx, hx.size()));
  CHECK(cudaMalloc(&dw, hw.size()));
  CHECK(cudaMalloc(&dy, cs.M * cs.N * es));
  CHECK(cudaMalloc(&dbits, bits.size() * 4));
  CHECK(cudaMalloc(&dperm, perm.size() * 8));
  CHECK(cudaMalloc(&doff, offsets.size() * 8));
  CHECK(cudaMemcpy(dx, hx.data(), hx.size(), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dw, hw.data(), hw.size(), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dbits, bits.data(), bits.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dperm, perm.data(), perm.size() * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(doff, offsets.data(), offsets.size() * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(dy, 0x7f, cs.M * cs.N * es));  // poison: every element must be written
  if (cs.bias) {
    CHECK(cudaMalloc(&db, hb.size()));
    CHECK(cudaMemcpy(db, hb.data(), hb.size(), cudaMemcpyHostToDevice));
  }
  CHECK(rtl_cuda::launch_routed_gemv(cs.dtype, dx, dw, dbits, dperm, doff, db, dy, cs.M, cs.N, cs.C, cs.K, nullptr));
  CHECK(cudaDeviceSynchronize());
  std::vector<unsigned char> hy(cs.M * cs.N * es);
  CHECK(cudaMemcpy(hy.data(), dy, hy.size(), cudaMemcpyDeviceToHost));

  const float tol = cs.dtype == rtl_cuda::kFloat32 ? 1e-4f : 2e-2f;
  int64_t bad = 0;
  for (int64_t m = 0; m < cs.M; ++m) {
    const int64_t k = routes[m];
    for (int64_t n = 0; n < cs.N; ++n) {
      double ref = fb[n], scale = std::fabs(fb[n]);
      for (int64_t c = 0; c < cs.C; ++c) {
        if ((bits[(k * cs.N + n) * words + c / 32] >> (c % 32)) & 1u) {
          ref += static_cast<double>(fx[m * cs.C + c]) * fw[n * cs.C + c];
          scale += std::fabs(static_cast<double>(fx[m * cs.C + c]) * fw[n * cs.C + c]);
        }
      }
      const float got = load(cs.dtype, &hy[(m * cs.N + n) * es]);
      if (!(std::fabs(got - ref) <= tol * (scale + 1.0))) ++bad;
    }
  }
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  cudaFree(dbits);
  cudaFree(dperm);
  cudaFree(doff);
  if (db) cudaFree(db);
  std::printf("%-8s M=%-3lld N=%-4lld C=%-4lld K=%lld bias=%d: %s\n", kNames[cs.dtype], static_cast<long long>(cs.M), static_cast<long long>(cs.N),
              static_cast<long long>(cs.C), static_cast<long long>(cs.K), cs.bias ? 1 : 0, bad ? "MISMATCH" : "ok");
  if (bad) std::fprintf(stderr, "  %lld of %lld outputs wrong\n", static_cast<long long>(bad), static_cast<long long>(cs.M * cs.N));
  return bad == 0;
}

}  // namespace

int main() {
  std::mt19937 gen(1234);
  const Case cases[] = {
      {rtl_cuda::kFloat32, 1, 7, 33, 1, true},    // K = 1, odd sizes (scalar path)
      {rtl_cuda::kFloat32, 5, 64, 128, 3, false},  // vector path
      {rtl_cuda::kFloat16, 9, 33, 256, 4, true},   // MAXR 16 instantiation
      {rtl_cuda::kFloat16, 17, 16, 40, 2, true},   // C not a multiple of 32
      {rtl_cuda::kBFloat16, 33, 65, 512, 8, true}, // MAXR 64, more tickets than rows per ticket
      {rtl_cuda::kBFloat16, 64, 31, 72, 3, false}, // kMaxRows
  };
  int failures = 0;
  for (const Case& cs : cases) failures += run_case(cs, gen) ? 0 : 1;
  // a launch outside the contract must be refused, not run
  if (rtl_cuda::launch_routed_gemv(rtl_cuda::kFloat32, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, rtl_cuda::kMaxRows + 1, 1, 1, 1,
                                   nullptr) != cudaErrorInvalidValue) {
    std::fprintf(stderr, "M > kMaxRows was not refused\n");
    ++failures;
  }
  std::printf("%d case(s) failed\n", failures);
  return failures ? 1 : 0;
}
