"""``ogkernels.budget``: visual-token counts, OG token counts and LLM costs.

The public face of :mod:`ogkernels.tools.budget` (the implementation lives with the tooling).
"""

from .tools.budget import *  # noqa: F401,F403
from .tools.budget import __all__  # noqa: F401
