#!/usr/bin/env bash
# Global-memory bounds for the CUDA kernels, on a machine without a GPU: builds the kernels'
# emulator translation unit (csrc/emu/kernels_emu.cpp, the same .cu sources nvcc builds) and
# the emulator's runtime with AddressSanitizer and UBSan into one shared library, preloads it
# so that it takes the place of the extension's own emulator (the extension's calls into
# cpg::emu_kernels and cpg::emu bind to the first definition, the preloaded one; the
# sanitized runtime refuses any kernel that is not its own), and runs emulator op tests with
# it. Every global load and store of an emulated kernel is then checked against the
# allocation it falls in (torch's tensors, the launchers' workspaces), which the emulator
# alone does not do (it checks shared memory only).
#
#   scripts/sanitized_emulator.sh                 the focused CI subset below
#   scripts/sanitized_emulator.sh tests/x.py -k y any pytest arguments instead
#
# CPG_SANITIZED_DIR (default build/sanitized) holds the library; CXX picks the compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${CPG_SANITIZED_DIR:-build/sanitized}"
mkdir -p "$out"
lib="$(cd "$out" && pwd)/libcpg_emu_sanitized.so"
cxx="${CXX:-c++}"
start=$SECONDS
"$cxx" -std=c++17 -O1 -g -fPIC -shared -pthread -Wno-unknown-pragmas \
  -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
  -DCPG_EMU -I csrc csrc/emu/kernels_emu.cpp csrc/emu/runtime.cpp -o "$lib"
echo "sanitized emulator built in $((SECONDS - start)) s: $lib"

asan="$("$cxx" -print-file-name=libasan.so)"
[[ -f "$asan" ]] || { echo "no libasan.so for $cxx" >&2; exit 1; }

# One case per kernel and path (the dispatch tables of the op tests: every GEMM case; the
# conv variants and multi-task convs in bf16, both layouts, which take the tiled, direct,
# unfolded and split-K kernels), the element-wise ops, and the proof that this run's
# launches go through the sanitized library. About 2 minutes of tests on an idle 2-core
# machine (predicted from a loaded run: 1.7 s of CPU per conv case under ASan).
subset=(tests/test_emulator.py::test_sanitized_run_checks_the_library_kernels
        tests/test_linear_ops.py::test_every_gemm_kernel_forward_and_grad_input
        tests/test_linear_ops.py::test_small_batch_grad_input_layouts
        tests/test_linear_ops.py::test_multitask_matches_separate_passes
        tests/test_linear_ops.py::test_zero_sizes
        tests/test_mask_ops.py
        tests/test_conv_ops.py::test_every_conv_variant_forward_and_grad_input
        tests/test_conv_ops.py::test_conv_kernels_take_offset_views
        tests/test_conv_ops.py::test_conv_multitask_matches_each_task
        tests/test_weight_grad_kernels.py::test_training_form_matches_the_oracle
        tests/test_weight_grad_kernels.py::test_split_k_applies_the_rule_after_the_ordered_sum
        tests/test_weight_grad_kernels.py::test_unaligned_rows_and_tails_take_the_element_path_with_the_same_bits
        tests/test_f32_weight_stream.py::test_split_k_sums_in_split_order
        tests/test_f32_weight_stream.py::test_multitask_groups
        tests/test_f32_weight_training.py::test_split_n_sums_in_split_order
        tests/test_f32_weight_training.py::test_weight_gradient_is_fp32_with_the_cast_forms_values
        tests/test_conv_unfolded_grad_stream.py::test_unaligned_nhwc_dy_is_gathered_into_the_same_bits
        tests/test_conv_unfolded_grad_stream.py::test_both_layouts_give_the_same_bits
        tests/test_f32_weight_conv_training.py::test_input_gradient_op_reads_the_fp32_weight
        tests/test_f32_weight_conv_training.py::test_grad_epilogue_mixed_form_gives_the_cast_forms_values
        "tests/test_conv_unfolded_grad_stream.py::test_late_layer_input_gradient_streams_the_weight[1x1, 1024 output channels, one strip: N split-bf16-nchw]"
        -k "not (test_every_conv_variant or test_conv_multitask_matches) or bfloat16")
if [[ $# -gt 0 ]]; then subset=("$@"); fi

start=$SECONDS
LD_PRELOAD="$asan $lib" \
ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=0" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
CPG_TEST_BACKENDS=emu CPG_SANITIZED_EMULATOR="$lib" \
  python3 -m pytest -q -p no:cacheprovider "${subset[@]}"
echo "sanitized emulator tests took $((SECONDS - start)) s"
