// The conv2d ops: y = conv2d(x, W.bits) (+ bias), its input gradient and its
// multi-task form; their checks, their routing to the CPU path (chunked), the
// CUDA kernels or the emulator, their autograd formulas and their registration.
#include "ops/conv_ops.h"

#include <c10/util/accumulate.h>

#include "core/conv_shape.h"
#include "core/stream_limits.h"
#include "cpu/precision.h"
#include "ops/autograd_support.h"
#include "ops/backend.h"
#include "ops/checks.h"
#include "ops/chunking.h"
#include "ops/gemm_path.h"
#include "ops/mask_ops.h"
#include "ops/registration.h"

namespace cpg::ops {

namespace {

struct ConvParams {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
};

ConvParams check_conv_params(at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK_VALUE(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1,
                    "stride: expected two positive ints, got ", stride);
  TORCH_CHECK_VALUE(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
                    "padding: expected two non-negative ints, got ", padding);
  TORCH_CHECK_VALUE(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1,
                    "dilation: expected two positive ints, got ", dilation);
  TORCH_CHECK_VALUE(groups >= 1, "groups: expected a positive int, got ", groups);
  return {stride.vec(), padding.vec(), dilation.vec(), groups};
}

// bits: [N, words], or [tasks, N, words] when tasks >= 0.
void check_conv_weight(const at::Tensor& weight, const at::Tensor& bits, int64_t groups,
                       int64_t tasks = -1) {
  check_floating(weight, "weight");
  TORCH_CHECK_VALUE(weight.dim() == 4,
                    "weight: expected a 4-D conv2d weight [out, in/groups, kh, kw], got ",
                    weight.dim(), " dimensions");
  TORCH_CHECK_VALUE(weight.size(0) % groups == 0, "weight: out_channels ", weight.size(0),
                    " must be divisible by groups = ", groups);
  check_bits(bits, weight, matrix_shape(weight), tasks);
}

struct OutSize {
  int64_t Ho, Wo;
};

// x [images, channels, height, width] against the weight: its channels, and
// an output of at least one pixel.
OutSize check_conv_input(const at::Tensor& x, const at::Tensor& weight, const ConvParams& p) {
  const int64_t groups = p.groups;
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1) * groups, "x: expected ", weight.size(1) * groups,
                    " input channels (weight in/groups = ", weight.size(1), ", groups = ", groups,
                    "), got ", x.size(1));
  const int64_t Ho =
      cpg::conv_out_size(x.size(2), weight.size(2), p.stride[0], p.padding[0], p.dilation[0]);
  const int64_t Wo =
      cpg::conv_out_size(x.size(3), weight.size(3), p.stride[1], p.padding[1], p.dilation[1]);
  TORCH_CHECK_VALUE(Ho >= 1 && Wo >= 1, "x: input of spatial size ", x.size(2), "x", x.size(3),
                    " is smaller than the dilated kernel");
  return {Ho, Wo};
}

// A tile of output channels that one library call handles: whole groups when a
// group is small, or a slice of one group's channels when it is large.
struct ConvTile {
  int64_t n0, rows;      // output channels [n0, n0 + rows)
  int64_t c0, channels;  // input channels they read
  int64_t groups;        // groups inside the tile
};

template <typename Fn>
void for_each_tile(const at::Tensor& weight, int64_t groups, Fn&& fn) {
  const int64_t N = weight.size(0), per_group_out = N / groups;
  const int64_t per_group_in = weight.size(1);
  const int64_t step = chunk_rows(weight.numel() / std::max<int64_t>(N, 1));
  if (per_group_out <= step) {
    const int64_t groups_per_tile = std::max<int64_t>(1, step / per_group_out);
    for (int64_t g0 = 0; g0 < groups; g0 += groups_per_tile) {
      const int64_t g = std::min(groups_per_tile, groups - g0);
      fn(ConvTile{g0 * per_group_out, g * per_group_out, g0 * per_group_in, g * per_group_in, g});
    }
  } else {
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t r0 = 0; r0 < per_group_out; r0 += step) {
        const int64_t rows = std::min(step, per_group_out - r0);
        fn(ConvTile{g * per_group_out + r0, rows, g * per_group_in, per_group_in, 1});
      }
    }
  }
}

