"""Model folders as python-audio-separator and UVR keep them: models named by file name, MDX-C
checkpoints with their YAML beside them, UVR model data kept in the folder, every file listed for what
it is."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from dsu import families
from dsu.errors import DSUError
from dsu.families import model_folder, uvr

FIXTURES = Path(__file__).parent / "fixtures"
ROFORMER = "model_bs_roformer_ep_317_sdr_12.9755"
MDX_SETTINGS = {"mdx_n_fft_scale_set": 2048, "mdx_dim_f_set": 64, "mdx_dim_t_set": 3, "compensate": 1.03,
                "primary_stem": "Vocals"}
VR_SETTINGS = {"vr_model_param": "4band_v2", "primary_stem": "Instrumental"}


def tiny_vr(path: Path) -> Path:
    from dsu.models.vr_nets import CascadedASPPNet
    torch.manual_seed(3)
    torch.save(CascadedASPPNet(672, 4, 0, 4).state_dict(), path)
    return path


def tiny_demucs(folder: Path) -> None:
    """A Demucs package and a bag naming it, as demucs publishes them."""
    from demucs.demucs import Demucs
    from demucs.states import get_state
    torch.manual_seed(0)
    model = Demucs(sources=["drums", "bass", "other", "vocals"], samplerate=8000, segment=2, channels=4, depth=2,
                   lstm_layers=1)
    args, kwargs = model._init_args_kwargs
    torch.save({"klass": Demucs, "args": args, "kwargs": kwargs, "state": get_state(model, None, False)},
               folder / "tiny01.th")
    (folder / "tiny_ft.yaml").write_text(yaml.safe_dump({"models": ["tiny01"]}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An audio-separator model folder: a RoFormer .ckpt + same-name .yaml, a VR .pth and an MDX .onnx
    whose settings are only in the folder's JSON files, a Demucs bag, and things that are no models."""
    root = tmp_path_factory.mktemp("audio_separator_models")
    shutil.copy(FIXTURES / "msst" / "bs_roformer" / "model.ckpt", root / f"{ROFORMER}.ckpt")
    shutil.copy(FIXTURES / "msst" / "bs_roformer" / "config.yaml", root / f"{ROFORMER}.yaml")
    shutil.copy(FIXTURES / "mdx" / "model.onnx", root / "UVR-MDX-NET-Tiny.onnx")
    tiny_vr(root / "1_HP-Tiny.pth")
    (root / "vr_model_data.json").write_text(json.dumps({uvr.model_hash(root / "1_HP-Tiny.pth"): VR_SETTINGS}))
    (root / "mdx_model_data.json").write_text(json.dumps({
        uvr.model_hash(root / "UVR-MDX-NET-Tiny.onnx"): MDX_SETTINGS,
        "0123456789abcdef0123456789abcdef": {"config_yaml": "model_2_stem_full_band_8k.yaml"}}))
    (root / "download_checks.json").write_text(json.dumps({"vr_download_list": {"x": "1_HP-Tiny.pth"}}))
    tiny_demucs(root)
    (root / "broken.yaml").write_text("models: [a, b\nsegment: 3\n")
    (root / "notes.yaml").write_text("just: notes\n")
    (root / "orphan.ckpt").write_bytes(b"not a checkpoint")
    return root


