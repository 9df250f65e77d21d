// The emulator's scheduler, shared memory and warp operations (see runtime.h).
#include "emu/runtime.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

// Under AddressSanitizer (the sanitizer build of scripts/ and .ci/run), every switch between
// the scheduler's stack and a fiber's is announced, so that ASan tracks which stack is live
// and does not report the fibers' frames as overflows of the scheduler's.
#if defined(__SANITIZE_ADDRESS__)
#define CPG_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CPG_EMU_ASAN 1
#endif
#endif
#if defined(CPG_EMU_ASAN)
#include <dlfcn.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(CPG_EMU_ASAN)
// Launches run by this sanitized runtime: tests of the sanitizer step read it (through
// ctypes) to confirm that the extension's emulated ops run here.
extern "C" {
__attribute__((visibility("default"))) uint64_t cpg_emu_sanitized_launches = 0;
}
#endif

namespace cpg {
namespace emu {
namespace {

// Announces a switch to the stack [bottom, bottom + size); *fake_stack keeps the leaving
// context's fake frames (null: the leaving context ends). No-ops without ASan.
inline void start_switch(void** fake_stack, const void* bottom, size_t size) {
#if defined(CPG_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}
// Completes the switch on the stack switched to; reports the stack left where asked.
inline void finish_switch(void* fake_stack, const void** bottom_old, size_t* size_old) {
#if defined(CPG_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, bottom_old, size_old);
#else
  (void)fake_stack, (void)bottom_old, (void)size_old;
#endif
}

constexpr size_t kMaxSharedBytes = 227 * 1024;         // per block, sm_90
constexpr size_t kDefaultMaxDynamicBytes = 48 * 1024;  // without the opt-in attribute
constexpr size_t kStackBytes = 256 * 1024;
constexpr int kWarpSize = 32;

std::atomic<uint64_t> g_seed{0};

// One launch at a time: the arena, the stacks and the attributes are global.
std::mutex g_mutex;
alignas(128) unsigned char g_arena[kMaxSharedBytes];  // the running block's shared memory
std::map<const void*, size_t> g_max_dynamic_bytes;    // set_max_dynamic_smem, per kernel

// Fiber stacks, each kStackBytes above a PROT_NONE guard page (an overflow
// faults instead of corrupting a neighbour). Kept for the process's lifetime
// and reused by every block and launch.
class StackPool {
 public:
  void* get(size_t i) {
    static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    while (stacks_.size() <= i) {
      void* base = mmap(nullptr, page + kStackBytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) throw std::bad_alloc();
      mprotect(base, page, PROT_NONE);
      stacks_.push_back(static_cast<unsigned char*>(base) + page);
    }
    return stacks_[i];
  }

 private:
  std::vector<void*> stacks_;
};
StackPool g_stacks;

// A deterministic RNG (splitmix64), the same on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

enum class State { Ready, AtBarrier, AtWarpOp, Exited };

struct Fiber;

// A warp operation: once every live lane has arrived, run(name, lanes) computes
// all their results from their operands. lanes[i] is null where lane i has exited or
// does not exist (a partial last warp).
struct WarpOp {
  const char* name;
  void (*run)(const char* name, Fiber* const* lanes);
};

struct AsyncCopy {
  void* dst;
  const void* src;  // null: zero-fill
  size_t bytes;     // 16 or 4
};

struct Fiber {
  ucontext_t context;          // points into itself: a Fiber must not move
  void* stack = nullptr;       // its kStackBytes of stack
  void* fake_stack = nullptr;  // ASan's, while switched away
  dim3 tid;
  int linear = 0;
  State state = State::Ready;
  Site site{};                                   // where it waits
  const WarpOp* op = nullptr;                    // at a warp operation: which one,
  const void* in = nullptr;                      // the lane's operands
  void* out = nullptr;                           // and results (both on the fiber's stack)
  std::vector<AsyncCopy> open_group;             // cp.async not yet committed
  std::deque<std::vector<AsyncCopy>> committed;  // oldest first
  std::exception_ptr error;
};

struct SharedDecl {
  const void* key;
  size_t offset;
};

struct Launch {
  const char* kernel = nullptr;
  const std::function<void()>* body = nullptr;
  dim3 grid, block, block_idx;
  size_t dynamic_bytes = 0;
  std::vector<Fiber> fibers;  // the block's threads by linear id; sized once
  ucontext_t scheduler{};
  void* scheduler_fake_stack = nullptr;   // ASan's, while a fiber runs
  const void* scheduler_stack = nullptr;  // the launching thread's stack (for ASan)
  size_t scheduler_stack_bytes = 0;
  std::vector<SharedDecl> shared_decls;  // the block's static shared arrays
  size_t shared_used = 0;                // bytes of g_arena in use
};

thread_local Launch* t_launch = nullptr;
thread_local Fiber* t_fiber = nullptr;

// An error detected outside the faulting fiber (in a warp operation).
struct Fault {
  const Fiber* fiber;
  std::string what;
};

Fiber& current_fiber() {
  if (!t_fiber) throw std::logic_error("cpg emulator: device code called outside a kernel launch");
  return *t_fiber;
}

Launch& current_launch() {
  current_fiber();
  return *t_launch;
}

std::string str(const dim3& d) {
  std::ostringstream s;
  s << '(' << d.x << ',' << d.y << ',' << d.z << ')';
  return s.str();
}

std::string hex(const void* p) {
  std::ostringstream s;
  s << p;
  return s.str();
}

std::runtime_error launch_error(const Launch& l, const std::string& what) {
  return std::runtime_error("cpg emulator: kernel '" + std::string(l.kernel) + "', block " +
                            str(l.block_idx) + ": " + what);
}

std::runtime_error thread_error(const Launch& l, const Fiber& f, const std::string& what) {
  return launch_error(l, "thread " + str(f.tid) + ": " + what);
}

bool in_arena(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(g_arena);
  return a >= base && a < base + kMaxSharedBytes;
}

// Throws unless [p, p + n) lies in the block's shared memory in use.
void check_shared(const void* p, size_t n, const char* what) {
  const auto a = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(g_arena);
  if (a < base || a + n > base + t_launch->shared_used) {
    throw std::runtime_error(std::string(what) + " " + hex(p) +
                             " is not in the block's shared memory");
  }
}

void check_aligned16(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    throw std::runtime_error(std::string(what) + " " + hex(p) + " is not 16-byte aligned");
  }
}

void perform(const std::vector<AsyncCopy>& group) {
  for (const AsyncCopy& c : group) {
    if (c.src) {
      std::memcpy(c.dst, c.src, c.bytes);
    } else {
      std::memset(c.dst, 0, c.bytes);
    }
  }
}

// ------------------------------------------------------------------- fibers

// Suspends the calling fiber in `state` until the scheduler resumes it.
void suspend(Fiber& f, State state, Site site) {
  f.state = state;
  f.site = site;
  start_switch(&f.fake_stack, t_launch->scheduler_stack, t_launch->scheduler_stack_bytes);
  swapcontext(&f.context, &t_launch->scheduler);
  finish_switch(f.fake_stack, nullptr, nullptr);
}

void fiber_main() {
  Fiber& f = *t_fiber;
  finish_switch(nullptr, &t_launch->scheduler_stack, &t_launch->scheduler_stack_bytes);
  try {
    (*t_launch->body)();
    // Copies still in flight when a thread exits land now.
    for (const auto& group : f.committed) perform(group);
    perform(f.open_group);
  } catch (...) {
    f.error = std::current_exception();
  }
  f.state = State::Exited;
  start_switch(nullptr, t_launch->scheduler_stack, t_launch->scheduler_stack_bytes);
  setcontext(&t_launch->scheduler);  // never resumed
}

// A fresh context that starts fiber_main on `stack`. (getcontext returns twice
// in principle, so it is kept away from the loop below.)
void make_context(ucontext_t* context, void* stack) {
  getcontext(context);
  context->uc_stack.ss_sp = stack;
  context->uc_stack.ss_size = kStackBytes;
  context->uc_link = nullptr;
  makecontext(context, fiber_main, 0);
}

void start_fibers(Launch& l) {
  const int n = static_cast<int>(l.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = l.fibers[i];
    f.linear = i;
    f.tid = dim3(i % l.block.x, i / l.block.x % l.block.y, i / (l.block.x * l.block.y));
    f.state = State::Ready;
    f.op = nullptr;
    f.open_group.clear();
    f.committed.clear();
    f.error = nullptr;
    f.stack = g_stacks.get(i);
    f.fake_stack = nullptr;
    make_context(&f.context, f.stack);
  }
}

// Where the threads wait, by place: "threads 0-15 wait at syncthreads
// (k.cu:12); threads 16-31 wait at ...; 8 threads have exited".
std::string describe_waiting(const Launch& l) {
  std::vector<std::pair<std::string, std::vector<int>>> places;  // in order of first thread
  int exited = 0;
  for (const Fiber& f : l.fibers) {
    if (f.state == State::Exited) {
      ++exited;
      continue;
    }
    const std::string place =
        std::string(f.state == State::AtBarrier ? "syncthreads" : f.op->name) + " (" + f.site.file +
        ":" + std::to_string(f.site.line) + ")";
    auto it =
        std::find_if(places.begin(), places.end(), [&](const auto& p) { return p.first == place; });
    if (it == places.end()) it = places.insert(places.end(), {place, {}});
    it->second.push_back(f.linear);
  }
  std::ostringstream s;
  for (const auto& [place, ids] : places) {
    if (s.tellp() > 0) s << "; ";
    s << (ids.size() > 1 ? "threads " : "thread ");
    // Runs of consecutive ids, at most 8 of them.
    size_t runs = 0, i = 0;
    for (; i < ids.size() && runs < 8; ++runs) {
      size_t j = i;
      while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
      s << (runs ? ", " : "") << ids[i];
      if (j > i) s << '-' << ids[j];
      i = j + 1;
    }
    if (i < ids.size()) s << " and " << ids.size() - i << " more";
    s << " wait at " << place;
  }
  if (exited > 0) s << "; " << exited << " threads have exited";
  if (l.block.y * l.block.z > 1) s << " (linear thread ids, x fastest)";
  return s.str();
}

// Completes the warp operations and the barrier whose participants have all
// arrived; their threads become ready.
void release(Launch& l) {
  const int n = static_cast<int>(l.fibers.size());
  for (int w = 0; w < n; w += kWarpSize) {
    Fiber* lanes[kWarpSize] = {};
    const WarpOp* op = nullptr;
    bool complete = true;
    for (int i = 0; i < kWarpSize && w + i < n; ++i) {
      Fiber& f = l.fibers[w + i];
      if (f.state == State::Exited) continue;
      lanes[i] = &f;
      if (f.state != State::AtWarpOp || (op && f.op != op)) {
        complete = false;
        break;
      }
      op = f.op;
    }
    if (!complete || !op) continue;
    op->run(op->name, lanes);
    for (Fiber* f : lanes) {
      if (f) f->state = State::Ready;
    }
  }

  // A barrier needs every live thread, at the same source line: __syncthreads
  // in divergent code is undefined behaviour, reported as a deadlock.
  const Fiber* first = nullptr;
  for (const Fiber& f : l.fibers) {
    if (f.state == State::Exited) continue;
    if (f.state != State::AtBarrier) return;
    if (!first) first = &f;
    if (f.site.line != first->site.line || std::strcmp(f.site.file, first->site.file) != 0) return;
  }
  for (Fiber& f : l.fibers) {
    if (f.state == State::AtBarrier) f.state = State::Ready;
  }
}

void run_block(Launch& l, Rng& rng) {
  l.shared_decls.clear();
  l.shared_used = l.dynamic_bytes;
  std::memset(g_arena, 0xff, l.dynamic_bytes);
  start_fibers(l);

  std::vector<Fiber*> ready;
  for (;;) {
    ready.clear();
    bool live = false;
    for (Fiber& f : l.fibers) {
      if (f.state == State::Ready) ready.push_back(&f);
      live |= f.state != State::Exited;
    }
    if (!live) return;
    if (ready.empty()) throw launch_error(l, "deadlock: " + describe_waiting(l));

    for (size_t i = ready.size(); i > 1; --i) std::swap(ready[i - 1], ready[rng.next() % i]);
    for (Fiber* f : ready) {
      t_fiber = f;
      start_switch(&l.scheduler_fake_stack, f->stack, kStackBytes);
      swapcontext(&l.scheduler, &f->context);
      finish_switch(l.scheduler_fake_stack, nullptr, nullptr);
      t_fiber = nullptr;
      if (f->error) {
        // The other fibers are abandoned where they wait: device code owns no
        // resources, and their stacks are simply reused.
        try {
          std::rethrow_exception(f->error);
        } catch (const std::exception& e) {
          throw thread_error(l, *f, e.what());
        } catch (...) {
          throw thread_error(l, *f, "unknown exception");
        }
      }
    }
    try {
      release(l);
    } catch (const Fault& e) {
      throw thread_error(l, *e.fiber, e.what);
    }
  }
}

// ---------------------------------------------------------- warp operations

void warp_op(const WarpOp& op, const void* in, void* out, Site site) {
  Fiber& f = current_fiber();
  f.op = &op;
  f.in = in;
  f.out = out;
  suspend(f, State::AtWarpOp, site);
}

template <typename T>
const T& operand(const Fiber* f) {
  return *static_cast<const T*>(f->in);
}
template <typename T>
T& result(const Fiber* f) {
  return *static_cast<T*>(f->out);
}

// ldmatrix and mma need the whole warp (.aligned); the first live lane reports.
void require_full_warp(Fiber* const* lanes, const char* name) {
  const Fiber* const* live =
      std::find_if(lanes, lanes + kWarpSize, [](const Fiber* f) { return f != nullptr; });
  for (int i = 0; i < kWarpSize; ++i) {
    if (!lanes[i]) {
      throw Fault{*live, std::string(name) + " needs all 32 lanes of the warp, but lane " +
                             std::to_string(i) + " has exited or does not exist"};
    }
  }
}

struct ShflIn {
  uint32_t value;
  uint32_t b;
};

// shfl.sync.{idx,up,down,bfly}.b32 for a width of 32 (c = 0x1f, or 0 for .up),
// as the PTX ISA defines it: the source lane j comes from b[4:0]; a lane whose j
// falls outside the warp keeps its own value. Reading a lane that has exited
// is undefined there, an error here.
template <ShflMode Mode>
void run_shfl(const char* name, Fiber* const* lanes) {
  for (int i = 0; i < kWarpSize; ++i) {
    if (!lanes[i]) continue;
    const int b = static_cast<int>(operand<ShflIn>(lanes[i]).b & 31u);
    int j = 0;
    switch (Mode) {
      case ShflMode::Idx: j = b; break;
      case ShflMode::Up: j = i - b >= 0 ? i - b : i; break;
      case ShflMode::Down: j = i + b < kWarpSize ? i + b : i; break;
      case ShflMode::Bfly: j = i ^ b; break;
    }
    if (!lanes[j]) {
      throw Fault{lanes[i], std::string(name) + " reads lane " + std::to_string(j) +
                                ", which has exited or does not exist"};
    }
    result<uint32_t>(lanes[i]) = operand<ShflIn>(lanes[j]).value;
  }
}

constexpr WarpOp kShfl[] = {{"shfl.sync.idx", run_shfl<ShflMode::Idx>},
                            {"shfl.sync.up", run_shfl<ShflMode::Up>},
                            {"shfl.sync.down", run_shfl<ShflMode::Down>},
                            {"shfl.sync.bfly", run_shfl<ShflMode::Bfly>}};

// vote.sync over the lanes that have not exited.
template <VoteMode Mode>
void run_vote(const char*, Fiber* const* lanes) {
  uint32_t ballot = 0, live = 0;
  for (int i = 0; i < kWarpSize; ++i) {
    if (!lanes[i]) continue;
    live |= 1u << i;
    if (operand<bool>(lanes[i])) ballot |= 1u << i;
  }
  const uint32_t vote = Mode == VoteMode::Ballot ? ballot
                        : Mode == VoteMode::Any  ? ballot != 0
                                                 : ballot == live;
  for (int i = 0; i < kWarpSize; ++i) {
    if (lanes[i]) result<uint32_t>(lanes[i]) = vote;
  }
}

constexpr WarpOp kVote[] = {{"vote.sync.ballot", run_vote<VoteMode::Ballot>},
                            {"vote.sync.any", run_vote<VoteMode::Any>},
                            {"vote.sync.all", run_vote<VoteMode::All>}};

void run_syncwarp(const char*, Fiber* const*) {}
constexpr WarpOp kSyncwarp = {"syncwarp", run_syncwarp};

// PTX ISA, "Warp-level matrix load instruction: ldmatrix", .m8n8 .b16: lanes
// 8j..8j+7 give the addresses of rows 0..7 of matrix j (16 bytes each, 16-byte
// aligned, in shared memory). Register j of lane l holds the two elements of
// matrix j at row l/4, columns 2*(l%4) and 2*(l%4)+1, the first in the low
// half; with .trans, the same of the transposed matrix.
template <int Count, bool Trans>
void run_ldmatrix(const char* name, Fiber* const* lanes) {
  require_full_warp(lanes, name);
  uint16_t m[Count][8][8];
  for (int j = 0; j < Count; ++j) {
    for (int r = 0; r < 8; ++r) {
      const Fiber* lane = lanes[8 * j + r];
      const void* row = operand<const void*>(lane);
      try {
        check_aligned16(row, "row address");
        check_shared(row, 16, "row address");
      } catch (const std::exception& e) {
        throw Fault{lane, std::string(name) + ": " + e.what()};
      }
      std::memcpy(m[j][r], row, 16);
    }
  }
  for (int l = 0; l < kWarpSize; ++l) {
    const int r = l / 4, c = 2 * (l % 4);
    uint32_t* regs = &result<uint32_t>(lanes[l]);
    for (int j = 0; j < Count; ++j) {
      const uint32_t lo = Trans ? m[j][c][r] : m[j][r][c];
      const uint32_t hi = Trans ? m[j][c + 1][r] : m[j][r][c + 1];
      regs[j] = lo | hi << 16;
    }
  }
}

constexpr WarpOp kLdmatrix[2][3] = {{{"ldmatrix.x1", run_ldmatrix<1, false>},
                                     {"ldmatrix.x2", run_ldmatrix<2, false>},
                                     {"ldmatrix.x4", run_ldmatrix<4, false>}},
                                    {{"ldmatrix.x1.trans", run_ldmatrix<1, true>},
                                     {"ldmatrix.x2.trans", run_ldmatrix<2, true>},
                                     {"ldmatrix.x4.trans", run_ldmatrix<4, true>}}};

struct MmaIn {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

template <MmaType Type>
float decode(uint32_t half_or_tf32) {
  switch (Type) {
    case MmaType::BF16: return cpgdev::to_float(cpgdev::bf16{static_cast<uint16_t>(half_or_tf32)});
    case MmaType::F16: return cpgdev::to_float(cpgdev::f16{static_cast<uint16_t>(half_or_tf32)});
    case MmaType::TF32: return bits_float(half_or_tf32 & 0xffffe000u);  // only 19 bits are read
  }
  return 0;
}

// mma.sync.aligned.m16n8k{16,8}.row.col.f32.{bf16,f16,tf32}.{...}.f32: D = A B + C
// with A 16xK, B Kx8, C and D 16x8. Lane l holds the fragments below (PTX ISA,
// groupID g = l/4, threadID_in_group t = l%4). The products of the decoded
// inputs are exact in float (barring overflow and underflow); they are summed
// in float in k order onto C. Tensor cores sum in another order and precision:
// expect differences in the last bits, and compare with a tolerance.
template <MmaType Type>
void run_mma(const char* name, Fiber* const* lanes) {
  constexpr int K = Type == MmaType::TF32 ? 8 : 16;
  require_full_warp(lanes, name);
  float a[16][K], b[K][8], c[16][8];
  for (int l = 0; l < kWarpSize; ++l) {
    const MmaIn& x = operand<MmaIn>(lanes[l]);
    const int g = l / 4, t = l % 4;
    if (Type == MmaType::TF32) {
      // "Matrix Fragments for mma.m16n8k8", .tf32: one element per register.
      // A: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4). B: b0 (t, g), b1 (t+4, g).
      for (int r = 0; r < 4; ++r) a[g + 8 * (r % 2)][t + 4 * (r / 2)] = decode<Type>(x.a[r]);
      for (int r = 0; r < 2; ++r) b[t + 4 * r][g] = decode<Type>(x.b[r]);
    } else {
      // "Matrix Fragments for mma.m16n8k16 with floating point type": two elements
      // per register, the lower-numbered in the low half.
      // A: {a0,a1} (g, 2t..2t+1), {a2,a3} (g+8, 2t..), {a4,a5} (g, 2t+8..), {a6,a7} (g+8, 2t+8..).
      // B: {b0,b1} (2t..2t+1, g), {b2,b3} (2t+8..2t+9, g).
      for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
        a[row][col] = decode<Type>(x.a[r] & 0xffffu);
        a[row][col + 1] = decode<Type>(x.a[r] >> 16);
      }
      for (int r = 0; r < 2; ++r) {
        b[2 * t + 8 * r][g] = decode<Type>(x.b[r] & 0xffffu);
        b[2 * t + 8 * r + 1][g] = decode<Type>(x.b[r] >> 16);
      }
    }
    // C and D (both shapes): c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
    for (int r = 0; r < 4; ++r) c[g + 8 * (r / 2)][2 * t + r % 2] = x.c[r];
  }
  for (int l = 0; l < kWarpSize; ++l) {
    const int g = l / 4, t = l % 4;
    float* d = &result<float>(lanes[l]);
    for (int r = 0; r < 4; ++r) {
      const int i = g + 8 * (r / 2), j = 2 * t + r % 2;
      float acc = c[i][j];
      for (int k = 0; k < K; ++k) acc += a[i][k] * b[k][j];
      d[r] = acc;
    }
  }
}

constexpr WarpOp kMma[] = {{"mma.m16n8k16.bf16", run_mma<MmaType::BF16>},
                           {"mma.m16n8k16.f16", run_mma<MmaType::F16>},
                           {"mma.m16n8k8.tf32", run_mma<MmaType::TF32>}};

// A sanitized runtime checks only kernels compiled with it: one from another binary (the
// extension's uninstrumented copy, where a preloaded sanitized build failed to interpose
// the launchers; see scripts/sanitized_emulator.sh) is refused instead of running unchecked.
void check_instrumented(const std::string& name, const void* kernel_id) {
#if defined(CPG_EMU_ASAN)
  Dl_info kernel{}, self{};
  const void* here = reinterpret_cast<const void*>(&check_instrumented);
  if (dladdr(kernel_id, &kernel) && dladdr(here, &self) && kernel.dli_fbase != self.dli_fbase) {
    throw std::runtime_error(name + "the kernel is in " + kernel.dli_fname +
                             ", not in the sanitized emulator " + self.dli_fname);
  }
#else
  (void)name, (void)kernel_id;
#endif
}

}  // namespace

// ------------------------------------------------------------------- public

void set_seed(uint64_t seed) { g_seed = seed; }
uint64_t seed() { return g_seed; }

const dim3& thread_idx() { return current_fiber().tid; }
const dim3& block_idx() { return current_launch().block_idx; }
const dim3& block_dim() { return current_launch().block; }
const dim3& grid_dim() { return current_launch().grid; }

void set_max_dynamic_smem(const void* kernel_id, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxSharedBytes) {
    throw std::runtime_error("cpg emulator: set_max_dynamic_smem(" + std::to_string(bytes) +
                             "): a block has 0 to 227 KiB of shared memory");
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  g_max_dynamic_bytes[kernel_id] = static_cast<size_t>(bytes);
}

namespace {
bool g_launch_log_enabled = false;  // guarded by g_mutex, as is the log
std::vector<std::string> g_launch_log;
}  // namespace

void set_launch_log(bool enabled) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_launch_log_enabled = enabled;
  g_launch_log.clear();
}

std::vector<std::string> take_launch_log() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return std::exchange(g_launch_log, {});
}