// Whether the whole weight fits one decoded tile (the common case): then the
// library call writes the result directly, with no copy into a slice.
bool is_single_tile(const at::Tensor& weight) {
  return weight.size(0) <= chunk_rows(weight.numel() / std::max<int64_t>(weight.size(0), 1));
}

// The tile's weights, decoded into dtype dt.
at::Tensor decode_tile(const at::Tensor& w, const at::Tensor& w2d, const at::Tensor& bits,
                       const ConvTile& t, at::ScalarType dt) {
  return decode_rows(w2d, bits, t.n0, t.rows, dt).view({t.rows, w.size(1), w.size(2), w.size(3)});
}

// The chunked path's library dtype: fp32 for fp16/bf16 CPU tensors where the
// CPU has no native 16-bit dot products (cpu/precision.h), else their own.
at::ScalarType library_dtype(const at::Tensor& t) {
  return backend_for(t) == Backend::CPU ? cpu::library_dtype(t.scalar_type()) : t.scalar_type();
}

// ---------------------------------------------------------- fused kernels
//
// Which path runs a conv: on the CUDA and emu backends, fp32 / fp16 / bf16
// run the fused implicit-GEMM kernels (csrc/cuda/masked_conv.cu; they take
// every shape, stride, padding, dilation and group count) up to the library
// path's threshold of output pixels (gemm_path.h), beyond it the chunked path
// below; the CPU backend and float64 anywhere always take the chunked path.

// The conv switch of torch's TF32 settings (torch.backends.cudnn.allow_tf32).
bool allow_tf32() { return at::globalContext().allowTF32CuDNN(at::Float32Op::CONV); }

// Whether a conv of `images` images of Ho x Wo outputs on t's backend runs the
// fused kernels, or decodes the weight for cuDNN (the library path,
// gemm_path.h); the GEMM rows are the output pixels.
bool fused_conv(const at::Tensor& t, int64_t images, int64_t Ho, int64_t Wo) {
  return use_fused_kernels(t) && gemm_path(*kernel_dtype(t.scalar_type()), allow_tf32(),
                                           images * Ho * Wo) == GemmPath::Fused;
}

// The library's conv (or, transposed, its input gradient) on a decoded tile,
// with cuDNN's benchmark mode off and deterministic algorithms on whatever the
// global settings, so that the same call gives the same bits every time.
at::Tensor library_conv(const at::Tensor& x, const at::Tensor& w,
                        const std::optional<at::Tensor>& bias, const ConvParams& p, int64_t groups,
                        bool transposed, at::IntArrayRef output_padding) {
  return at::_convolution(x, w, bias, p.stride, p.padding, p.dilation, transposed, output_padding,
                          groups, /*benchmark=*/false, /*deterministic=*/true,
                          /*cudnn_enabled=*/true, allow_tf32());
}

// Exactly the rule of the ops' fake kernels (cpg_kernels/_ops.py): an
// activation in channels_last that is not also plain contiguous (size-1
// dimensions make a tensor both) gives a channels_last result. The kernels
// take both layouts directly; any other strides are made contiguous first.
at::MemoryFormat layout_of(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

cpg::ConvShape conv_shape(at::IntArrayRef input_size, const at::Tensor& w, const ConvParams& p) {
  return {input_size[0], input_size[1], input_size[2], input_size[3],  // batch, C, H, W
          w.size(0),     w.size(2),     w.size(3),                     // N, kh, kw
          p.stride[0],   p.stride[1],   p.padding[0],  p.padding[1],
          p.dilation[0], p.dilation[1], p.groups};
}

// w and bits contiguous.
at::Tensor fused_conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bits,
                        const std::optional<at::Tensor>& bias, const ConvParams& p) {
  const at::MemoryFormat fmt = layout_of(x);
  const at::Tensor xc = x.contiguous(fmt);
  const cpg::ConvShape s = conv_shape(x.sizes(), w, p);
  at::Tensor y = at::empty({s.batch, s.N, s.Ho(), s.Wo()}, x.options().memory_format(fmt));
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
  CPG_RUN_LAUNCHER(backend_for(x), x, masked_conv2d, *kernel_dtype(x.scalar_type()), xc.data_ptr(),
                   w.data_ptr(), bits.data_ptr<int32_t>(),
                   bias_c.defined() ? bias_c.data_ptr() : nullptr, y.data_ptr(), s,
                   fmt == at::MemoryFormat::ChannelsLast, allow_tf32());
  return y;
}

