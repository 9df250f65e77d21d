// Which build of the CPU kernels (kernels.h) runs: the widest one that this
// CPU runs and ATen's own choice allows (at::get_cpu_capability(): so
// ATEN_CPU_CAPABILITY=default or =avx2 narrows ours too), unless a test or a
// user pins one with set_isa.
#pragma once

#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace cpg::cpu {

const Kernels& kernels();

// "scalar", "avx2" or "avx512": the build in use.
std::string isa();
// The builds this CPU can run, narrowest first.
std::vector<std::string> available_isas();
// Pins a build by name ("" or "auto": back to the automatic choice); returns
// the previous setting ("auto" or a name), for restoring it. ValueError for a
// build this CPU cannot run.
std::string set_isa(const std::string& name);

}  // namespace cpg::cpu
