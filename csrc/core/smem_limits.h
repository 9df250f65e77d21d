// A device's shared memory, as the launchers plan with it: the CUDA build
// reads it from the driver once per device (cpgdev::smem_limits() in
// cuda/portability.h), the emulator returns sm_90's.
#pragma once

namespace cpgdev {
struct SmemLimits {
  int per_sm = 0;              // bytes per multiprocessor
  int per_block = 0;           // the most one block may opt in to
  int reserved_per_block = 0;  // what the system reserves per resident block
};
}  // namespace cpgdev