def noise_file(path: Path, subtype: str) -> Path:
    """Half a second of stereo noise at 44.1 kHz with samples of `subtype`."""
    rng = np.random.default_rng(0)
    sf.write(path, (0.2 * rng.standard_normal((22050, 2))).astype(np.float32), 44100, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    return noise_file(tmp_path_factory.mktemp("input") / "song.wav", "PCM_16")


# ---- names and configs ---------------------------------------------------------------------------

def test_models_are_named_by_file_name_for_every_architecture(folder):
    ref = families.resolve({"model": f"{ROFORMER}.ckpt"}, folder)
    assert (ref.family, ref.name, ref.option("model_type")) == ("msst", ROFORMER, "bs_roformer")
    assert [Path(f).name for f in ref.files] == [f"{ROFORMER}.ckpt", f"{ROFORMER}.yaml"]
    assert families.resolve({"model": ROFORMER}, folder).files == ref.files
    assert families.resolve({"model": "1_HP-Tiny.pth"}, folder).family == "vr"
    assert families.resolve({"model": "UVR-MDX-NET-Tiny.onnx"}, folder).family == "mdx"
    bag = families.resolve({"model": "tiny_ft.yaml"}, folder)
    assert (bag.family, bag.name, bag.option("bag")) == ("demucs", "tiny_ft", True)
    assert families.resolve({"model": "tiny01.th"}, folder).family == "demucs"
    # the same names through a request's own folder (python-audio-separator's model_file_dir)
    assert families.resolve({"model": f"{ROFORMER}.ckpt", "models_dir": str(folder)}, None).files == ref.files


def test_model_path_to_a_checkpoint_finds_its_config(folder):
    ref = families.resolve({"model_path": str(folder / f"{ROFORMER}.ckpt")}, None)
    assert Path(ref.files[1]).name == f"{ROFORMER}.yaml" and ref.option("model_type") == "bs_roformer"
    model = families.load(ref, torch.device("cpu"))
    assert model.stems == ["vocals"] and model.labels == {"instrumental": "Instrumental"}  # as UVR's copy names it


@pytest.mark.parametrize("config_name", ["{stem}_config.yaml", "config_{stem}.yaml", "{stem}.yml"])
def test_published_config_names(tmp_path, config_name):
    shutil.copy(FIXTURES / "msst" / "mel_band_roformer" / "model.ckpt", tmp_path / "kim_vocals.ckpt")
    shutil.copy(FIXTURES / "msst" / "mel_band_roformer" / "config.yaml",
                tmp_path / config_name.format(stem="kim_vocals"))
    ref = families.resolve({"model": "kim_vocals.ckpt"}, tmp_path)
    assert ref.option("model_type") == "mel_band_roformer"  # from the YAML's keys: the name says nothing


def test_configs_paired_by_uvr_and_audio_separator(tmp_path):
    # UVR's pairing of this published checkpoint, shipped (the YAML sits where UVR keeps it)
    configs = tmp_path / "model_data" / "mdx_c_configs"
    configs.mkdir(parents=True)
    shutil.copy(FIXTURES / "msst" / "mdx23c" / "model.ckpt", tmp_path / "MDX23C-8KFFT-InstVoc_HQ.ckpt")
    shutil.copy(FIXTURES / "msst" / "mdx23c" / "config.yaml", configs / "model_2_stem_full_band_8k.yaml")
    ref = families.resolve({"model": "MDX23C-8KFFT-InstVoc_HQ.ckpt"}, tmp_path)
    assert ref.option("model_type") == "mdx23c" and Path(ref.files[1]).parent == configs
    # a folder's own download_checks.json pairs a checkpoint DSU does not ship
    shutil.copy(FIXTURES / "msst" / "scnet" / "model.ckpt", tmp_path / "my_drums.ckpt")
    shutil.copy(FIXTURES / "msst" / "scnet" / "config.yaml", tmp_path / "drums_cfg.yaml")
    (tmp_path / "download_checks.json").write_text(json.dumps(
        {"roformer_download_list": {"Mine": {"my_drums.ckpt": "drums_cfg.yaml"}}}))
    assert families.resolve({"model": "my_drums.ckpt"}, tmp_path).option("model_type") == "scnet"
    # UVR's model data names the config by the checkpoint's hash
    shutil.copy(FIXTURES / "msst" / "bs_roformer" / "model.ckpt", tmp_path / "renamed.ckpt")
    shutil.copy(FIXTURES / "msst" / "bs_roformer" / "config.yaml", configs / "bs_cfg.yaml")
    (tmp_path / "model_data" / "model_data.json").write_text(json.dumps(
        {uvr.model_hash(tmp_path / "renamed.ckpt"): {"config_yaml": "bs_cfg.yaml", "is_roformer": True}}))
    assert families.resolve({"model": "renamed.ckpt"}, tmp_path).option("model_type") == "bs_roformer"


def test_a_checkpoint_without_its_config_says_where_it_looked(tmp_path):
    shutil.copy(FIXTURES / "msst" / "bs_roformer" / "model.ckpt", tmp_path / "lonely_roformer.ckpt")
    for request in ({"model": "lonely_roformer.ckpt"}, {"model_path": str(tmp_path / "lonely_roformer.ckpt")}):
        with pytest.raises(DSUError) as e:
            families.resolve(request, tmp_path)
        assert "lonely_roformer.yaml" in e.value.message and "config_path" in e.value.message


# ---- listing -------------------------------------------------------------------------------------

def test_every_file_is_listed_for_what_it_is(folder):
    listed = {m["file"]: m for m in families.list_models(folder) if "file" in m}
    assert listed[f"{ROFORMER}.ckpt"]["family"] == "msst" and listed[f"{ROFORMER}.ckpt"]["type"] == "bs_roformer"
    assert listed[f"{ROFORMER}.ckpt"]["stems"] == ["vocals"]
    assert f"{ROFORMER}.yaml" not in listed  # a model config, never a Demucs bag
    assert listed["1_HP-Tiny.pth"]["stems"] == ["Instrumental", "Vocals"]  # from the folder's model data
    assert listed["UVR-MDX-NET-Tiny.onnx"]["stems"] == ["Vocals", "Instrumental"]
    assert listed["tiny_ft.yaml"]["family"] == "demucs" and listed["tiny_ft.yaml"]["type"] == "bag"
    broken = listed["broken.yaml"]
    assert broken["family"] == "unknown" and "not valid YAML at line" in broken["error"]
    assert "python" not in broken["error"] and "constructor" not in broken["error"]
    assert "neither a Demucs bag" in listed["notes.yaml"]["error"]
    assert "config_path" in listed["orphan.ckpt"]["error"]
    assert not any(name.endswith(".json") for name in listed)


def test_yaml_that_builds_objects_is_reported_in_words(tmp_path):
    (tmp_path / "evil.yaml").write_text("models: !!python/object/apply:os.system ['true']\n")
    (entry,) = [m for m in families.list_models(tmp_path) if m.get("file") == "evil.yaml"]
    assert "builds Python objects" in entry["error"]


# ---- UVR model data kept beside the models ---------------------------------------------------------

def test_settings_come_from_the_folders_model_data(folder):
    vr = families.resolve({"model": "1_HP-Tiny"}, folder)
    assert vr.option("band_params") == "4band_v2" and vr.option("primary_stem") == "Instrumental"
    mdx = families.load(families.resolve({"model": "UVR-MDX-NET-Tiny"}, folder), torch.device("cpu"))
    assert (mdx.n_fft, mdx.dim_f, mdx.dim_t, mdx.stems) == (2048, 64, 8, ["Vocals", "Instrumental"])
    # the request still wins
    assert families.resolve({"model": "1_HP-Tiny", "primary_stem": "Vocals"}, folder).option("primary_stem") == "Vocals"
    # given by model_path, the file's own folder is read too
    assert families.resolve({"model_path": str(folder / "1_HP-Tiny.pth")}, None).option("band_params") == "4band_v2"


def test_uvr_model_data_subfolders(tmp_path):
    vr_dir = tmp_path / "VR_Models"
    (vr_dir / "model_data").mkdir(parents=True)
    path = tiny_vr(vr_dir / "custom.pth")
    (vr_dir / "model_data" / "model_data.json").write_text(json.dumps(
        {uvr.model_hash(path): {"vr_model_param": "1band_sr44100_hl512", "primary_stem": "No Reverb"}}))
    ref = families.resolve({"model_path": str(path)}, tmp_path)
    assert ref.option("band_params") == "1band_sr44100_hl512" and ref.option("primary_stem") == "No Reverb"
    # the models dir in UVR's layout: VR_Models/model_data/ is read for a file given elsewhere too
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(path, elsewhere / "custom.pth")
    ref = families.resolve({"model_path": str(elsewhere / "custom.pth")}, tmp_path)
    assert ref.option("primary_stem") == "No Reverb"


def test_uvr_models_folder_by_name(tmp_path):
    """UVR's own `models/` folder: VR_Models/ and MDX_Net_Models/ with their model_data/ beside them."""
    vr_dir, mdx_dir = tmp_path / "VR_Models", tmp_path / "MDX_Net_Models"
    configs = mdx_dir / "model_data" / "mdx_c_configs"
    for folder in (vr_dir / "model_data", configs):
        folder.mkdir(parents=True)
    tiny_vr(vr_dir / "5_HP-Tiny.pth")
    shutil.copy(FIXTURES / "mdx" / "model.onnx", mdx_dir / "Kim_Tiny.onnx")
    shutil.copy(FIXTURES / "msst" / "mdx23c" / "model.ckpt", mdx_dir / "MDX23C_Tiny.ckpt")
    shutil.copy(FIXTURES / "msst" / "mdx23c" / "config.yaml", configs / "model_2_stem_tiny.yaml")
    (vr_dir / "model_data" / "model_data.json").write_text(json.dumps(
        {uvr.model_hash(vr_dir / "5_HP-Tiny.pth"): VR_SETTINGS}))
    (mdx_dir / "model_data" / "model_data_new.json").write_text(json.dumps({
        uvr.model_hash(mdx_dir / "Kim_Tiny.onnx"): MDX_SETTINGS,
        uvr.model_hash(mdx_dir / "MDX23C_Tiny.ckpt"): {"config_yaml": "model_2_stem_tiny.yaml"}}))
    assert families.resolve({"model": "5_HP-Tiny"}, tmp_path).option("band_params") == "4band_v2"
    assert families.resolve({"model": "Kim_Tiny.onnx"}, tmp_path).option("mdx_dim_f_set") == 64
    assert families.resolve({"model": "MDX23C_Tiny.ckpt"}, tmp_path).option("model_type") == "mdx23c"
    listed = {m["file"]: m for m in families.list_models(tmp_path) if "file" in m}
    assert listed["5_HP-Tiny.pth"]["stems"] == ["Instrumental", "Vocals"]
    assert listed["Kim_Tiny.onnx"]["stems"] == ["Vocals", "Instrumental"]
    assert listed["MDX23C_Tiny.ckpt"]["type"] == "mdx23c" and "error" not in listed["MDX23C_Tiny.ckpt"]


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be an object of file hashes"),
    ('{"0123456789abcdef0123456789abcdef": 3}', "must be an object of settings"),
    ('{"0123456789abcdef0123456789abcdef": {"mdx_dim_f_set": "big"}}', "`mdx_dim_f_set`"),
])
def test_malformed_model_data_is_an_error_naming_the_file(tmp_path, content, words):
    shutil.copy(FIXTURES / "mdx" / "model.onnx", tmp_path / "net.onnx")
    (tmp_path / "mdx_model_data.json").write_text(content)
    with pytest.raises(DSUError) as e:
        families.resolve({"model": "net"}, tmp_path)
    assert e.value.code == "bad_value" and "mdx_model_data.json" in e.value.message and words in e.value.message


