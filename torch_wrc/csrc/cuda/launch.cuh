// Launch geometry shared by the CUDA kernels: 256-thread blocks, enough of them to cover `total` items.
#pragma once

#include <cstdint>

namespace wrc {

constexpr int kThreads = 256;

inline unsigned int num_blocks(int64_t total) {
  return static_cast<unsigned int>((total + kThreads - 1) / kThreads);
}

}  // namespace wrc