at::Tensor fused_conv2d_grad_input(const at::Tensor& grad_out, const at::Tensor& w,
                                   const at::Tensor& bits, at::IntArrayRef input_size,
                                   const ConvParams& p) {
  const at::MemoryFormat fmt = layout_of(grad_out);
  const at::Tensor dy = grad_out.contiguous(fmt);
  at::Tensor dx = at::empty(input_size, grad_out.options().memory_format(fmt));
  CPG_RUN_LAUNCHER(backend_for(dy), dy, masked_conv2d_grad_input, *kernel_dtype(dy.scalar_type()),
                   dy.data_ptr(), w.data_ptr(), bits.data_ptr<int32_t>(), dx.data_ptr(),
                   conv_shape(input_size, w, p), fmt == at::MemoryFormat::ChannelsLast,
                   allow_tf32());
  return dx;
}

// The forward's fp32-weight form (ops/checks.h) where a CUDA or emulated
// weight stream takes it (masked_conv2d_f32_weight: pointwise and unfolded
// late-layer convs); false leaves y to the caller, which casts the weight.
bool f32_weight_conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bits,
                       const std::optional<at::Tensor>& bias, const ConvParams& p, at::Tensor& y) {
  const at::MemoryFormat fmt = layout_of(x);
  const at::Tensor xc = x.contiguous(fmt);
  const cpg::ConvShape s = conv_shape(x.sizes(), w, p);
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  const cpg::DType dt = *kernel_dtype(x.scalar_type());
  if (!CPG_QUERY_LAUNCHER(backend_for(x), x, masked_conv2d_f32_weight_supported, dt, xc.data_ptr(),
                          w.data_ptr(), s, channels_last)) {
    return false;
  }
  y = at::empty({s.batch, s.N, s.Ho(), s.Wo()}, x.options().memory_format(fmt));
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
  CPG_RUN_LAUNCHER(backend_for(x), x, masked_conv2d_f32_weight, dt, xc.data_ptr(),
                   w.data_ptr<float>(), bits.data_ptr<int32_t>(),
                   bias_c.defined() ? bias_c.data_ptr() : nullptr, y.data_ptr(), s, channels_last);
  return true;
}

// The input gradient's fp32-weight form where a CUDA or emulated weight
// stream takes it (masked_conv2d_grad_input_f32_weight: pointwise and
// unfolded late-layer convs, as the forward's); false leaves dx to the caller,
// which casts the weight.
bool f32_weight_conv2d_grad_input(const at::Tensor& grad_out, const at::Tensor& w,
                                  const at::Tensor& bits, at::IntArrayRef input_size,
                                  const ConvParams& p, at::Tensor& dx) {
  const at::MemoryFormat fmt = layout_of(grad_out);
  const at::Tensor dy = grad_out.contiguous(fmt);
  const cpg::ConvShape s = conv_shape(input_size, w, p);
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  const cpg::DType dt = *kernel_dtype(dy.scalar_type());
  if (!CPG_QUERY_LAUNCHER(backend_for(dy), dy, masked_conv2d_grad_input_f32_weight_supported, dt,
                          dy.data_ptr(), w.data_ptr(), s, channels_last)) {
    return false;
  }
  dx = at::empty(input_size, grad_out.options().memory_format(fmt));
  CPG_RUN_LAUNCHER(backend_for(dy), dy, masked_conv2d_grad_input_f32_weight, dt, dy.data_ptr(),
                   w.data_ptr<float>(), bits.data_ptr<int32_t>(), dx.data_ptr(), s, channels_last);
  return true;
}

}  // namespace

