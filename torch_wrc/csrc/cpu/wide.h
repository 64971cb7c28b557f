// 32 bytes of T (8 floats, 4 doubles) as one value: GCC's vector extensions, so that a loop body written once
// compiles to one AVX2 register per value in an AVX2 build (isa.h) and to two SSE2 registers in the baseline
// build, with the same arithmetic per lane in both (the same bits). Other compilers get one T per value.
//
//   for_lanes<T>(n, [&]<typename V>(int64_t i) WRC_LAMBDA_INLINE { store(out + i, load<V>(a + i) + load<V>(b + i)); });
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "isa.h"

namespace wrc {

// kBytes: 32 (AVX2, and the baseline's SSE2 pairs) or 64 (one AVX-512 register, in an AVX-512 build)
#if defined(__GNUC__)
template <typename T, int kBytes = 32>
struct Wide {
  typedef T type __attribute__((vector_size(kBytes)));
};
#else
template <typename T, int kBytes = 32>
struct Wide {
  typedef T type;
};
#endif

template <typename T, int kBytes = 32>
using wide_t = typename Wide<T, kBytes>::type;

template <typename T, int kBytes = 32>
constexpr int64_t lanes() {
  return static_cast<int64_t>(sizeof(wide_t<T, kBytes>) / sizeof(T));
}

template <typename V, typename T>
WRC_ISA_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
WRC_ISA_INLINE void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// ``value`` in every lane (V = T: the value itself)
template <typename V, typename T>
WRC_ISA_INLINE V splat(T value) {
  if constexpr (std::is_same_v<V, T>) {
    return value;
  } else {
    // a shuffle of lane 0, one broadcast instruction once inlined into an AVX2 build (a vector built lane by lane,
    // or value - V{}, is folded before that and becomes eight inserts)
#if defined(__clang__) || __GNUC__ >= 12
    const V v = {value};
    constexpr size_t n = sizeof(V) / sizeof(T);
    if constexpr (n == 16) {
      return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    } else if constexpr (n == 8) {
      return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
    } else {
      static_assert(n == 4, "splat: 4, 8 or 16 lanes");
      return __builtin_shufflevector(v, v, 0, 0, 0, 0);
    }
#else  // older GCC (no __builtin_shufflevector): lane by lane, correct but slower
    V v;
    for (size_t i = 0; i < sizeof(V) / sizeof(T); ++i) v[i] = value;
    return v;
#endif
  }
}

// Calls step.template operator()<V>(i) for i in [0, n): lanes<T>() values at a time (V = wide_t<T>), then one at a
// time (V = T) with the same arithmetic, so that the remainder rounds as the wide values do.
template <typename T, typename Step>
WRC_ISA_INLINE void for_lanes(int64_t n, Step&& step) {
  int64_t i = 0;
  if constexpr (!std::is_same_v<wide_t<T>, T>) {
    for (; i + lanes<T>() <= n; i += lanes<T>()) step.template operator()<wide_t<T>>(i);
  }
  for (; i < n; ++i) step.template operator()<T>(i);
}

}  // namespace wrc
