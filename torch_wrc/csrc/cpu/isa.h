// One loop body, compiled for the baseline x86-64 ISA (SSE2: two doubles or four floats per instruction) and for
// AVX2 (twice as wide), the AVX2 build chosen at run time where the CPU has it. The extension is built without
// -march flags so that one wheel runs everywhere; the GroupNorm kernels' loops (float32 -> float64 moments, the
// fused apply) get most of their speed from the wider vectors.
//
// WRC_ISA_CLONES enables "avx2" only, not FMA: a * b + c stays two rounded operations, so both builds give the same
// bits (tested: WRC_BASELINE_ISA=1 in the environment makes every call take the baseline build). The exception are
// arithmetic-bound kernels (pixel_mlp's matrix products), which add their own AVX2 + FMA and AVX-512 builds
// (cpu_has_avx2_fma, cpu_has_avx512): there a * b + c is one instruction rounded once, so those builds differ from
// the baseline in the last bits, and their tests hold every build to a float64 oracle.
//
//   template <typename T, bool... Flags> WRC_ISA_INLINE void body(...) { ... }  // the loops, written once
//   WRC_ISA_CLONES(run_body, body)                        // run_body<T, Flags...>(...) runs the CPU's build
//
// Where the compiler's vectorisation is not enough, a kernel may add its own AVX2 function (intrinsics, marked
// __attribute__((target("avx2"))), under #if WRC_HAS_AVX2_BUILD) and call it when cpu_has_avx2().
#pragma once

#include <cstdlib>
#include <cstring>
#include <utility>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define WRC_HAS_AVX2_BUILD 1
#define WRC_ISA_INLINE inline __attribute__((always_inline))
// on a lambda called by a WRC_ISA_INLINE loop (wide.h's for_lanes): otherwise it may stay a function of its own,
// compiled for the baseline ISA, inside an AVX2 build
#define WRC_LAMBDA_INLINE __attribute__((always_inline))
#define WRC_ISA_CLONES(name, body)                                          \
  template <typename T, bool... Flags, typename... Args>                    \
  __attribute__((target("avx2"))) auto name##_avx2(Args&&... args) {        \
    return body<T, Flags...>(std::forward<Args>(args)...);                  \
  }                                                                         \
  template <typename T, bool... Flags, typename... Args>                    \
  auto name##_baseline(Args&&... args) {                                    \
    return body<T, Flags...>(std::forward<Args>(args)...);                  \
  }                                                                         \
  template <typename T, bool... Flags, typename... Args>                    \
  auto name(Args&&... args) {                                               \
    if (::wrc::cpu_has_avx2()) {                                            \
      return name##_avx2<T, Flags...>(std::forward<Args>(args)...);         \
    }                                                                       \
    return name##_baseline<T, Flags...>(std::forward<Args>(args)...);       \
  }
namespace wrc {
inline bool baseline_isa_requested() {
  const char* value = std::getenv("WRC_BASELINE_ISA");
  return value != nullptr && std::strcmp(value, "") != 0 && std::strcmp(value, "0") != 0;
}
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && !baseline_isa_requested();
  return has;
}
inline bool cpu_has_avx2_fma() {
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("fma");
  return has;
}
// AVX-512 (F, DQ, VL) with FMA, for the kernels that have such a build; WRC_NO_AVX512=1 takes them down to AVX2
inline bool cpu_has_avx512() {
  static const bool has = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                          !(std::getenv("WRC_NO_AVX512") != nullptr && std::strcmp(std::getenv("WRC_NO_AVX512"), "") != 0 &&
                            std::strcmp(std::getenv("WRC_NO_AVX512"), "0") != 0);
  return has;
}
}  // namespace wrc
#else  // other compilers and architectures: the one build the compiler makes
#define WRC_HAS_AVX2_BUILD 0
#define WRC_ISA_INLINE inline
#define WRC_LAMBDA_INLINE
#define WRC_ISA_CLONES(name, body)                          \
  template <typename T, bool... Flags, typename... Args>    \
  auto name(Args&&... args) {                               \
    return body<T, Flags...>(std::forward<Args>(args)...);  \
  }
#endif