at::Tensor masked_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         const std::optional<at::Tensor>& owner,
                         const std::optional<at::Tensor>& mask, int64_t task) {
  const ConvParams p = check_conv_params(stride, padding, dilation, groups);
  check_conv_weight(weight, bits, groups);
  const bool f32_weight = f32_weight_form(x, weight);
  if (!f32_weight) check_same_dtype(x, weight, "x", "weight");
  check_same_device(x, weight, "x", "weight");
  check_grad_context(weight, owner, mask, task);
  check_bias(bias, f32_weight ? x : weight, weight.size(0), f32_weight ? "x" : "weight");
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D input [batch, channels, height, width], got ",
                    x.dim(), " dimensions");
  const auto [Ho, Wo] = check_conv_input(x, weight, p);
  at::Tensor w = weight.contiguous();
  const at::Tensor b = bits.contiguous();
  const bool fused = fused_conv(x, x.size(0), Ho, Wo);
  if (f32_weight) {
    at::Tensor y;
    if (fused && x.numel() > 0 && f32_weight_conv2d(x, w, b, bias, p, y)) return y;
    w = w.to(x.scalar_type());
  }
  if (fused) return fused_conv2d(x, w, b, bias, p);
  const at::Tensor w2d = w.view({w.size(0), -1});
  const at::ScalarType dt = library_dtype(x);  // fp32 for 16-bit x on some CPUs
  const at::Tensor xc = x.to(dt);
  auto conv_tile = [&](const ConvTile& t) {
    const std::optional<at::Tensor> tile_bias =
        bias ? std::optional<at::Tensor>(bias->narrow(0, t.n0, t.rows).to(dt)) : std::nullopt;
    return library_conv(xc.narrow(1, t.c0, t.channels), decode_tile(w, w2d, b, t, dt), tile_bias, p,
                        t.groups, /*transposed=*/false, {0, 0});
  };
  // ATen picks its own layout where size-1 dimensions make x ambiguous; the
  // result takes layout_of's, as on the fused path and in the fake kernel.
  const at::MemoryFormat fmt = layout_of(x);
  if (x.size(0) == 0 || w.size(0) == 0) {
    return at::empty({x.size(0), w.size(0), Ho, Wo}, x.options().memory_format(fmt));
  }
  if (is_single_tile(w)) {
    return conv_tile(ConvTile{0, w.size(0), 0, x.size(1), groups})
        .to(x.scalar_type())
        .contiguous(fmt);
  }
  at::Tensor y = at::empty({x.size(0), w.size(0), Ho, Wo}, x.options().memory_format(fmt));
  for_each_tile(w, groups,
                [&](const ConvTile& t) { y.narrow(1, t.n0, t.rows).copy_(conv_tile(t)); });
  return y;
}