def test_folder_data_comes_before_the_shipped_table(tmp_path, monkeypatch):
    path = tiny_vr(tmp_path / "known.pth")
    shipped = {uvr.model_hash(path): {"md5": uvr.model_hash(path), "band_params": "4band_v3",
                                      "primary_stem": "Vocals"}}
    monkeypatch.setattr(uvr, "table", lambda kind: shipped if kind == "vr" else {})
    assert families.resolve({"model": "known"}, tmp_path).option("band_params") == "4band_v3"
    (tmp_path / "vr_model_data.json").write_text(json.dumps({uvr.model_hash(path): VR_SETTINGS}))
    assert families.resolve({"model": "known"}, tmp_path).option("band_params") == "4band_v2"


def test_pairs_in_download_lists():
    lists = {"mdx23c_download_list": {"A": {"a.ckpt": "a_cfg.yaml"}},
             "other_network_list": {"B": {"b.ckpt": "https://x/b.ckpt", "cfg_b.yaml": "https://x/cfg_b.yaml"}},
             "vr_download_list": {"C": "c.pth"}, "current_version": "x"}
    assert model_folder.pairs_in(lists) == {"a.ckpt": "a_cfg.yaml", "b.ckpt": "cfg_b.yaml"}
    assert model_folder.shipped_pairs()["MDX23C-8KFFT-InstVoc_HQ.ckpt"] == "model_2_stem_full_band_8k.yaml"


