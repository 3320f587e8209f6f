"""Models: THE block and the trunk every architecture shares, and one module per architecture (its spec).

Importing this package registers the built-in architectures: gpt (language model), vit (images),
audio (speech) and text_classifier (labelled text). Another one registers itself with `register`.
"""

from __future__ import annotations

from largo.models import gpt  # noqa: I001,F401  (each module registers its spec; this order is the listing order)
from largo.models import vit, audio, text_classifier  # noqa: I001,F401
from largo.models import seq2seq  # noqa: F401  (translation, summarisation)
from largo.models import detect  # noqa: I001,F401  (object detection: ViT trunk, dense head)
from largo.models import dit  # noqa: I001,F401
from largo.models import asr  # noqa: I001,F401  (speech recognition, CTC)
from largo.models import tts  # noqa: I001,F401  (speech synthesis: durations, Griffin-Lim)
from largo.models.config import ModelConfig
from largo.models.spec import (
    ArchSpec, DataShape, MemoryTerms, ParamCount, Task, build_model, count_params, extends_arch, get_spec, is_hidden_matrix, register,
    spec_names, trainable,
)

__all__ = ["ArchSpec", "DataShape", "MemoryTerms", "ModelConfig", "ParamCount", "Task", "build_model", "count_params",
           "extends_arch", "get_spec", "is_hidden_matrix", "register", "spec_names", "trainable"]
