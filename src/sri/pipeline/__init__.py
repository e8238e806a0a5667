"""The pipeline: one stage-based runner (:func:`run`) and its configuration schema (:class:`RunConfig`).

``sri run --config FILE`` runs it; ``sri demo`` and ``sri eval`` are presets (``configs/demo.yaml``,
``configs/guard_eval.yaml``). The stages, in order, are listed in :mod:`sri.pipeline.stages`. Names are imported
lazily, so that checking a config does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunConfig", "load_config", "parse_config", "run", "sampler_from_options"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from .runner import run

        return run
    if name in __all__:
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'sri.pipeline' has no attribute {name!r}")
