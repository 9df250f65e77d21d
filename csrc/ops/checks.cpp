#include "ops/checks.h"

namespace cpg::ops {

static std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

MatrixShape matrix_shape(const at::Tensor& weight) {
  TORCH_CHECK_VALUE(weight.dim() >= 2, "weight: expected at least 2 dimensions, got shape ",
                    shape_str(weight.sizes()));
  int64_t K = 1;
  for (int64_t d = 1; d < weight.dim(); ++d) K *= weight.size(d);
  return {weight.size(0), K};
}

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), name,
                    ": expected a floating-point tensor (float32, float16, bfloat16 or float64), "
                    "got ",
                    t.scalar_type());
}

void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name,
                      const char* ref_name) {
  TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ",
                    ref.scalar_type(), " (the dtype of ", ref_name, "), got ", t.scalar_type());
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                       const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, ": expected a tensor on ", ref.device(),
                    " (the device of ", ref_name, "), got one on ", t.device());
}

void check_bits(const at::Tensor& bits, const at::Tensor& weight, MatrixShape s, int64_t tasks) {
  TORCH_CHECK_VALUE(bits.scalar_type() == at::kInt, "bits: expected dtype int32, got ",
                    bits.scalar_type());
  check_same_device(bits, weight, "bits", "weight");
  // Compared in place: this runs on every call, and a vector would allocate.
  const at::IntArrayRef have = bits.sizes();
  const size_t lead = tasks >= 0 ? 1 : 0;
  const bool ok = have.size() == lead + 2 && (lead == 0 || have[0] == tasks) && have[lead] == s.N &&
                  have[lead + 1] == s.words();
  if (ok) return;
  std::vector<int64_t> want = {s.N, s.words()};
  if (tasks >= 0) want.insert(want.begin(), tasks);
  TORCH_CHECK_VALUE(false, "bits: expected shape ", shape_str(want), " (ceil(", s.K,
                    "/32) words per row for a weight of shape ", shape_str(weight.sizes()),
                    "), got ", shape_str(have));
}

void check_owner(const at::Tensor& owner, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(owner.scalar_type() == at::kByte, "owner: expected dtype uint8, got ",
                    owner.scalar_type());
  check_same_device(owner, weight, "owner", "weight");
  TORCH_CHECK_VALUE(owner.sizes() == weight.sizes(), "owner: expected shape ",
                    shape_str(weight.sizes()), " (the weight's), got ", shape_str(owner.sizes()));
}

void check_mask(const at::Tensor& mask, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kFloat, "mask: expected dtype float32, got ",
                    mask.scalar_type());
  check_same_device(mask, weight, "mask", "weight");
  TORCH_CHECK_VALUE(mask.sizes() == weight.sizes(), "mask: expected shape ",
                    shape_str(weight.sizes()), " (the weight's), got ", shape_str(mask.sizes()));
}

void check_task(int64_t task) {
  TORCH_CHECK_VALUE(task >= 1 && task <= cpg::kMaxTask, "task: expected an id in 1..",
                    cpg::kMaxTask, " (owner is uint8 and 0 means free), got ", task);
}

void check_grad_context(const at::Tensor& weight, const std::optional<at::Tensor>& owner,
                        const std::optional<at::Tensor>& mask, int64_t task) {
  if (owner) {
    check_owner(*owner, weight);
    check_task(task);
  } else {
    TORCH_CHECK_VALUE(!mask, "mask: a picking mask needs owner and task (the training form)");
  }
  if (mask) check_mask(*mask, weight);
}

bool f32_weight_form(const at::Tensor& x, const at::Tensor& weight) {
  return weight.scalar_type() == at::kFloat &&
         (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16);
}

void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& ref, int64_t N,
                const char* ref_name) {
  if (!bias) return;
  check_same_dtype(*bias, ref, "bias", ref_name);
  check_same_device(*bias, ref, "bias", ref_name);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, "bias: expected shape [", N, "], got ",
                    shape_str(bias->sizes()));
}

}  // namespace cpg::ops
