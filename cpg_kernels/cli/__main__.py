"""``python -m cpg_kernels.cli``: the ``cpg`` command without installing its entry point."""

from . import main

raise SystemExit(main())
