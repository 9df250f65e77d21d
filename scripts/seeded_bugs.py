"""The seeded bugs of scripts/bug_probe.py: plausible mistakes the test suite must catch.

Each is a real source patch: ``search`` must occur exactly ``count`` times in ``file`` and
is replaced by ``replace``; ``tests`` are the pytest ids that must then fail, run on
``backends`` (CPG_TEST_BACKENDS) or, with ``sanitizer``, by scripts/sanitized_emulator.sh.
The first ones are those of issue 18 (bugs that survived the suite at d93db6f); add one for
every bug fixed from now on, with the tests that caught it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bug:
    id: str
    file: str
    search: str
    replace: str
    tests: list[str]
    what: str
    count: int = 1
    backends: str = "cpu,emu"
    sanitizer: bool = False


LIN = "tests/test_linear_ops.py"
CONV = "tests/test_conv_ops.py"
MASK = "tests/test_mask_ops.py"

BUGS = [
    # ------------------------------------------------ tensor-core kernels (16-bit, TF32)
    Bug(
        "mma-zeroed-element",
        "csrc/cuda/gemm_mma.cuh",
        "if (c < v.cols()) v.store(row, v.out_col(c), acc[fm][fn][2 * half + e]);",
        "if (c < v.cols()) v.store(row, v.out_col(c), m + 1 == v.rows() && c + 1 == v.cols()"
        " ? 0.0f : acc[fm][fn][2 * half + e]);",
        [f"{LIN}::test_every_gemm_kernel_forward_and_grad_input"],
        "the mma kernel writes 0 for the last element of the output",
        backends="emu",
    ),
    Bug(
        "mma-16-bit-accumulator",
        "csrc/cuda/gemm_mma.cuh",
        "    mma_fragments<L, T>(f[i % 2], acc);\n",
        "    mma_fragments<L, T>(f[i % 2], acc);\n"
        "    for (auto& fm : acc) for (auto& fn : fm) for (float& e : fn)\n"
        "      e = cpgdev::to_float(cpgdev::from_float<T>(e));\n",
        [f"{LIN}::test_every_gemm_kernel_forward_and_grad_input"],
        "the mma kernel keeps its accumulator in the operand dtype between k-steps",
        backends="emu",
    ),
    Bug(
        "split-k-16-bit-partials",
        "csrc/cuda/gemm_split_k.cuh",
        "{ partials[row + col] = acc; }",
        "{ partials[row + col] = cpgdev::to_float(cpgdev::from_float<typename View::Elem>(acc)); }",
        [f"{LIN}::test_every_gemm_kernel_forward_and_grad_input"],
        "split-K partial sums stored in 16 bits",
        backends="emu",
    ),
    Bug(
        "mma-edge-column-dropped",
        "csrc/cuda/gemm_mma.cuh",
        "    words[c] = valid ? static_cast<uint32_t>(g.bits[p.n * g.words + word_of(p.k)]) : 0u;",
        "    words[c] = valid ? static_cast<uint32_t>(g.bits[p.n * g.words + word_of(p.k)]) &"
        " (p.n + 1 == g.N && col0 > 0 ? ~(1u << ((g.K - 1) % 32)) : ~0u) : 0u;",
        [f"{LIN}::test_every_gemm_kernel_forward_and_grad_input"],
        "the mma kernel drops reduction column K-1 of the last W row in an edge column tile",
        backends="emu",
    ),
    Bug(
        "conv-ignores-cudnn-tf32",
        "csrc/ops/conv_ops.cpp",
        "bool allow_tf32() { return at::globalContext().allowTF32CuDNN(at::Float32Op::CONV); }",
        "bool allow_tf32() { return false; }",
        [f"{CONV}::test_tf32_switch_is_respected"],
        "fp32 convs never use TF32 tensor cores, whatever torch.backends.cudnn.allow_tf32 says",
        backends="emu",
    ),
    # ------------------------------------------------------------- picking threshold
    Bug(
        "threshold-hard-coded",
        "cpg_kernels/masks.py",
        "return torch.ops.cpg.active_bits(owner, task, mask, pick_bits, float(threshold))",
        "return torch.ops.cpg.active_bits(owner, task, mask, pick_bits, DEFAULT_THRESHOLD)",
        [f"{MASK}::test_active_bits_threshold", f"{LIN}::test_threshold_other_than_the_default"],
        "active_bits ignores its threshold argument",
    ),
    Bug(
        "threshold-inclusive",
        "csrc/core/mask_format.h",
        "return m > threshold; }",
        "return m >= threshold; }",
        [f"{MASK}::test_active_bits_threshold"],
        "a mask entry equal to the threshold is picked (>= for >)",
    ),
    # ---------------------------------------------------------------------- conv ops
    Bug(
        "conv-multitask-drops-dilation-groups",
        "cpg_kernels/functional.py",
        "_masked_conv2d_multitask(x, weight, bits, bias, stride, padding, dilation, groups)",
        "_masked_conv2d_multitask(x, weight, bits, bias, stride, padding, 1, 1)",
        [f"{CONV}::test_conv_multitask_matches_each_task"],
        "masked_conv2d_multitask ignores dilation and groups",
    ),
    Bug(
        "conv-fake-ignores-channels-last",
        "cpg_kernels/_ops.py",
        "    return x.new_empty(shape).contiguous(memory_format=_conv_layout(x))",
        "    return x.new_empty(shape)",
        ["tests/test_opcheck.py::test_opcheck"],
        "the conv fake kernels promise NCHW for channels_last inputs",
        backends="cpu",
    ),
    # ------------------------------------------------------------ trainer and CLI
    Bug(
        "schedule-exponent-2",
        "cpg_kernels/trainer/schedule.py",
        "(1 - step / steps) ** 3",
        "(1 - step / steps) ** 2",
        ["tests/test_schedule.py"],
        "the pruning schedule's exponent is 2, not 3",
        backends="cpu",
    ),
    Bug(
        "cli-flag-wrong-option",
        "cpg_kernels/cli/train.py",
        "prune_lr=args.prune_lr",
        "prune_lr=args.lr",
        ["tests/test_cli_flags.py"],
        "--prune-lr is ignored: prune_lr takes --lr's value",
        backends="cpu",
    ),
    # --------------------------------------------------------- paths no test reached
    Bug(
        "multitask-tiled-bits-of-task-0",
        "csrc/cuda/gemm_common.cuh",
        "  g.bits += task * g.bits_task_stride;\n",
        "",
        [f"{LIN}::test_multitask_matches_separate_passes"],
        "multi-task tiled kernels (over 16 rows a task) use task 0's bits for every task",
        backends="emu",
    ),
    Bug(
        "tiled-no-bias-null-read",
        "csrc/cuda/gemm_common.cuh",
        "const bool add_bias = !kGradInput && g.bias != nullptr;",
        "const bool add_bias = !kGradInput;",
        [f"{LIN}::test_every_gemm_kernel_forward_and_grad_input"],
        "the tiled kernels read the bias even when there is none",
        backends="emu",
    ),
    Bug(
        "owner-read-as-signed",
        "csrc/core/mask_format.h",
        "CPG_HD bool is_active(uint8_t owner, int task, bool picked) {",
        "CPG_HD bool is_active(int8_t owner, int task, bool picked) {",
        [f"{MASK}::test_owner_and_task_ids_past_127", f"{LIN}::test_owner_and_task_ids_past_127"],
        "owners >= 128 are read as negative numbers",
    ),
    Bug(
        "pick-all-backward-moves-frozen-weights",
        "csrc/ops/autograd_support.cpp",
        "  if (!owner.defined()) return {masked_by_bits(G, bits), at::Tensor()};",
        "  if (!owner.defined() || !need_mask) return {masked_by_bits(G, bits), at::Tensor()};",
        [
            f"{LIN}::test_pick_all_forward_and_backward",
            f"{CONV}::test_pick_all_forward_and_backward",
        ],
        "without a picking mask, old tasks' picked weights get gradients",
    ),
    Bug(
        "zero-in-features",
        "csrc/ops/linear_ops.cpp",
        "const at::Tensor x2d = (flat ? x : as_matrix(x, K)).contiguous();",
        "const at::Tensor x2d = (flat ? x : x.reshape({-1, K})).contiguous();",
        [f"{LIN}::test_zero_sizes"],
        "a linear layer with K = 0 fails to reshape its input",
        backends="cpu",
    ),
    Bug(
        "library-path-off-by-one",
        "csrc/ops/gemm_path.cpp",
        "return rows >= library_min_rows(dtype, allow_tf32) ? GemmPath::Library : GemmPath::Fused;",
        "return rows > library_min_rows(dtype, allow_tf32) ? GemmPath::Library : GemmPath::Fused;",
        [
            "tests/test_gemm_path.py::test_linear_takes_the_library_path_from_the_threshold",
            "tests/test_gemm_path.py::test_conv_takes_the_library_path_from_the_threshold",
        ],
        "a layer at its dtype's row threshold stays on the fused kernels",
        backends="emu",
    ),
    Bug(
        "library-conv-grad-drops-output-padding",
        "csrc/ops/conv_ops.cpp",
        "t.groups, /*transposed=*/true, out_pad);",
        "t.groups, /*transposed=*/true, {0, 0});",
        [f"{CONV}::test_training_forward_and_backward", f"{CONV}::test_multi_tile_decode_path"],
        "the library path's conv input gradient loses the rows that stride leaves over",
        backends="cpu",
    ),
    Bug(
        "f32-weight-pieces-swapped",
        "csrc/cuda/gemm_stream.cuh",
        "cpgdev::load16(&smem[w_vec + ((q * 2) * 2 + h) * kWarpSize]),",
        "cpgdev::load16(&smem[w_vec + ((q * 2 + 1) * 2 + h) * kWarpSize]),",
        [
            "tests/test_f32_weight_stream.py::test_forward_reads_the_fp32_weight_and_matches_the_cast_one"
        ],
        "the fp32-weight stream rounds its second 16-byte copy of W twice and never its first",
        backends="emu",
    ),
    Bug(
        "f32-weight-truncates",
        "csrc/emu/runtime.h",
        "return pack2(from_float<T>(lo), from_float<T>(hi));",
        "return pack2(from_float<T>(lo), from_float<T>(hi - hi * 0x1p-9f));",
        [
            "tests/test_f32_weight_stream.py::"
            "test_a_nan_behind_a_clear_bit_is_gone_and_rounding_is_to_nearest_even"
        ],
        "the in-register rounding of fp32 W is not the cast's (an odd element is nudged toward"
        " zero first)",
        backends="emu",
    ),
    Bug(
        "f32-grad-stream-copies-swapped",
        "csrc/cuda/gemm_stream_grad.cuh",
        "cpgdev::load16(&smem[w_vec + 2 * p * kWarpSize]),",
        "cpgdev::load16(&smem[w_vec + (2 * p + 1) * kWarpSize]),",
        [
            "tests/test_f32_weight_training.py::"
            "test_input_gradient_reads_the_fp32_weight_and_gives_the_cast_forms_bits"
        ],
        "the fp32-weight input-gradient stream rounds a piece's second fp32 copy twice and never"
        " its first",
        backends="emu",
    ),
    Bug(
        "f32-grad-stream-column-step",
        "csrc/cuda/gemm_stream_grad.cuh",
        "valid ? w + p * g.K + src * vec_elems<WT>() : g.w, valid,",
        "valid ? w + p * g.K + src * vec_elems<T>() : g.w, valid,",
        [
            "tests/test_f32_weight_training.py::"
            "test_input_gradient_reads_the_fp32_weight_and_gives_the_cast_forms_bits"
        ],
        "the second fp32 copy of a piece steps by 16-bit elements (8 columns on), not by fp32"
        " ones (4)",
        backends="emu",
    ),
    Bug(
        "weight-grad-a-fragment-order",
        "csrc/cuda/gemm_mma.cuh",
        "a, tile + L::at_offset(k0 + lane % 8 + (lane / 16) * 8, row0 + (lane / 8 % 2) * 8));",
        "a, tile + L::at_offset(k0 + lane % 8 + (lane / 8 % 2) * 8, row0 + (lane / 16) * 8));",
        ["tests/test_weight_grad_kernels.py::test_training_form_matches_the_oracle"],
        "the transposed A tile's ldmatrix addresses swap the fragment's row and k halves",
        backends="emu",
    ),
    Bug(
        "weight-grad-epilogue-skips-the-rule",
        "csrc/cuda/gemm_weight_grad.cuh",
        "p.grad_w[i] = widened<WT>(weight_grad_of(g, owner, p.task));",
        "p.grad_w[i] = widened<WT>(g);",
        [
            "tests/test_weight_grad_kernels.py::test_training_form_matches_the_oracle",
            "tests/test_weight_grad_kernels.py::test_the_epilogue_applies_the_rule_to_the_rounded_sums",
        ],
        "the fused weight gradient reaches weights the task does not own",
        backends="emu",
    ),
    Bug(
        "unfolded-dy-rows-drop-the-image",
        "csrc/cuda/conv_unfolded.cuh",
        "rows[(bn.q * plane + ip.r) * N + bn.r] = dy[i];",
        "rows[ip.r * N + bn.r] = dy[i];",
        [
            "tests/test_conv_unfolded_grad_stream.py::"
            "test_late_layer_input_gradient_streams_the_weight",
            "tests/test_conv_unfolded_grad_stream.py::test_both_layouts_give_the_same_bits",
        ],
        "the gather of NCHW dy into rows puts every image's pixels on the first image's rows",
        backends="emu",
    ),
    Bug(
        "unfolded-fold-butterfly-stops-early",
        "csrc/cuda/conv_unfolded.cuh",
        "for (int m = lanes / 2; m > 0; m /= 2) acc += cpgdev::shfl_xor(acc, m);",
        "for (int m = lanes / 2; m > 1; m /= 2) acc += cpgdev::shfl_xor(acc, m);",
        [
            f"{CONV}::test_every_conv_variant_forward_and_grad_input",
            "tests/test_conv_unfolded_grad_stream.py::"
            "test_late_layer_input_gradient_streams_the_weight",
        ],
        "the fold's lanes skip the butterfly's last step: each dx element keeps half its taps",
        backends="emu",
    ),
    Bug(
        "conv-f32-dx-pointwise-sizes-swapped",
        "csrc/cuda/masked_conv.cu",
        "                                        shape.N, shape.C, stream);",
        "                                        shape.C, shape.N, stream);",
        [
            "tests/test_f32_weight_conv_training.py::"
            "test_training_keeps_the_fp32_weight_and_makes_no_weight_sized_cast"
        ],
        "the pointwise conv's fp32-weight input gradient passes the linear stream C_in as its"
        " N and C_out as its K",
        backends="emu",
    ),
    Bug(
        "grad-epilogue-mixed-dm-unrounded",
        "csrc/cuda/elementwise.cu",
        "gm[j] = mask_grad_of(g[j], narrowed<T>(wv[j]), own[j], task);",
        "gm[j] = is_pickable(own[j], task) ? cpgdev::to_float(g[j]) * cpgdev::to_float(wv[j])"
        " : 0.0f;",
        [
            "tests/test_f32_weight_conv_training.py::"
            "test_grad_epilogue_mixed_form_gives_the_cast_forms_values",
            "tests/test_f32_weight_conv_training.py::"
            "test_training_keeps_the_fp32_weight_and_makes_no_weight_sized_cast",
        ],
        "the mixed epilogue's mask gradient multiplies G by the fp32 weight, not by the weight"
        " rounded as the cast rounds",
        backends="emu",
    ),
    # ------------------------------------------- global memory (the sanitizer step only)
    Bug(
        "small-batch-reads-past-last-row",
        "csrc/cuda/gemm_small_batch.cuh",
        "const int64_t n = n_first + i < g.N ? n_first + i : g.N - 1;",
        "const int64_t n = n_first + i;",
        [f"{LIN}::test_every_gemm_kernel_forward_and_grad_input"],
        "small_batch loads W rows past N (never used: only a bounds check sees it)",
        backends="emu",
        sanitizer=True,
    ),
]