# ---- through the audio-separator worker -------------------------------------------------------------

def test_audio_separator_worker_runs_every_architecture_of_the_folder(folder, song, tmp_path):
    from dsu.client import Worker

    out = tmp_path / "out"
    with Worker(["--name", "dsu-audio-separator", "--threads", "1"]) as worker:
        for model, files in [
            (f"{ROFORMER}.ckpt", [f"song_(Vocals)_model_bs_roformer_ep_317_sdr_12.wav",
                                  f"song_(Instrumental)_model_bs_roformer_ep_317_sdr_12.wav"]),
            ("1_HP-Tiny.pth", ["song_(Instrumental)_1_HP-Tiny.wav", "song_(Vocals)_1_HP-Tiny.wav"]),
            ("UVR-MDX-NET-Tiny.onnx", ["song_(Vocals)_UVR-MDX-NET-Tiny.wav",
                                       "song_(Instrumental)_UVR-MDX-NET-Tiny.wav"]),
            ("tiny_ft.yaml", [f"song_({s})_tiny_ft.wav" for s in ("Drums", "Bass", "Other", "Vocals")]),
        ]:
            done = worker.separate(input=str(song), output_dir=str(out), model=model, model_file_dir=str(folder),
                                   mdx_segment_size=8)
            assert done["files"] == files and done["output_dir"] == str(out.resolve())
            for name in done["files"]:
                path = Path(done["output_dir"]) / name
                assert path.is_file() and sf.info(path).subtype == "PCM_16"  # the input's bit depth
