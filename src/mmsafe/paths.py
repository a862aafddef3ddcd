"""Where mmsafe keeps what it builds or downloads on this machine: the cache root.

Every component that caches something outside a run's store (built test models, converted
checkpoints, adversarial checkpoints, judge evaluations) puts it in a folder under
:func:`default_cache_root`, unless it is given a cache folder of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_root"]


def default_cache_root() -> Path:
    """``$MMSAFE_CACHE_DIR`` if set, else ``~/.cache/mmsafe``."""
    env = os.environ.get("MMSAFE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmsafe"
