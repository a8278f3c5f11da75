"""DSU's BS-RoFormer and Mel-Band-RoFormer against fixtures made by MSST's own classes (commit ccc011a)
and librosa, run outside this repo: tiny random-weight checkpoints with the reference's output on a
fixed input, the state-dict layout of public configs, and librosa's mel filterbanks."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dsu.models.bs_roformer import BSRoformer
from dsu.models.mel import mel_filterbank
from dsu.models.mel_band_roformer import MelBandRoformer, mel_bands
from helpers import snr

FIXTURES = Path(__file__).parent / "fixtures" / "roformer"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def model_class(name: str):
    return MelBandRoformer if name.startswith("mel_band") else BSRoformer


def layout(model: torch.nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", CASES)
def test_tiny_checkpoint_reproduces_msst(name):
    case = FIXTURES / name
    config = json.loads((case / "config.json").read_text())
    model = model_class(name)(**config).eval()
    assert layout(model) == json.loads((case / "keys.json").read_text())

    state = torch.load(case / "model.ckpt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(torch.from_numpy(np.load(case / "input.npy"))).numpy()
    expected = np.load(case / "expected.npy")
    assert out.shape == expected.shape
    assert snr(expected, out) > 100


def test_public_configs_have_msst_state_dict_layout():
    for path, entry in json.loads((FIXTURES / "public_keys.json").read_text()).items():
        config = entry["config"]
        with torch.device("meta"):  # layout only: no memory, no random init
            Model = MelBandRoformer if "num_bands" in config else BSRoformer
            model = Model(**config)
        assert layout(model) == entry["keys"], path


def test_wrong_checkpoint_fails_strict_load():
    case = FIXTURES / "bs_roformer_stereo"
    config = json.loads((case / "config.json").read_text())
    model = BSRoformer(**{**config, "depth": config["depth"] + 1})
    state = torch.load(case / "model.ckpt", map_location="cpu", weights_only=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(state, strict=True)


@pytest.mark.parametrize("prefix, compute", [("filters", mel_filterbank), ("bands", mel_bands)])
def test_mel_equals_librosa_and_msst(prefix, compute):
    """filters_<sr>_<n_fft>_<n_mels>: librosa.filters.mel, bit for bit (float32);
    bands_<sr>_<n_fft>_<num_bands>: the bins of each band in MSST's MelBandRoformer."""
    fixture = np.load(FIXTURES / "mel.npz")
    keys = [k for k in fixture.files if k.startswith(prefix + "_")]
    assert keys
    for key in keys:
        sr, n_fft, n = map(int, key.split("_")[1:])
        ours = compute(sr, n_fft, n)
        assert ours.dtype == fixture[key].dtype, key
        np.testing.assert_array_equal(ours, fixture[key], err_msg=key)


@pytest.mark.parametrize("Model, extra", [(BSRoformer, dict(freqs_per_bands=(32, 33))),
                                          (MelBandRoformer, dict(num_bands=4))])
def test_output_shapes(Model, extra):
    base = dict(dim=8, depth=1, time_transformer_depth=1, freq_transformer_depth=1, dim_head=4, heads=2,
                stft_n_fft=128, stft_hop_length=32, stft_win_length=128, stereo=True)
    mix = torch.randn(3, 2, 32 * 10)
    with torch.no_grad():
        one = Model(**base, **extra, num_stems=1).eval()(mix)
        two = Model(**base, **extra, num_stems=2).eval()(mix)
    # MSST's BSRoformer keeps the stem axis for one stem; its MelBandRoformer drops it.
    assert one.shape == ((3, 1, 2, 320) if Model is BSRoformer else (3, 2, 320))
    assert two.shape == (3, 2, 2, 320)
    with pytest.raises(ValueError, match="stereo"):
        Model(**base, **extra).eval()(mix[:, :1])