at::Tensor masked_conv2d_multitask(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& bits, const std::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups) {
  const ConvParams p = check_conv_params(stride, padding, dilation, groups);
  TORCH_CHECK_VALUE(x.dim() == 5,
                    "x: expected a 5-D input [T, batch, channels, height, width] "
                    "(tasks first), got ",
                    x.dim(), " dimensions");
  const int64_t T = x.size(0), B = x.size(1), N = weight.size(0);
  check_conv_weight(weight, bits, groups, T);
  check_same_dtype(x, weight, "x", "weight");
  check_same_device(x, weight, "x", "weight");
  check_bias(bias, weight, N);
  // The T * B images as one batch; a view where x's layout allows.
  const at::Tensor images = x.flatten(0, 1);
  const auto [Ho, Wo] = check_conv_input(images, weight, p);
  const at::MemoryFormat fmt = layout_of(images);  // as masked_conv2d, per image
  at::Tensor y = at::empty({T * B, N, Ho, Wo}, x.options().memory_format(fmt));
  if (y.numel() > 0) {
    const at::Tensor w = weight.contiguous(), b = bits.contiguous();
    if (use_fused_kernels(images)) {
      const at::Tensor xc = images.contiguous(fmt);
      const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
      cpg::ConvShape s = conv_shape(images.sizes(), w, p);
      s.batch = B;  // images per task
      CPG_RUN_LAUNCHER(backend_for(xc), xc, masked_conv2d_multitask, *kernel_dtype(x.scalar_type()),
                       xc.data_ptr(), w.data_ptr(), b.data_ptr<int32_t>(),
                       bias_c.defined() ? bias_c.data_ptr() : nullptr, y.data_ptr(), T, s,
                       fmt == at::MemoryFormat::ChannelsLast, allow_tf32());
    } else {
      for (int64_t t = 0; t < T; ++t) {
        y.narrow(0, t * B, B)
            .copy_(masked_conv2d(x.select(0, t), w, b.select(0, t), bias, stride, padding, dilation,
                                 groups, std::nullopt, std::nullopt, 0));
      }
    }
  }
  return y.view({T, B, N, Ho, Wo});
}

at::Tensor masked_conv2d_grad_input(const at::Tensor& grad_out, const at::Tensor& weight,
                                    const at::Tensor& bits, at::IntArrayRef input_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups) {
  const ConvParams p = check_conv_params(stride, padding, dilation, groups);
  check_conv_weight(weight, bits, groups);
  const bool f32_weight = f32_weight_form(grad_out, weight);
  if (!f32_weight) check_same_dtype(grad_out, weight, "grad_out", "weight");
  check_same_device(grad_out, weight, "grad_out", "weight");
  TORCH_CHECK_VALUE(input_size.size() == 4 && input_size[1] == weight.size(1) * groups,
                    "input_size: expected [batch, ", weight.size(1) * groups,
                    ", height, width], got ", input_size);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == input_size[0] &&
                        grad_out.size(1) == weight.size(0),
                    "grad_out: expected shape [", input_size[0], ", ", weight.size(0),
                    ", Ho, Wo], got ", grad_out.sizes());
  // conv_transpose2d needs the output padding that recovers the input size.
  std::vector<int64_t> out_pad(2);
  for (int d = 0; d < 2; ++d) {
    const int64_t k = weight.size(2 + d);
    const int64_t expect =
        cpg::conv_out_size(input_size[2 + d], k, p.stride[d], p.padding[d], p.dilation[d]);
    TORCH_CHECK_VALUE(grad_out.size(2 + d) == expect, "grad_out: expected spatial size ", expect,
                      " in dimension ", 2 + d, ", got ", grad_out.size(2 + d));
    out_pad[d] = input_size[2 + d] -
                 ((expect - 1) * p.stride[d] - 2 * p.padding[d] + p.dilation[d] * (k - 1) + 1);
  }
  at::Tensor w = weight.contiguous();
  const at::Tensor b = bits.contiguous();
  const bool fused = fused_conv(grad_out, grad_out.size(0), grad_out.size(2), grad_out.size(3));
  if (f32_weight) {
    at::Tensor dx;
    if (fused && grad_out.numel() > 0 && c10::multiply_integers(input_size) > 0 &&
        f32_weight_conv2d_grad_input(grad_out, w, b, input_size, p, dx)) {
      return dx;
    }
    w = w.to(grad_out.scalar_type());
  }
  if (fused) return fused_conv2d_grad_input(grad_out, w, b, input_size, p);
  const at::Tensor w2d = w.view({w.size(0), -1});
  const at::ScalarType dt = library_dtype(grad_out);  // fp32 for 16-bit dy on some CPUs
  const at::Tensor dyc = grad_out.to(dt);
  auto grad_tile = [&](const ConvTile& t) {
    return library_conv(dyc.narrow(1, t.n0, t.rows), decode_tile(w, w2d, b, t, dt), std::nullopt, p,
                        t.groups, /*transposed=*/true, out_pad);
  };
  const at::MemoryFormat fmt = layout_of(grad_out);  // as in masked_conv2d
  if (grad_out.numel() == 0 || c10::multiply_integers(input_size) == 0) {
    return at::zeros(input_size, grad_out.options().memory_format(fmt));
  }
  if (is_single_tile(w)) {
    return grad_tile(ConvTile{0, w.size(0), 0, input_size[1], groups})
        .to(grad_out.scalar_type())
        .contiguous(fmt);
  }
  // The tiles split the reduction over output channels: 16-bit tiles' results
  // are summed in fp32, not in 16 bits.
  const bool narrow = dt == at::kHalf || dt == at::kBFloat16;
  at::Tensor dx =
      at::zeros(input_size, grad_out.options().dtype(narrow ? at::kFloat : dt).memory_format(fmt));
  for_each_tile(w, groups,
                [&](const ConvTile& t) { dx.narrow(1, t.c0, t.channels).add_(grad_tile(t)); });
  return dx.to(grad_out.scalar_type());
}

