"""mmsafe: evaluate, attack and defend multimodal large language models.

Importing mmsafe is cheap: torch, transformers and OCR engines load only when a component needs them.

From Python: ``mmsafe.evaluate(models=..., benchmarks=..., ...)`` runs a grid and returns an
:class:`EvalResult`; ``mmsafe.create(kind, name, params)`` builds one component (see mmsafe.api).
"""

from mmsafe.api import EvalResult, create, evaluate
from mmsafe.registry import Registry
from mmsafe.types import (
    ComponentSpec,
    Expected,
    Generation,
    Image,
    Judgement,
    Message,
    Prompt,
    Record,
    Sample,
)

__version__ = "0.1.0"

__all__ = [
    "ComponentSpec",
    "EvalResult",
    "Expected",
    "Generation",
    "Image",
    "Judgement",
    "Message",
    "Prompt",
    "Record",
    "Registry",
    "Sample",
    "__version__",
    "create",
    "evaluate",
]
