// A C++ consumer of libcpg_kernels: the `cpg` ops are reached through torch's dispatcher
// by name, as any libtorch program would, and checked against dense masking.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

template <typename Signature>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace

int main() {
  torch::manual_seed(0);
  const int64_t N = 7, K = 45, M = 3;  // K crosses a 32-bit word boundary
  const at::Tensor w = torch::randn({N, K});
  const at::Tensor keep = torch::rand({N, K}) > 0.5;
  const at::Tensor x = torch::randn({M, K});
  const at::Tensor bias = torch::randn({N});

  const at::Tensor bits = op<at::Tensor(const at::Tensor&)>("cpg::pack_bits").call(keep);
  expect(bits.sizes() == at::IntArrayRef({N, 2}) && bits.scalar_type() == at::kInt,
         "pack_bits gives ceil(K/32) int32 words per row");
  const at::Tensor back =
      op<at::Tensor(const at::Tensor&, int64_t)>("cpg::unpack_bits").call(bits, K);
  expect(back.equal(keep), "unpack_bits inverts pack_bits");

  const at::Tensor masked =
      op<at::Tensor(const at::Tensor&, const at::Tensor&)>("cpg::apply_bits").call(w, bits);
  expect(masked.equal(w * keep), "apply_bits is the dense masked copy");

  using Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, int64_t);
  const at::Tensor y = op<Linear>("cpg::masked_linear").call(x, w, bits, bias, {}, {}, 0);
  const at::Tensor ref = at::linear(x, w * keep, bias);
  expect(y.allclose(ref, 1e-5, 1e-6), "masked_linear matches dense masking");

  bool raised = false;
  try {
    op<Linear>("cpg::masked_linear").call(x.narrow(1, 0, K - 1), w, bits, bias, {}, {}, 0);
  } catch (const c10::Error&) {
    raised = true;
  }
  expect(raised, "a wrong input width raises a c10::Error");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
