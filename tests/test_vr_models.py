"""DSU's UVR VR-architecture networks against fixtures made by python-audio-separator's own
`vr_network/nets.py` and `nets_new.py`, run outside this repo (see fixtures/vr/README.md): tiny
random-weight `.pth` state dicts with the reference's masks on a fixed input, and the state-dict
layouts of the real size classes."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dsu.errors import DSUError
from dsu.models.vr_cascade import SIZE_CLASSES, ASPPUNet, CascadedASPPNet
from dsu.models.vr_cascade_v51 import CascadedNetV51
from dsu.models.vr_nets import build_vr_net
from helpers import snr
from model_checks import layout

FIXTURES = Path(__file__).parent / "fixtures" / "vr"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
PUBLIC = json.loads(gzip.decompress((FIXTURES / "public_keys.json.gz").read_bytes()))


def load_case(name):
    case = FIXTURES / name
    config = json.loads((case / "config.json").read_text())
    state = torch.load(case / "model.pth", map_location="cpu", weights_only=True)
    # the reference ran on these float16-exact values in float32
    x = torch.from_numpy(np.load(case / "input.npy")).float()
    return config, state, x, np.load(case / "expected.npy")


def meta_state(keys):
    return {k: torch.empty(shape, device="meta") for k, shape in keys}


@pytest.mark.parametrize("name", CASES)
def test_tiny_checkpoint_reproduces_audio_separator(name):
    config, state, x, expected = load_case(name)
    if config["kind"] == "v50_unet":  # the deep U-Net alone (its whole cascade is too big a fixture)
        model = ASPPUNet(2, config["channels"], *SIZE_CLASSES[config["size_class"]][1:])
        model.load_state_dict(state, strict=True)
        run = model.eval()
    else:
        model = build_vr_net(state, config["bins"], config.get("nout"), config.get("nout_lstm"))
        assert model.offset == (64 if config["kind"] == "v51" else 128)
        run = model.predict_mask
    assert layout(model) == [[k, list(v.shape)] for k, v in state.items()]  # the reference's order too
    with torch.no_grad():
        out = run(x).numpy()
        if config["kind"] != "v50_unet":
            full = model(x)
            assert full.shape == x.shape
            np.testing.assert_array_equal(full[..., model.offset:-model.offset].numpy(), out)
    assert out.shape == expected.shape
    assert snr(expected, out) > 100


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_real_sizes_have_the_reference_layout_and_are_recognised(name):
    entry = PUBLIC[name]
    with torch.device("meta"):  # layout only: no memory, no random init
        if entry["kind"] == "v51":
            ours = CascadedNetV51(entry["bins"], entry["nout"], entry["nout_lstm"])
            built = build_vr_net(meta_state(entry["keys"]), entry["bins"], entry["nout"], entry["nout_lstm"])
            inferred = build_vr_net(meta_state(entry["keys"]), entry["bins"])  # without model data
            assert layout(inferred) == entry["keys"]
        else:
            ours = CascadedASPPNet.for_size_class(entry["size_class"], entry["bins"])
            built = build_vr_net(meta_state(entry["keys"]), entry["bins"])
    assert layout(ours) == entry["keys"]
    assert type(built) is type(ours) and layout(built) == entry["keys"]


def test_size_classes_sharing_a_layout():
    with torch.device("meta"):
        for twin, size in ((123812, 123821), (537227, 537238)):
            assert layout(CascadedASPPNet.for_size_class(twin, 672)) == \
                layout(CascadedASPPNet.for_size_class(size, 672))


def v51_keys():
    return PUBLIC["v51_4band_v3_nout48"]["keys"]


@pytest.mark.parametrize("change, bins, nout, nout_lstm, words", [
    ("none", 672, 64, None, "nout=64 but .* nout=48"),
    ("none", 672, None, 256, "nout_lstm=256 .* nout_lstm=128"),
    ("none", 1024, None, None, "bins=672 .* not bins=1024.*vr_model_param"),
    ("drop", 672, None, None, "missing keys: stg2_high_band_net"),
    ("extra", 672, None, None, "unexpected keys: stg4"),
    ("shape", 672, None, None, r"wrong shapes: stg2_low_band_net\.0\.enc1\.conv\.0\.weight"),
])
def test_v51_state_that_does_not_fit_is_config_mismatch(change, bins, nout, nout_lstm, words):
    keys = [list(k) for k in v51_keys()]
    if change == "drop":
        keys = [k for k in keys if not k[0].startswith("stg2_high_band_net.enc3.")]
    elif change == "extra":
        keys.append(["stg4.weight", [2]])
    elif change == "shape":
        keys = [[k, [s[0], s[1] + 1, *s[2:]] if k == "stg2_low_band_net.0.enc1.conv.0.weight" else s]
                for k, s in keys]
    with torch.device("meta"), pytest.raises(DSUError, match=words) as error:
        build_vr_net(meta_state(keys), bins, nout, nout_lstm)
    assert error.value.code == "config_mismatch"


def test_v50_state_that_does_not_fit_is_config_mismatch():
    keys = PUBLIC["v50_123821"]["keys"]
    cases = [
        (keys, 672, 48, 128, "marks a v5.1 network"),
        (keys, 680, None, None, "bins=680 .* multiple of 32"),
        (PUBLIC["v50_129605"]["keys"], 672, None, None, "bins=672 .* multiple of 64"),
        ([k for k in keys if not k[0].startswith("stg3_bridge.")], 672, None, None, "missing keys: stg3_bridge"),
        ([k for k in keys if ".aspp.conv5." not in k[0]], 672, None, None, "missing keys: .*aspp.conv5"),
        ([["conv.weight", [4, 2, 3, 3]]], 672, None, None, "not a UVR VR-architecture network"),
    ]
    for state_keys, bins, nout, nout_lstm, words in cases:
        with torch.device("meta"), pytest.raises(DSUError, match=words) as error:
            build_vr_net(meta_state(state_keys), bins, nout, nout_lstm)
        assert error.value.code == "config_mismatch"


def test_tiny_state_is_loaded_into_the_built_network():
    config, state, x, _ = load_case("v51_nout4_lstm12_bins32")
    model = build_vr_net(state, config["bins"])
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