// ---------------------------------------------------------------- autograd

namespace {

// input_size is SymInt[] in the schema (its fake kernel sees symbolic sizes);
// the kernel itself takes plain ints.
using ConvGradInput = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 c10::SymIntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                 at::IntArrayRef, int64_t);

const auto& conv_op() { return op<&masked_conv2d>("cpg::masked_conv2d"); }
const auto& conv_grad_input_op() {
  return op<&masked_conv2d_grad_input, ConvGradInput>("cpg::masked_conv2d_grad_input");
}
const auto& conv_multitask_op() {
  return op<&masked_conv2d_multitask>("cpg::masked_conv2d_multitask");
}

// stride, padding, dilation and groups saved as one int list for backward.
std::vector<int64_t> pack_conv(at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  std::vector<int64_t> p(stride.begin(), stride.end());
  p.insert(p.end(), padding.begin(), padding.end());
  p.insert(p.end(), dilation.begin(), dilation.end());
  p.push_back(groups);
  return p;
}

struct ConvArgs {
  std::vector<int64_t> packed;
  at::IntArrayRef stride() const { return at::IntArrayRef(packed).slice(0, 2); }
  at::IntArrayRef padding() const { return at::IntArrayRef(packed).slice(2, 2); }
  at::IntArrayRef dilation() const { return at::IntArrayRef(packed).slice(4, 2); }
  int64_t groups() const { return packed[6]; }
};

// dL/dW_eff of a conv from the library, in dy's dtype: only the weight's shape
// matters here (an fp32 weight beside 16-bit dy and x stands in as an
// uninitialized 16-bit tensor of its shape, in x's memory format, which the
// library would otherwise copy it into: it takes one dtype).
at::Tensor conv_weight_grad(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                            const ConvArgs& c) {
  const at::Tensor shape_of_w =
      weight.scalar_type() == x.scalar_type()
          ? weight
          : at::empty(weight.sizes(), x.options().memory_format(x.suggest_memory_format()));
  return std::get<1>(at::convolution_backward(dy, x, shape_of_w, std::nullopt, c.stride(),
                                              c.padding(), c.dilation(), false, {0, 0}, c.groups(),
                                              {false, true, false}));
}

