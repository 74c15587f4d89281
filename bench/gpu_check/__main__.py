"""``python -m bench.gpu_check``: see :mod:`bench.gpu_check`."""

from .cli import main

raise SystemExit(main())
