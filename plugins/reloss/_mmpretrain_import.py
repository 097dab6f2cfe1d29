"""What importing mmpretrain's models needs on this stack, shared by the mmpretrain modules
(:mod:`reloss.mmpretrain`, :mod:`reloss.mmpretrain_backbones`), which call
:func:`skip_multimodal_models_that_cannot_import` before they import ``mmpretrain.models``."""
from __future__ import annotations

import sys

from mmpretrain.utils import dependency


def skip_multimodal_models_that_cannot_import():
    """mmpretrain 1.2 imports its multimodal models (BLIP, CLIP, ...) with ``mmpretrain.models``
    whenever pycocotools and transformers >= 4.28 are both installed
    (``mmpretrain.utils.dependency.WITH_MULTIMODAL``). Its BLIP code imports helpers that
    transformers 5 removed from ``transformers.modeling_utils``, so there ``import
    mmpretrain.models`` fails. Where those helpers are missing, take the path mmpretrain takes
    without the multimodal dependencies (placeholders that explain what to install); it changes
    nothing once ``mmpretrain.models`` is imported."""
    if not dependency.WITH_MULTIMODAL or "mmpretrain.models" in sys.modules:
        return
    try:
        from transformers.modeling_utils import (  # noqa: F401
            apply_chunking_to_forward,
            find_pruneable_heads_and_indices,
            prune_linear_layer,
        )
    except ImportError:
        dependency.WITH_MULTIMODAL = False