// Arguments: x 0, weight 1, bits 2, bias 3, stride 4, padding 5, dilation 6,
// groups 7, owner 8, mask 9, task 10.
struct MaskedConv2d : torch::autograd::Function<MaskedConv2d> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            Constant bits, const OptTensor& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            OptConstant owner, const OptTensor& mask, int64_t task) {
    ctx->save_for_backward({x, weight, bits.tensor, owner.tensor.value_or(at::Tensor())});
    ctx->saved_data["task"] = task;
    ctx->saved_data["conv"] = pack_conv(stride, padding, dilation, groups);
    ctx->saved_data["present"] = Present({true, true, false, bias.has_value(), false, false, false,
                                          false, false, mask.has_value()})
                                     .bits();
    Below below;
    return conv_op().call(x, weight, bits.tensor, bias, stride, padding, dilation, groups,
                          owner.tensor, mask, task);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Present present(ctx->saved_data["present"].toInt());
    const bool need_x = present.needs_grad(ctx, 0), need_w = present.needs_grad(ctx, 1),
               need_b = present.needs_grad(ctx, 3), need_m = present.needs_grad(ctx, 9);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bits = saved[2], &owner = saved[3];
    const ConvArgs c{ctx->saved_data["conv"].toIntVector()};
    const at::Tensor& dy = grads[0];
    variable_list out(11);
    {
      Below below;
      if (need_x) {
        out[0] = conv_grad_input_op().call(dy, weight, bits, x.sym_sizes(), c.stride(), c.padding(),
                                           c.dilation(), c.groups());
      }
      if (need_w || need_m) {
        auto [dw, dm] = weight_and_mask_grads(conv_weight_grad(dy, x, weight, c), weight, bits,
                                              owner, ctx->saved_data["task"].toInt(), need_m);
        // The fp32-weight form without owners: the bits applied in 16 bits, widened.
        if (need_w) out[1] = dw.scalar_type() == weight.scalar_type() ? dw : dw.to(weight.dtype());
        out[9] = std::move(dm);
      }
      if (need_b) out[3] = dy.sum({0, 2, 3});
    }
    return once_differentiable(std::move(out), {dy, x, weight}, "cpg::masked_conv2d");
  }
};

// Whether a training step in the fp32-weight form (16-bit x, fp32 weight:
// autocast's) keeps the fp32 weight: where the weight streams' mixed forms
// take the forward and the input gradient (one group, 1 to kStreamMaxRows
// output pixels over the batch, the unfolded path's or a pointwise conv's, C_out
// and C_in taps whole 16-byte vectors of 16-bit elements, past the direct
// kernel's 8 columns) on the kernel backends. They read the fp32 weight and
// round it in registers, the gradient epilogue writes dW in fp32, and there is
// no weight-sized cast (the ops cast where their own kernels do not take a
// problem). Elsewhere the weight is cast first, differentiably, as autocast
// would. Shapes only, as SymBool guards, so that torch.compile traces it.
bool f32_weight_conv_training(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  if (!f32_weight_form(x, weight) || !use_fused_kernels(x) || groups != 1 || x.dim() != 4 ||
      weight.dim() != 4 || stride.size() != 2 || padding.size() != 2 || dilation.size() != 2) {
    return false;
  }
  auto holds = [](const c10::SymBool& b) { return b.guard_bool(__FILE__, __LINE__); };
  auto out_size = [&](int d) {
    const c10::SymInt span = (weight.sym_size(2 + d) - 1) * dilation[d] + 1;
    return (x.sym_size(2 + d) + 2 * padding[d] - span) / stride[d] + 1;
  };
  const c10::SymInt ho = out_size(0), wo = out_size(1);
  const c10::SymInt& n = weight.sym_size(0);
  const c10::SymInt& c = weight.sym_size(1);
  const c10::SymInt k = c * weight.sym_size(2) * weight.sym_size(3);
  return holds(ho.sym_gt(0)) && holds(wo.sym_gt(0)) && holds(x.sym_size(0).sym_gt(0)) &&
         holds((x.sym_size(0) * ho * wo).sym_le(kStreamMaxRows)) && holds(n.sym_gt(8)) &&
         holds(c.sym_gt(8)) && holds((n % 8).sym_eq(0)) && holds((k % 8).sym_eq(0));
}

at::Tensor masked_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bits, const OptTensor& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups, const OptTensor& owner,
                                  const OptTensor& mask, int64_t task) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias, mask)) {
    Below below;
    return conv_op().call(x, weight, bits, bias, stride, padding, dilation, groups, owner, mask,
                          task);
  }
  const at::Tensor w = f32_weight_conv_training(x, weight, stride, padding, dilation, groups) ||
                               !f32_weight_form(x, weight)
                           ? weight
                           : weight.to(x.scalar_type());
  return MaskedConv2d::apply(x, w, Constant{bits}, bias, stride, padding, dilation, groups,
                             OptConstant{owner}, mask, task);
}

