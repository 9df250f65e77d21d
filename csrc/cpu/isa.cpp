#include "cpu/isa.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <mutex>

#include "cpu/isa_target.h"

namespace cpg::cpu {

namespace {

bool cpu_runs(const char* name) {
#if CPG_CPU_X86
  const std::string n = name;
  if (n == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("popcnt");
  }
  if (n == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("popcnt");
  }
#endif
  return std::string(name) == "scalar";
}

// Narrowest first.
std::vector<const Kernels*> runnable() {
  std::vector<const Kernels*> out;
  for (const Kernels* k : {scalar_kernels(), avx2_kernels(), avx512_kernels()}) {
    if (k && cpu_runs(k->name)) out.push_back(k);
  }
  return out;
}

const Kernels* automatic() {
  // ATen's capability caps ours: "AVX512", "AVX2", or "DEFAULT"/"NO AVX"/other.
  const std::string aten = at::get_cpu_capability();
  const int cap = aten == "AVX512" ? 2 : aten == "AVX2" ? 1 : 0;
  const Kernels* best = scalar_kernels();
  for (const Kernels* k : runnable()) {
    const std::string n = k->name;
    const int level = n == "avx512" ? 2 : n == "avx2" ? 1 : 0;
    if (level <= cap) best = k;
  }
  return best;
}

std::atomic<const Kernels*> g_kernels{nullptr};
std::mutex g_setting_mutex;
std::string g_setting = "auto";  // what set_isa was last given

}  // namespace

const Kernels& kernels() {
  const Kernels* k = g_kernels.load(std::memory_order_acquire);
  if (!k) {
    const Kernels* expected = nullptr;
    g_kernels.compare_exchange_strong(expected, automatic());
    k = g_kernels.load(std::memory_order_acquire);
  }
  return *k;
}

std::string isa() { return kernels().name; }

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const Kernels* k : runnable()) names.emplace_back(k->name);
  return names;
}

std::string set_isa(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_setting_mutex);
  const Kernels* chosen = nullptr;
  if (name.empty() || name == "auto") {
    chosen = automatic();
  } else {
    for (const Kernels* k : runnable()) {
      if (name == k->name) chosen = k;
    }
  }
  if (!chosen) {
    std::string names;
    for (const auto& n : available_isas()) names += (names.empty() ? "" : ", ") + n;
    TORCH_CHECK_VALUE(false, "cpu isa: expected one of ", names, " (or \"auto\"), got \"", name,
                      "\"");
  }
  g_kernels = chosen;
  std::string previous = g_setting;
  g_setting = name.empty() ? "auto" : name;
  return previous;
}

}  // namespace cpg::cpu
