// The portable 8-lane vector both portable kernel instances are written on (routed_generic.cpp,
// routed_conv_generic.cpp): plain C++ loops over a float[8] that the compiler may vectorise. Lane
// masks are the low 8 bits of a uint32. Elements are float32 or bfloat16 (uint16 bits).
#pragma once
#include <cstdint>

namespace rtl_cpu {

struct PortableVec8 {
  static constexpr int L = 8;
  struct vec {
    float v[8];
  };
  static inline float f32(float x) { return x; }
  static inline float f32(uint16_t x) {
    const uint32_t u = static_cast<uint32_t>(x) << 16;
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
  }
  static inline vec zero() { return vec{}; }
  static inline vec bcast(float f) {
    vec r;
    for (int i = 0; i < 8; ++i) r.v[i] = f;
    return r;
  }
  static inline vec fmadd(vec a, vec b, vec c) {
    for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static inline vec add(vec a, vec b) {
    for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
    return a;
  }
  template <typename T>
  static inline vec load(const T* p) {
    vec r;
    for (int i = 0; i < 8; ++i) r.v[i] = f32(p[i]);
    return r;
  }
  template <typename T>
  static inline vec load_masked(const T* p, uint32_t m) {
    vec r;
    for (int i = 0; i < 8; ++i) r.v[i] = ((m >> i) & 1u) ? f32(p[i]) : 0.0f;
    return r;
  }
  static inline void store(float* p, vec v) {
    for (int i = 0; i < 8; ++i) p[i] = v.v[i];
  }
  static inline void store_masked(float* p, vec v, uint32_t m) {
    for (int i = 0; i < 8; ++i)
      if ((m >> i) & 1u) p[i] = v.v[i];
  }
};

}  // namespace rtl_cpu