// Arguments: x 0, weight 1, bits 2, bias 3, stride 4, padding 5, dilation 6, groups 7.
struct MaskedConv2dMultitask : torch::autograd::Function<MaskedConv2dMultitask> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            Constant bits, const OptTensor& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    ctx->save_for_backward({x, weight, bits.tensor});
    ctx->saved_data["conv"] = pack_conv(stride, padding, dilation, groups);
    ctx->saved_data["present"] = Present({true, true, false, bias.has_value()}).bits();
    Below below;
    return conv_multitask_op().call(x, weight, bits.tensor, bias, stride, padding, dilation,
                                    groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Present present(ctx->saved_data["present"].toInt());
    const bool need_x = present.needs_grad(ctx, 0), need_w = present.needs_grad(ctx, 1),
               need_b = present.needs_grad(ctx, 3);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bits = saved[2];
    const ConvArgs c{ctx->saved_data["conv"].toIntVector()};
    const at::Tensor& dy = grads[0];
    const int64_t tasks = x.sym_size(0).guard_int(__FILE__, __LINE__);
    variable_list out(8);
    {
      Below below;
      if (need_x) {
        std::vector<at::Tensor> dx;
        for (int64_t t = 0; t < tasks; ++t) {
          dx.push_back(conv_grad_input_op().call(dy[t], weight, bits[t], x.sym_sizes().slice(1),
                                                 c.stride(), c.padding(), c.dilation(),
                                                 c.groups()));
        }
        out[0] = at::stack(dx);
      }
      if (need_w) {
        // Each task's dL/dW_eff through its own bits, summed over the tasks in fp32.
        at::Tensor dw = task_sum(weight);
        for (int64_t t = 0; t < tasks; ++t) {
          dw.add_(masked_by_bits(conv_weight_grad(dy[t], x[t], weight, c), bits[t]));
        }
        out[1] = dw.to(weight.scalar_type());
      }
      if (need_b) out[3] = dy.sum({0, 1, 3, 4});
    }
    return once_differentiable(std::move(out), {dy, x, weight}, "cpg::masked_conv2d_multitask");
  }
};

at::Tensor masked_conv2d_multitask_autograd(const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& bits, const OptTensor& bias,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, int64_t groups) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias)) {
    Below below;
    return conv_multitask_op().call(x, weight, bits, bias, stride, padding, dilation, groups);
  }
  return MaskedConv2dMultitask::apply(x, weight, Constant{bits}, bias, stride, padding, dilation,
                                      groups);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cpg, m) {
  define_op(m,
            "masked_conv2d(Tensor x, Tensor weight, Tensor bits, Tensor? bias=None, "
            "int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1, "
            "Tensor? owner=None, Tensor? mask=None, int task=0) -> Tensor",
            &masked_conv2d);
  define_op(m,
            "masked_conv2d_multitask(Tensor x, Tensor weight, Tensor bits, Tensor? bias=None, "
            "int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1) -> Tensor",
            &masked_conv2d_multitask);
  // input_size is symbolic under torch.compile's dynamic shapes (the backward
  // passes the input's sizes).
  define_op(m,
            "masked_conv2d_grad_input(Tensor grad_out, Tensor weight, Tensor bits, "
            "SymInt[] input_size, int[2] stride=1, int[2] padding=0, int[2] dilation=1, "
            "int groups=1) -> Tensor",
            &masked_conv2d_grad_input);
  autograd_kernel(m, "masked_conv2d", &masked_conv2d_autograd);
  autograd_kernel(m, "masked_conv2d_multitask", &masked_conv2d_multitask_autograd);
  // masked_conv2d_grad_input is a backward piece (see linear_ops.cpp).
}

}  // namespace cpg::ops
