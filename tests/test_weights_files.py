"""Checkpoints as training runs leave them: weights beside training metadata (Lightning hyper-parameters,
omegaconf configs, numpy scalars), read without building any of it; anything else refused unread."""
import argparse
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dsu.errors import DSUError
from dsu.families import load, resolve
from dsu.models.apollo import Apollo
from dsu.families.packages import load_weights_file

# Saving needs the metadata's classes importable; a throwaway module stands in for omegaconf, and the
# loading runs in a fresh interpreter where no such module exists.
SAVE = textwrap.dedent("""
    import sys, types, typing, argparse, torch, numpy as np
    sys.modules["omegaconf"] = types.ModuleType("omegaconf")
    module = sys.modules["omegaconf.dictconfig"] = types.ModuleType("omegaconf.dictconfig")
    class DictConfig(dict):
        def __reduce__(self):
            return (DictConfig, (), {"content": dict(self), "ref_type": typing.Any})
        def __setstate__(self, state):
            self.update(state["content"])
    DictConfig.__module__ = "omegaconf.dictconfig"
    module.DictConfig = DictConfig
    state = torch.load(sys.argv[1], weights_only=True)
    torch.save({"state_dict": {**{"audio_model." + k: v for k, v in state.items()},
                               "discriminator.conv.weight": torch.zeros(3)},
                "hyper_parameters": {"config": DictConfig(model=DictConfig(feature_dim=16))},
                "callbacks": {"ModelCheckpoint": {"best_model_score": np.float64(1.25)}},
                "hparams": argparse.Namespace(lr=1e-3), "epoch": 3}, sys.argv[2])
""")


@pytest.fixture
def lightning_ckpt(tmp_path):
    torch.manual_seed(0)
    model = Apollo(sr=16000, win=20, feature_dim=16, layer=2)
    torch.save(model.state_dict(), tmp_path / "state.pth")
    path = tmp_path / "apollo_lew_test.ckpt"
    subprocess.run([sys.executable, "-c", SAVE, str(tmp_path / "state.pth"), str(path)], check=True)
    return model, path


@pytest.mark.slow  # a process that imports torch and omegaconf writes the checkpoint
def test_lightning_checkpoint_with_omegaconf_metadata_loads(lightning_ckpt):
    model, path = lightning_ckpt
    assert "omegaconf" not in sys.modules
    obj = load_weights_file(path, "an Apollo checkpoint")
    assert "omegaconf" not in sys.modules  # the metadata's module was never imported
    assert obj["epoch"] == 3
    restorer = load(resolve({"model_path": str(path), "model_type": "apollo", "sr": 16000}, None),
                    torch.device("cpu"))
    for key, value in model.state_dict().items():
        assert torch.equal(restorer.model.state_dict()[key], value)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo code ran > /dev/null",))


def test_a_checkpoint_that_would_run_code_is_refused_unread(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": Payload()}, path)
    with pytest.raises(DSUError) as e:
        load_weights_file(path, "an MSST checkpoint")
    assert e.value.code == "bad_value"
    assert "system" in e.value.message and "nothing in it ran" in e.value.message


def test_a_model_class_is_not_metadata(tmp_path):
    path = tmp_path / "pickled_module.ckpt"
    torch.save({"model": argparse.ArgumentParser}, path)
    with pytest.raises(DSUError, match="argparse.ArgumentParser"):
        load_weights_file(path, "an MSST checkpoint")


def test_torch_version_is_read_as_the_string_it_is(tmp_path):
    # the official Apollo pytorch_model.bin: look2hear's serialize() stores torch.__version__ in `infos`
    from torch.torch_version import TorchVersion
    path = tmp_path / "pytorch_model.bin"
    torch.save({"model_name": "Apollo", "state_dict": {"w": torch.ones(2)}, "model_args": {"sr": 44100},
                "infos": {"software_versions": {"torch_version": TorchVersion("2.4.0"),
                                                "pytorch_lightning_version": "2.1.0"}}}, path)
    obj = load_weights_file(path, "an Apollo checkpoint")
    version = obj["infos"]["software_versions"]["torch_version"]
    assert isinstance(version, str) and version == "2.4.0" and torch.equal(obj["state_dict"]["w"], torch.ones(2))
    torch.save({"infos": {"torch_version": TorchVersion("2.4.0")}, "hyper_parameters": Payload()}, path)
    with pytest.raises(DSUError, match="system"):  # a known value type lets nothing else through
        load_weights_file(path, "an Apollo checkpoint")
