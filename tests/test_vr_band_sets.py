"""Every band-parameter set DSU ships, through the VR family's whole band pipeline (44.1 kHz in, the
band set's resamplers, STFTs, crops and filters, the inverse, 44.1 kHz out), against
python-audio-separator's (`tests/fixtures/vr_bands/README.md` says how the reference was made)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dsu.families import vr_bands
from dsu.families.vr import UVR_RATE
from helpers import snr

FIXTURES = Path(__file__).parent / "fixtures" / "vr_bands"
REFERENCE = np.load(FIXTURES / "bands.npz")


def band_pipeline(wave: torch.Tensor, name: str) -> torch.Tensor:
    """What VRModel.separate does to the mix with a mask of one: the network aside, all of it."""
    params = vr_bands.load(name)
    v51 = any(k in name for k in ("v3", "v4", "_sn"))  # the network generation each set is published for
    top = vr_bands.resample(wave, UVR_RATE, params.top.samplerate, params.top.resampler)
    spec = vr_bands.analyse(top, params, v51).spec
    out = vr_bands.synthesise(spec, params, v51).float()
    return vr_bands.resample(out, params.top.samplerate, UVR_RATE, "soxr_hq")


def test_every_shipped_band_set_has_a_reference():
    assert sorted(REFERENCE.files) == sorted(vr_bands.shipped())


@pytest.mark.parametrize("name", sorted(REFERENCE.files))
def test_band_set_matches_python_audio_separator(name):
    mix, rate = sf.read(FIXTURES / "bands_mix.wav", dtype="float32", always_2d=True)
    assert rate == UVR_RATE
    want = REFERENCE[name]
    got = band_pipeline(torch.from_numpy(mix.T.copy()), name).numpy()[:, :want.shape[-1]]
    assert snr(want, got) >= 100, f"{name}: {snr(want, got):.1f} dB"
