"""demucs' networks cut into features, core and synthesis (`dsu.families.demucs_core`) under the
backend layer: the eager torch float32 split equals demucs' own forward and `apply_model` bit for bit,
OpenVINO's float32 conversion of each core agrees to >= 100 dB, bfloat16 runs on both."""
import dataclasses
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import snr

from dsu import backends, engine
from dsu.engine import TensorSignal
from dsu.families import demucs as family
from dsu.families import demucs_core

demucs_apply = pytest.importorskip("demucs.apply")
from demucs.demucs import Demucs  # noqa: E402
from demucs.hdemucs import HDemucs  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402

SR = 8000
SOURCES = ["drums", "bass", "other", "vocals"]
CPU = torch.device("cpu")


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "htdemucs":
        return HTDemucs(sources=SOURCES, samplerate=SR, segment=Fraction(1, 2), channels=8, depth=2, t_layers=1,
                        t_heads=2, bottom_channels=0, nfft=512).eval()
    if name == "htdemucs_bottom":  # the channel up/down-samplers around the transformer
        return HTDemucs(sources=SOURCES, samplerate=SR, segment=Fraction(1, 2), channels=8, depth=2, t_layers=1,
                        t_heads=2, bottom_channels=16, nfft=512).eval()
    if name == "hdemucs":
        return HDemucs(sources=SOURCES, samplerate=SR, segment=2, channels=4, depth=3, nfft=256).eval()
    return Demucs(sources=SOURCES, samplerate=SR, segment=2, channels=8, depth=2, lstm_layers=1).eval()


MODELS = ["htdemucs", "htdemucs_bottom", "hdemucs", "demucs"]


@pytest.fixture(scope="module", params=MODELS)
def net(request):
    return request.param, _build(request.param)


def _segment(model, seconds: float = 0.5, batch: int = 2) -> torch.Tensor:
    n = int(seconds * SR)
    n = model.valid_length(n) if isinstance(model, Demucs) else n
    return torch.randn(batch, 2, n, generator=torch.Generator().manual_seed(3))


def _call(model, runtime, x):
    """The family's model function for one batch of segments (mean 0, std 1: no de-normalisation)."""
    return family.DemucsModel("tiny", [model]).forward(model, 0.0, 1.0, runtime)(x)


def test_torch_float32_split_is_demucs_forward(net):
    _, model = net
    x = _segment(model)
    with torch.no_grad():
        assert torch.equal(demucs_core.forward(model, x), model(x))
        assert torch.equal(_call(model, backends.EXACT, x), model(x))


def test_shorter_than_training_length_is_cut_back():
    model = _build("htdemucs")
    x = _segment(model, 0.3)
    with torch.no_grad():
        assert torch.equal(_call(model, backends.EXACT, x), model(x))


def _engine(passes, length: int) -> torch.Tensor:
    blocks: list[torch.Tensor] = []
    engine.run(passes, length, blocks.append)
    return torch.cat(blocks, -1)


def test_family_passes_are_todays_and_apply_models(net):
    """The family's passes (segments, a shift) with the split core against the same passes calling
    demucs' forward whole (the model function before the split): bit for bit; and demucs' apply_model."""
    _, model = net
    wav = torch.randn(2, int(1.3 * SR), generator=torch.Generator().manual_seed(4))
    loaded, signal = family.DemucsModel("tiny", [model]), TensorSignal(wav)
    mean, std = family.mix_stats(signal)
    with torch.no_grad():
        random.seed(2)
        passes = loaded.passes(signal, runtime=backends.EXACT, shifts=1, overlap=0.25)
        got = _engine(passes, wav.shape[-1])
        whole = [dataclasses.replace(p, model=lambda x: model(x) * std + mean) for p in passes]
        assert torch.equal(got, _engine(whole, wav.shape[-1]))
        random.seed(2)
        want = demucs_apply.apply_model(model, ((wav - mean) / std)[None], shifts=1, overlap=0.25)[0] * std + mean
    for k in range(len(SOURCES)):
        assert snr(want[k], got[k]) > 100


def _openvino(precision: str):
    pytest.importorskip("openvino")
    return backends.choose("openvino", precision, device=CPU, family="demucs")


@pytest.mark.slow  # each OpenVINO conversion of a tiny network takes 20-45 s on 2 shared cores
def test_openvino_float32_matches_torch(net):
    name, model = net
    runtime = _openvino("float32")
    x = _segment(model)
    with torch.no_grad():
        want = model(x)
    got = _call(model, runtime, x)
    assert not runtime.fell_back, runtime.warnings
    assert snr(want, got) >= 100, name


@pytest.mark.parametrize("backend", ["torch", pytest.param("openvino", marks=pytest.mark.slow)])  # a 35 s conversion
def test_bfloat16_runs(backend):
    model = _build("htdemucs")
    runtime = _openvino("bfloat16") if backend == "openvino" else backends.choose(
        "torch", "bfloat16", device=CPU, family="demucs")
    x = _segment(model)
    with torch.no_grad():
        want = model(x)
        got = _call(model, runtime, x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.isfinite(got).all() and not runtime.fell_back
    assert snr(want, got) > 10  # bfloat16's 8-bit mantissa through a random network: loose, but the same signal
    np.asarray(got)  # a plain float32 tensor, as the engine takes it