void launch(const char* kernel_name, const char* file, const void* kernel_id, dim3 grid, dim3 block,
            size_t dynamic_smem_bytes, const std::function<void()>& body) {
  const std::string name = "cpg emulator: launch of " + std::string(kernel_name) + ": ";
  if (t_launch) throw std::runtime_error(name + "launches from device code are not supported");
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      grid.x == 0 || grid.x > 0x7fffffffu || grid.y == 0 || grid.y > 65535 || grid.z == 0 ||
      grid.z > 65535) {
    throw std::runtime_error(name + "invalid configuration: grid " + str(grid) + ", block " +
                             str(block));
  }

  check_instrumented(name, kernel_id);
  std::lock_guard<std::mutex> lock(g_mutex);
#if defined(CPG_EMU_ASAN)
  ++cpg_emu_sanitized_launches;
#endif
  if (g_launch_log_enabled) {
    const std::string path(file);
    g_launch_log.push_back(path.substr(path.find_last_of("/\\") + 1) + ":" + kernel_name);
  }
  const auto attr = g_max_dynamic_bytes.find(kernel_id);
  const size_t max_dynamic =
      attr == g_max_dynamic_bytes.end() ? kDefaultMaxDynamicBytes : attr->second;
  if (dynamic_smem_bytes > max_dynamic) {
    throw std::runtime_error(name + std::to_string(dynamic_smem_bytes) +
                             " bytes of dynamic shared memory exceed the kernel's limit of " +
                             std::to_string(max_dynamic) + " (see set_max_dynamic_smem)");
  }

  Launch l;
  l.kernel = kernel_name;
  l.body = &body;
  l.grid = grid;
  l.block = block;
  l.dynamic_bytes = dynamic_smem_bytes;
  l.fibers.resize(threads);
  struct Current {  // t_launch for the launch's duration, also when it throws
    explicit Current(Launch* l) { t_launch = l; }
    ~Current() {
      t_launch = nullptr;
      t_fiber = nullptr;
    }
  } current(&l);
  Rng rng(seed());
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        l.block_idx = dim3(x, y, z);
        run_block(l, rng);
      }
    }
  }
}

