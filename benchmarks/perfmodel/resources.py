"""What the built kernels cost per thread and per loop trip, read from the extension's sm_90 code.

For every kernel of ``cpg_kernels/_C*.so``: registers, stack, static shared memory and local
memory (spills and local arrays) from ``cuobjdump --dump-resource-usage``, and from its SASS
(``cuobjdump -sass``) the instruction count and opcode mix of the whole function and of every
loop (a backward branch and the code it jumps over). The table is committed
(``resources_sm90.json``) so that the model runs where no CUDA build exists; regenerate it after
a kernel change with ``python3 benchmarks/model.py resources`` on a FORCE_CUDA=1 build.

Kernel names are demangled (``c++filt``) and normalized by :func:`normalize_kernel`, the same
spelling the plan query's names get, so the two meet in one key.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "resources_sm90.json"
# Opcode families the model reads; everything else counts in the total only.
OPCODES = (
    "HMMA",
    "FFMA",
    "FMUL",
    "FADD",
    "IMAD",
    "LOP3",
    "PRMT",
    "LDG",
    "LDGSTS",
    "LDS",
    "LDSM",
    "STS",
    "STG",
    "LDC",
    "BAR",
    "BRA",
    "SHFL",
    "BSSY",
    "F2F",
    "I2F",
)


# ------------------------------------------------------------------------------ names


def normalize_kernel(name: str) -> str:
    """One spelling of a kernel for the plan query (host build) and the cubin (device build):
    no return type, no parameter list, no build namespace (``cpg::cuda``, ``cpg::emu_kernels``),
    element types as ``f32``/``f16``/``bf16``, no blanks."""
    s = name.strip().replace("(anonymous namespace)::", "")
    if s.startswith("void "):
        s = s[len("void ") :]
    depth = 0
    for i, ch in enumerate(s):  # drop the parameter list: the first '(' outside <>
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            s = s[:i]
            break
    s = re.sub(r"cpg::(cuda|emu_kernels)::", "", s)
    s = re.sub(r"cpgdev::((emulated|gpu)::)?", "", s)
    s = s.replace("__nv_bfloat16", "bf16").replace("__half", "f16")
    s = re.sub(r"\bfloat\b", "f32", s)
    return re.sub(r"\s+", "", s)


def demangle(names: list[str]) -> list[str]:
    """Itanium-ABI names through c++filt (one process for all)."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if tool is None:
        raise RuntimeError("resources: c++filt not found (binutils), needed to demangle kernels")
    out = subprocess.run(
        [tool], input="\n".join(names) + "\n", capture_output=True, text=True, check=True
    ).stdout.splitlines()
    if len(out) != len(names):
        raise RuntimeError("resources: c++filt returned a different number of names")
    return out


# ---------------------------------------------------------------------------- cuobjdump


def find_cuobjdump() -> str:
    """cuobjdump of $CUDA_HOME, of PATH, of /usr/local/cuda*, or the one Triton bundles."""
    candidates = []
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates.append(os.path.join(os.environ[env], "bin", "cuobjdump"))
    if shutil.which("cuobjdump"):
        candidates.append(shutil.which("cuobjdump"))
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/cuobjdump"), reverse=True)
    try:
        import triton  # noqa: PLC0415 (optional: only where the toolkit lacks cuobjdump)

        candidates.append(
            os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        )
    except ImportError:
        pass
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise RuntimeError("resources: no cuobjdump found (CUDA toolkit, or Triton's bundle)")


def _run(tool: str, args: list[str]) -> str:
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


_FUNC_RES = re.compile(r"^\s*Function\s+(\S+?):?\s*$")
_RES_FIELD = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")


def parse_resource_usage(text: str) -> dict[str, dict]:
    """``cuobjdump --dump-resource-usage`` -> {mangled name: {regs, stack, shared, local}}."""
    out, current = {}, None
    for line in text.splitlines():
        m = _FUNC_RES.match(line)
        if m:
            # An instantiation in two translation units is listed once per cubin: keep the first.
            current = None if m.group(1) in out else m.group(1)
            continue
        if current and "REG:" in line:
            fields = dict(_RES_FIELD.findall(line))
            out[current] = {
                "regs": int(fields.get("REG", 0)),
                "stack": int(fields.get("STACK", 0)),
                "shared": int(fields.get("SHARED", 0)),
                "local": int(fields.get("LOCAL", 0)),
            }
            current = None
    return out


_FUNC_SASS = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
# A branch target: a label (nvdisasm, some cuobjdump versions) or an address (cuobjdump 13).
_TARGET = re.compile(r"\bBRA(?:\.\w+)*\s+(?:`\()?(\.L_x_\d+|0x[0-9a-f]+)")


def _opcode(text: str) -> str:
    tokens = text.split()
    if tokens and tokens[0].startswith("@"):
        tokens = tokens[1:]
    return tokens[0].split(".")[0] if tokens else ""


