"""The data stage: audio I/O, Speech Commands layouts, tasks and splits, augmentation.

Names are imported on first use (PEP 562), so that ``kws --help``, which imports
``kws.data.cli``, does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "kws.data.audio": (
        "AudioError", "audio_info", "check_samples", "fix_length", "load_audio", "resample",
        "save_audio",
    ),
    "kws.data.speech_commands": (
        "CLIP_SECONDS", "SC10", "SILENCE", "SPLITS", "TASKS", "UNKNOWN", "Clip", "ClipDataset",
        "SpeechCommands", "find_data_root", "hash_percent", "speaker_of", "which_set",
    ),
    "kws.data.augment": ("AugmentDraw", "Augmenter", "mix_at_snr", "time_shift"),
    "kws.data.stats": ("dataset_stats",),
    "kws.data.download": ("DownloadError", "download"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'kws.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