void* shared_array(const void* key, size_t bytes, size_t align) {
  Launch& l = current_launch();
  for (const SharedDecl& d : l.shared_decls) {
    if (d.key == key) return g_arena + d.offset;
  }
  const size_t a = std::max<size_t>(align, 16);
  const size_t offset = (l.shared_used + a - 1) / a * a;
  if (offset + bytes > kMaxSharedBytes) {
    throw std::runtime_error("the block's shared memory exceeds 227 KiB");
  }
  std::memset(g_arena + offset, 0xff, bytes);
  l.shared_decls.push_back({key, offset});
  l.shared_used = offset + bytes;
  return g_arena + offset;
}

void* dynamic_shared(size_t* bytes) {
  *bytes = current_launch().dynamic_bytes;
  return g_arena;
}

void out_of_bounds(const char* name, std::ptrdiff_t index, std::ptrdiff_t size) {
  throw std::runtime_error("shared array '" + std::string(name) + "': index " +
                           std::to_string(index) + " is out of bounds [0, " + std::to_string(size) +
                           ")");
}

void syncthreads(Site site) { suspend(current_fiber(), State::AtBarrier, site); }

void syncwarp(Site site) { warp_op(kSyncwarp, nullptr, nullptr, site); }

uint32_t shfl(ShflMode mode, uint32_t value, uint32_t b, Site site) {
  const ShflIn x{value, b};
  uint32_t result;
  warp_op(kShfl[static_cast<int>(mode)], &x, &result, site);
  return result;
}

