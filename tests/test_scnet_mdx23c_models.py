"""DSU's SCNet and MDX23C against fixtures made by MSST's own code (commit ccc011a) run outside this repo:
tiny random-weight checkpoints built by MSST's get_model_from_config from YAML configs in MSST's schema,
MSST's forward output on a fixed input, and the state-dict layout of public configs."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from dsu.models.mdx23c import MDX23C
from dsu.models.scnet import SCNet
from model_checks import fixture_snr_db, layout

FIXTURES = Path(__file__).parent / "fixtures" / "scnet_mdx23c"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def build(name: str, config: dict) -> torch.nn.Module:
    """As the MSST family glue builds them."""
    return SCNet(**config["model"]) if "scnet" in name else MDX23C.from_config(config)


def read_config(case: Path) -> dict:
    # MSST configs use python tags (!!python/tuple), so they need more than the safe loader
    return yaml.load((case / "config.yaml").read_text(), Loader=yaml.FullLoader)


@pytest.mark.parametrize("name", CASES)
def test_tiny_checkpoint_reproduces_msst(name):
    case = FIXTURES / name
    assert fixture_snr_db(build(name, read_config(case)), case) > 100


def test_public_configs_have_msst_state_dict_layout():
    entries = json.loads((FIXTURES / "public_keys.json").read_text())
    assert {"config_vocals_mdx23c.yaml", "scnet_xl"} <= set(entries)
    for name, entry in entries.items():
        with torch.device("meta"):  # layout only: no memory, no random init
            model = build(name, entry["config"])
        assert layout(model) == entry["keys"], name


def test_wrong_config_fails_strict_load():
    case = FIXTURES / "mdx23c_stereo"
    config = read_config(case)
    config["model"]["num_scales"] += 1
    state = torch.load(case / "model.ckpt", map_location="cpu", weights_only=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        build("mdx23c", config).load_state_dict(state, strict=True)


def test_output_keeps_length_and_stem_axis():
    scnet = SCNet(sources=["vocals"], audio_channels=1, dims=[2, 4], nfft=64, hop_size=16, win_size=64,
                  num_dplayer=2).eval()
    mdx = MDX23C(n_fft=64, hop_length=16, dim_f=32, num_targets=1, num_subbands=2, num_scales=1, scale=[2, 2],
                 num_blocks_per_scale=1, num_channels=4, growth=2, bottleneck_factor=2, norm="InstanceNorm",
                 act="gelu").eval()
    with torch.no_grad():
        for length in (16 * 7, 16 * 7 + 5):  # 8 STFT frames, as MDX23C's U-Net needs  # MSST's MDX23C would drop the 5 samples past its last hop
            assert scnet(torch.randn(2, 1, length)).shape == (2, 1, 1, length)
            assert mdx(torch.randn(2, 2, length)).shape == (2, 1, 2, length)
        with pytest.raises(ValueError, match="multiple of 2"):
            mdx(torch.randn(1, 2, 16 * 8))
    with pytest.raises(ValueError, match="dims\\[0\\]"):
        SCNet(audio_channels=2, dims=[2, 4])
