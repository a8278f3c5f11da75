"""The UVR model identity (md5 as UVR computes it) and the tables shipped in the package."""
import hashlib
import json
from importlib import resources

import pytest

from dsu.errors import DSUError
from dsu.families import uvr


def test_small_file_hash_is_the_md5_of_the_whole_file(tmp_path):
    f = tmp_path / "tiny.pth"
    f.write_bytes(b"\x01\x02" * 5000)
    assert uvr.model_hash(f) == hashlib.md5(f.read_bytes()).hexdigest()


def test_large_file_hash_covers_only_its_last_10240000_bytes(tmp_path):
    f = tmp_path / "big.onnx"
    tail = bytes(range(256)) * 40_000  # exactly 10,240,000 bytes
    f.write_bytes(b"head that UVR does not hash" + tail)
    assert uvr.model_hash(f) == hashlib.md5(tail).hexdigest()
    assert uvr.model_hash(f) != hashlib.md5(f.read_bytes()).hexdigest()


def band_files():
    return {p.name[:-5]: json.loads(p.read_text()) for p in
            resources.files("dsu").joinpath("data", "uvr", "bands").iterdir() if p.name.endswith(".json")}


def test_every_vr_model_names_a_shipped_band_parameter_set():
    bands = band_files()
    for entry in uvr.table("vr").values():
        assert entry["band_params"] in bands, entry
        assert entry["primary_stem"]
        assert ("nout" in entry) == ("nout_lstm" in entry)


def test_band_parameter_sets_are_complete_and_ordered():
    bands = band_files()
    assert {"4band_v2", "4band_v3", "1band_sr44100_hl512"} <= set(bands)
    for name, params in bands.items():
        assert params["bins"] > 0 and params["samplerate"] > 0, name
        assert params["bands"], name
        top = params["bands"][-1]
        assert top["samplerate"] == params["samplerate"], name  # the last band runs at the model's rate
        for band in params["bands"]:
            start, stop = band["crop"]
            assert 0 <= start < stop <= band["n_fft"] // 2 + 1, name


def test_mdx_table_gives_the_stft_geometry():
    table = uvr.table("mdx")
    assert len(table) > 30
    for entry in table.values():
        assert entry["n_fft"] // 2 >= entry["dim_f"], entry
        assert entry["dim_t"] & (entry["dim_t"] - 1) == 0, entry  # a power of two frames
        assert entry["compensate"] > 0


def test_model_data_lays_request_overrides_over_the_table(tmp_path):
    f = tmp_path / "unknown.pth"
    f.write_bytes(b"not a model UVR published")
    assert uvr.model_data("vr", f, {"band_params": None}) == {}
    entry = uvr.model_data("vr", f, {"band_params": "4band_v2", "primary_stem": "Vocals", "nout": None})
    assert entry == {"band_params": "4band_v2", "primary_stem": "Vocals"}


def test_missing_parameters_are_named_with_the_fields_that_give_them(tmp_path):
    f = tmp_path / "mystery.onnx"
    f.write_bytes(b"xyz")
    with pytest.raises(DSUError) as e:
        uvr.require({"primary_stem": "Vocals", "mdx_dim_f_set": None}, f, "mdx")
    assert e.value.code == "bad_value"
    assert "mystery.onnx" in e.value.message and "`mdx_dim_f_set`" in e.value.message
    assert "primary_stem" not in e.value.message
    assert uvr.model_hash(f) in e.value.message


@pytest.mark.parametrize("primary, secondary", [("Vocals", "Instrumental"), ("Instrumental", "Vocals"),
                                                ("No Reverb", "Reverb"), ("Echo", "No Echo")])
def test_secondary_stem_follows_uvr_naming(primary, secondary):
    assert uvr.secondary_stem(primary) == secondary
