"""Tiny random-weight models saved in their native formats, for command-line tests."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SOURCES = ["drums", "bass", "other", "vocals"]


def tiny_htdemucs(path: Path, samplerate: int = 44100) -> Path:
    """A float32 HTDemucs package as demucs saves one (klass, args, kwargs, state)."""
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state
    torch.manual_seed(0)
    model = HTDemucs(sources=SOURCES, samplerate=samplerate, segment=Fraction(1, 2), channels=8, depth=2,
                     t_layers=1, t_heads=2, bottom_channels=0, nfft=512)
    args, kwargs = model._init_args_kwargs
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": get_state(model, None, False),
                "training_args": {}}, path)
    return path


def song(folder: Path, name: str = "song.wav", seconds: float = 0.6, rate: int = 44100) -> Path:
    """Two sines, one per channel."""
    t = np.arange(int(seconds * rate)) / rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], 1).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / name, audio, rate)
    return folder / name


def tiny_apollo(folder: Path, name: str = "apollo.ckpt") -> tuple[Path, Path]:
    """A Lightning-style Apollo checkpoint (generator under `audio_model.`) and its YAML config."""
    import yaml
    from dsu.models.apollo import Apollo
    apollo = {"sr": 44100, "win": 20, "feature_dim": 16, "layer": 1}
    torch.save({"state_dict": {f"audio_model.{k}": v for k, v in Apollo(**apollo).state_dict().items()}},
               folder / name)
    (folder / "apollo.yaml").write_text(yaml.safe_dump({"model": apollo}))
    return folder / name, folder / "apollo.yaml"