uint32_t vote(VoteMode mode, bool p, Site site) {
  uint32_t result;
  warp_op(kVote[static_cast<int>(mode)], &p, &result, site);
  return result;
}

void check_vector_access(const void* p) {
  current_fiber();  // device code only
  check_aligned16(p, "16-byte access at");
  if (in_arena(p)) check_shared(p, 16, "16-byte access at");
}

void check_word_access(const void* p) {
  current_fiber();  // device code only
  if (reinterpret_cast<uintptr_t>(p) % 4 != 0) {
    throw std::runtime_error("4-byte access at " + hex(p) + " is not 4-byte aligned");
  }
  if (in_arena(p)) check_shared(p, 4, "4-byte access at");
}

void cp_async16(void* dst, const void* src, bool valid) {
  Fiber& f = current_fiber();
  check_aligned16(dst, "cp.async destination");
  check_shared(dst, 16, "cp.async destination");
  if (valid) {
    check_aligned16(src, "cp.async source");
    if (in_arena(src)) {
      throw std::runtime_error("cp.async source " + hex(src) + " is shared memory, not global");
    }
  }
  f.open_group.push_back({dst, valid ? src : nullptr, 16});
}

void cp_async4(void* dst, const void* src, bool valid) {
  Fiber& f = current_fiber();
  auto aligned4 = [](const void* p, const char* what) {
    if (reinterpret_cast<uintptr_t>(p) % 4 != 0) {
      throw std::runtime_error(std::string(what) + " " + hex(p) + " is not 4-byte aligned");
    }
  };
  aligned4(dst, "cp.async destination");
  check_shared(dst, 4, "cp.async destination");
  if (valid) {
    aligned4(src, "cp.async source");
    if (in_arena(src)) {
      throw std::runtime_error("cp.async source " + hex(src) + " is shared memory, not global");
    }
  }
  f.open_group.push_back({dst, valid ? src : nullptr, 4});
}

void cp_async_commit() {
  Fiber& f = current_fiber();
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void cp_async_wait(int n) {
  Fiber& f = current_fiber();
  while (f.committed.size() > static_cast<size_t>(n)) {
    perform(f.committed.front());
    f.committed.pop_front();
  }
}

void ldmatrix(int count, bool trans, uint32_t* regs, const void* row, Site site) {
  const int variant = count == 1 ? 0 : count == 2 ? 1 : 2;
  warp_op(kLdmatrix[trans][variant], &row, regs, site);
}

void mma(MmaType type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
         const float (&c)[4], Site site) {
  MmaIn x;
  std::memcpy(x.a, a, sizeof x.a);
  std::memcpy(x.b, b, sizeof x.b);
  std::memcpy(x.c, c, sizeof x.c);
  float result[4];
  warp_op(kMma[static_cast<int>(type)], &x, result, site);
  std::memcpy(d, result, sizeof result);
}

}  // namespace emu
}  // namespace cpg
