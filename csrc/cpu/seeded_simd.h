// Philox4x32-10 on SIMD registers, written once over a small traits class `P` (AVX2 and AVX-512
// instantiate it with their intrinsics; see seeded_cpu.h for the stream layout). Included by the
// per-ISA translation units with their target options active. No standard headers here.
//
// Each 64-bit lane carries one block's 32-bit state word in its low half (vpmuludq reads only the
// low halves, so the high halves may hold anything): two register sets, E and O, hold P::L blocks
// between them. At the end the low halves of E and O are merged into 32-bit lanes and one 4 x 4
// transpose inside each 128-bit lane leaves the words in stream order, because the counters are
// laid out so that 32-bit lane 4 q + w holds block (L / 4) w + q.
//
// Traits `P`: L (32-bit lanes), I (integer vector), set1_64, load64 (L / 2 uint64), add64, mul32
// (vpmuludq), srl32 / sll32 (64-bit shifts by 32), xor3, odd (even 32-bit lanes of a, odd of b),
// unpack{lo,hi}{32,64} (per 128-bit lane), store.
#pragma once

namespace rtl_seeded {

// the block (relative to the first) that 32-bit lane `lane` of an L-lane Philox call computes
constexpr uint64_t philox_lane_block(int L, int lane) { return static_cast<uint64_t>((L / 4) * (lane % 4) + lane / 4); }

template <int L>
struct PhiloxLanes {
  alignas(64) uint64_t even[L / 2], odd[L / 2];
  constexpr PhiloxLanes() : even(), odd() {
    for (int i = 0; i < L / 2; ++i) {
      even[i] = philox_lane_block(L, 2 * i);
      odd[i] = philox_lane_block(L, 2 * i + 1);
    }
  }
};

// words of blocks b .. b + P::L - 1 (4 P::L words) into out, in stream order
template <class P>
inline void philox_simd(uint32_t key_lo, uint32_t key_hi, uint64_t b, uint32_t* out) {
  typedef typename P::I I;
  static constexpr PhiloxLanes<P::L> lanes{};
  const I base = P::set1_64(b);
  I e0 = P::add64(base, P::load64(lanes.even)), o0 = P::add64(base, P::load64(lanes.odd));
  I e1 = P::srl32(e0), o1 = P::srl32(o0);
  I e2 = P::set1_64(0), o2 = e2, e3 = e2, o3 = e2;
  const I A = P::set1_64(kRoundA), B = P::set1_64(kRoundB);
  uint32_t k0 = key_lo, k1 = key_hi;
  RTL_UNROLL
  for (int r = 0; r < 10; ++r) {
    const I K0 = P::set1_64(k0), K1 = P::set1_64(k1);
    const I pbe = P::mul32(B, e2), pae = P::mul32(A, e0), pbo = P::mul32(B, o2), pao = P::mul32(A, o0);
    e0 = P::xor3(P::srl32(pbe), e1, K0);
    e2 = P::xor3(P::srl32(pae), e3, K1);
    o0 = P::xor3(P::srl32(pbo), o1, K0);
    o2 = P::xor3(P::srl32(pao), o3, K1);
    e1 = pbe;
    e3 = pae;
    o1 = pbo;
    o3 = pao;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  // word j of 32-bit lane l: block philox_lane_block(L, l)
  const I w0 = P::odd(e0, P::sll32(o0)), w1 = P::odd(e1, P::sll32(o1)), w2 = P::odd(e2, P::sll32(o2)), w3 = P::odd(e3, P::sll32(o3));
  const I t0 = P::unpacklo32(w0, w1), t1 = P::unpackhi32(w0, w1), t2 = P::unpacklo32(w2, w3), t3 = P::unpackhi32(w2, w3);
  // 128-bit lane q of u_w: the 4 words of block (L / 4) w + q, so u_w is stream words [L w, L w + L)
  P::store(out, P::unpacklo64(t0, t2));
  P::store(out + P::L, P::unpackhi64(t0, t2));
  P::store(out + 2 * P::L, P::unpacklo64(t1, t3));
  P::store(out + 3 * P::L, P::unpackhi64(t1, t3));
}

}  // namespace rtl_seeded
