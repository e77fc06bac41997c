"""lightspeed-collector: a plugin microkernel that answers questions and records what users say.

Plugin authors need two names from here: ``hookimpl`` to mark hook functions, and the
value types in :mod:`lightspeed_collector.types`.
"""

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "lightspeed_collector"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]