def _mix(ops: list[str]) -> dict:
    counts = Counter(ops)
    mix = {op: counts[op] for op in OPCODES if counts[op]}
    mix["total"] = sum(1 for op in ops if op not in ("NOP",))
    return mix


def parse_sass(text: str) -> dict[str, dict]:
    """``cuobjdump -sass`` -> {mangled name: {"mix": opcode counts, "loops": [...]}}; a loop is
    the code between a backward branch's target and the branch, with its opcode counts."""
    functions: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        m = _FUNC_SASS.match(line)
        if m:
            # An instantiation in two translation units is listed once per cubin: keep the
            # first (identical code), not both copies as one function.
            current = [] if m.group(1) in functions else functions.setdefault(m.group(1), [])
            continue
        if current is None:
            continue
        label = _LABEL.match(line)
        if label:
            current.append(("label", label.group(1)))
            continue
        ins = _INSTR.search(line)
        if ins:
            current.append(("ins", int(ins.group(1), 16), ins.group(2)))
    out = {}
    for name, items in functions.items():
        code, labels, pending = [], {}, []
        for item in items:
            if item[0] == "label":
                pending.append(item[1])
            else:
                for lab in pending:
                    labels[lab] = len(code)
                pending = []
                labels[hex(item[1])] = len(code)
                code.append((item[1], item[2], _opcode(item[2])))
        loops = []
        for i, (_, text_, op) in enumerate(code):
            t = _TARGET.search(text_)
            if op == "BRA" and t and t.group(1) in labels and labels[t.group(1)] <= i:
                start = labels[t.group(1)]
                loops.append(
                    {
                        "start": code[start][0],
                        "end": code[i][0],
                        "mix": _mix([c[2] for c in code[start : i + 1]]),
                        "path": _mix(_fall_through(code, labels, start, i)),
                    }
                )
        out[name] = {"mix": _mix([c[2] for c in code]), "loops": loops}
    return out


def _fall_through(code: list, labels: dict, start: int, end: int) -> list[str]:
    """The opcodes on one trip through the loop [start, end] that takes no conditional branch
    and every unconditional one: the straight-line path, as nvcc lays out an if's common
    branch first and jumps over its else. An estimate of one trip's dynamic instructions
    (the loop's static size also counts the fallbacks it rarely runs)."""
    ops, i, seen = [], start, set()
    while start <= i <= end and i not in seen:
        seen.add(i)
        _, text_, op = code[i]
        ops.append(op)
        t = _TARGET.search(text_)
        if op == "BRA" and t and not text_.lstrip().startswith("@") and t.group(1) in labels:
            target = labels[t.group(1)]
            if target > i:  # an unconditional jump forward, over an else
                i = target
                continue
        i += 1
    return ops


def extract(so_path: str, arch: str = "sm_90") -> dict:
    """The resource table of one built extension (see the module docstring)."""
    tool = find_cuobjdump()
    usage = parse_resource_usage(_run(tool, ["--dump-resource-usage", "-arch", arch, so_path]))
    sass = parse_sass(_run(tool, ["-sass", "-arch", arch, so_path]))
    mangled = sorted(set(usage) | set(sass))
    kernels = {}
    for raw, pretty in zip(mangled, demangle(mangled), strict=True):
        entry = {"demangled": pretty, **usage.get(raw, {})}
        code = sass.get(raw, {"mix": {}, "loops": []})
        # The model reads the loops that do the math; keep the largest few of them.
        math_loops = [
            lp for lp in code["loops"] if lp["mix"].get("FFMA", 0) or lp["mix"].get("HMMA", 0)
        ]
        math_loops = sorted(math_loops, key=lambda lp: -lp["mix"]["total"])[:6]
        entry.update(mix=code["mix"], loops=sorted(math_loops, key=lambda lp: lp["start"]))
        key = normalize_kernel(pretty)
        if key in kernels:  # the same instantiation in two translation units: identical code
            continue
        kernels[key] = entry
    return {
        "arch": arch,
        "cuobjdump": _run(tool, ["--version"]).strip().splitlines()[-1],
        "built_from": _commit(),
        "kernels": dict(sorted(kernels.items())),
    }


def _commit() -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted csrc changes), for the record."""
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True
    )
    if r.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "csrc"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return r.stdout.strip() + ("-dirty" if dirty else "")


def write_table(table: dict, path: Path = TABLE) -> None:
    path.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")


def load_table(path: Path = TABLE) -> dict:
    return json.loads(Path(path).read_text())


def built_extension() -> str:
    """The in-tree or installed cpg_kernels/_C*.so."""
    root = Path(__file__).resolve().parents[2]
    found = sorted(glob.glob(str(root / "cpg_kernels" / "_C*.so")))
    if not found:
        try:
            import cpg_kernels  # noqa: PLC0415

            found = sorted(glob.glob(os.path.join(os.path.dirname(cpg_kernels.__file__), "_C*.so")))
        except ImportError:
            pass
    if not found:
        raise RuntimeError("resources: no built cpg_kernels/_C*.so; build with FORCE_CUDA=1")
    return found[0]
