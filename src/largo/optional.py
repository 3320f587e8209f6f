"""Optional libraries, imported on first use: missing ones are one line naming the extra that installs them.

Hugging Face libraries (datasets, huggingface_hub, transformers, peft, lm-eval) are imported offline:
largo sets HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 unless the environment already sets them, so
nothing is downloaded from a hub behind the user's back. `HF_HUB_OFFLINE=0 largo ...` lets them go online.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from largo.errors import MissingDependencyError

# module -> the largo extra that installs it (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"datasets": "hfdata", "peft": "lora", "lm_eval": "eval", "soundfile": "audio", "huggingface_hub": "hf",
          "transformers": "hf", "gguf": "hf", "captum.attr": "explain", "tensorboard": "explain"}
_HF = {"datasets", "peft", "lm_eval", "huggingface_hub", "transformers"}


def hf_offline() -> None:
    """Keep Hugging Face libraries off the network unless the user chose otherwise (read when they are first imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def hub_offline() -> bool:
    """Whether Hugging Face hubs are off limits for this process (the default; HF_HUB_OFFLINE=0 opts in)."""
    hf_offline()
    return os.environ["HF_HUB_OFFLINE"].strip().lower() not in ("0", "false", "no", "off", "")


def install_hint(module: str) -> str:
    """How to install an optional module: the largo extra that brings it, else the package itself."""
    extra = EXTRAS.get(module)
    return f"pip install 'largo-train[{extra}]'" if extra else f"pip install {module.split('.')[0]}"


def require(module: str, what: str) -> ModuleType:
    """Import `module` for `what`, or raise MissingDependencyError, one line: `<what> needs <module>: pip install ...`.

    Every missing optional package is this one error, whichever layer needs it (data, checkpoints, trackers, ...).
    """
    if module in _HF:
        hf_offline()
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{what} needs {module}: {install_hint(module)}") from None
