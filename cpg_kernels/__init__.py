"""cpg-kernels: fused masked conv/GEMM for unforgetting continual learning (CPG).

Import the pieces you need:

* ``cpg_kernels.functional``: masked linear/conv2d from a dense weight plus
  packed bits (inference) or owners and a picking mask (training);
* ``cpg_kernels.masks``: pack/unpack, active sets, usage counts;
* ``cpg_kernels.reference``: the dense-masking oracle;
* ``cpg_kernels.backends``: CPU, CUDA, or CUDA kernels under the CPU emulator.
"""
from . import _ops  # noqa: F401  (registers the ops)
from . import backends, functional, masks, reference  # noqa: F401

__version__ = "0.1.0"
