"""Checks shared by the architecture tests that compare DSU's models with reference fixtures."""
import json
from pathlib import Path

import numpy as np
import torch
from helpers import snr


def layout(model: torch.nn.Module) -> list:
    """[key, shape] per state-dict entry, in order: what a strict load of the reference's checkpoint needs."""
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def fixture_snr_db(model: torch.nn.Module, case: Path) -> float:
    """How closely `model`, loaded strictly with the fixture's checkpoint, reproduces the reference's output.
    The case folder holds keys.json (the reference's layout), model.ckpt, input.npy and expected.npy."""
    assert layout(model) == json.loads((case / "keys.json").read_text())
    state = torch.load(case / "model.ckpt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(np.load(case / "input.npy"))).numpy()
    expected = np.load(case / "expected.npy")
    assert out.shape == expected.shape
    return snr(expected, out)
