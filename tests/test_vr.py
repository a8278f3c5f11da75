"""UVR VR-architecture `.pth` models through the family, `separate_file` and a real worker, against
what python-audio-separator's VRSeparator produced for the same weights and input
(tests/fixtures/vr_pipeline/README.md)."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dsu import families
from dsu.families import vr_bands
from dsu.errors import DSUError
from dsu.families import vr
from dsu.models.vr_cascade import CascadedASPPNet
from dsu.models.vr_cascade_v51 import CascadedNetV51
from dsu.jobs.separate import separate_file
from helpers import snr

FIXTURES = Path(__file__).parent / "fixtures" / "vr_pipeline"
RUNS = json.loads((FIXTURES / "runs.json").read_text())
CPU = torch.device("cpu")

torch.set_num_threads(1)


def seeded_state(template: dict, seed: int) -> dict:
    """The fixture's weights: drawn with numpy's legacy RandomState, whose stream never changes, in the
    same order and ranges as the script that ran python-audio-separator on them."""
    rs = np.random.RandomState(seed)
    out = {}
    for key in sorted(template):
        t = template[key]
        if not t.is_floating_point():
            out[key] = t.clone()
            continue
        if key.endswith("running_var"):
            v = rs.uniform(0.5, 1.5, t.shape)
        elif key.endswith("running_mean"):
            v = rs.uniform(-0.1, 0.1, t.shape)
        elif t.dim() == 1 and key.endswith(".weight"):
            v = rs.uniform(0.5, 1.5, t.shape)
        elif t.dim() == 1:
            v = rs.uniform(-0.2, 0.2, t.shape)
        else:
            bound = 1 / np.sqrt(t[0].numel())
            v = rs.uniform(-bound, bound, t.shape)
        out[key] = torch.from_numpy(v.astype(np.float32))
    return out


def write_model(folder: Path, name: str) -> Path:
    """tiny_v50.pth (a v5.0 CascadedASPPNet) or tiny_v51.pth (a v5.1 CascadedNet), as UVR saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    net = CascadedASPPNet(672, 4, 0, 4) if name == "tiny_v50.pth" else CascadedNetV51(672, 4, 8)
    path = folder / name
    torch.save(seeded_state(net.state_dict(), 50 if name == "tiny_v50.pth" else 51), path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vr_models")
    for name in ("tiny_v50.pth", "tiny_v51.pth"):
        write_model(folder, name)
    return folder


@pytest.fixture(scope="module")
def v50(tmp_path_factory):
    """The narrowest v5.0 network (2 channels), for the tests that run it many times."""
    path = tmp_path_factory.mktemp("vr_fast") / "narrow.pth"
    state = seeded_state(CascadedASPPNet(672, 2, 0, 4).state_dict(), 2)
    # larger weights than an initialised net's, so the mask follows the music and TTA shows
    torch.save({k: v * 2 if v.dim() > 1 else v for k, v in state.items()}, path)
    return families.load(families.resolve({"model_path": str(path), "vr_model_param": "4band_v2",
                                           "primary_stem": "Instrumental"}, None), CPU)


@pytest.fixture(scope="module")
def mix() -> torch.Tensor:
    audio, _ = sf.read(FIXTURES / "mix.wav", dtype="float32", always_2d=True)
    return torch.from_numpy(audio.T.copy())


def network_settings(options: dict) -> dict:
    """The options `VRModel.separate` takes (the peak normalisation is the writer's)."""
    out = vr.settings(options)
    out.pop("normalization_threshold")
    return out


def read_stems(result) -> dict[str, np.ndarray]:
    return {stem: sf.read(p, dtype="float32", always_2d=True)[0].T for stem, p in zip(result.stems, result.paths)}


# ---- against python-audio-separator ----------------------------------------------------------------

@pytest.mark.parametrize("run", sorted(RUNS))
def test_separation_matches_python_audio_separator(tmp_path, models, run):
    """Whole pipeline: bands, windows, TTA, aggression, post-process, high-end mirroring, peak
    normalisation, resampling between bands."""
    spec = RUNS[run]
    ref = families.resolve({"model_path": str(models / spec["model"]), **spec["model_data"]}, None)
    model = families.load(ref, CPU)
    result = separate_file(model, FIXTURES / "mix.wav", tmp_path, bit_depth=32, options=spec["options"])
    stem_name = Path(spec["model"]).stem
    assert result.files == [f"mix_({s})_{stem_name}.wav" for s in spec["stems"]]
    got = read_stems(result)
    want = np.load(FIXTURES / f"{run}.npy").astype(np.float32)
    for stem, expected in zip(spec["stems"], want):
        n = expected.shape[-1]  # UVR's output stops at the last whole hop; DSU pads it to the input's length
        assert snr(expected, got[stem][:, :n]) > 65, stem  # the fixture is float16: about 70 dB of headroom
        assert np.abs(got[stem][:, n:]).max(initial=0) == 0


def test_resample_poly_is_scipys():
    data = np.load(FIXTURES / "resample_poly.npz")
    x = torch.from_numpy(data["x"])
    for key in data.files:
        if key == "x":
            continue
        up, down = map(int, key.split("_"))
        got = vr_bands.resample_poly(x, up, down).numpy()
        assert got.shape == data[key].shape
        np.testing.assert_allclose(got, data[key], atol=2e-6)


# ---- options ---------------------------------------------------------------------------------------

def test_options_change_the_output(v50, mix):
    long_mix = mix.repeat(1, 4)  # 1 s: more than the 64 frames a post-processed run needs
    base = v50.separate(long_mix, **network_settings({"window_size": 320}))
    assert base.shape == (2, 2, long_mix.shape[-1])
    for option in ({"aggression": 30}, {"enable_tta": True}, {"high_end_process": True},
                   {"enable_post_process": True, "post_process_threshold": 0.01}, {"window_size": 512}):
        changed = v50.separate(long_mix, **network_settings({"window_size": 320, **option}))
        assert (changed - base).abs().max() > 1e-4, option


def test_option_aliases():
    assert vr.settings({"vr_aggression": 30, "vr_enable_tta": "true", "vr_window_size": 320, "vr_post_process": 1,
                        "vr_high_end_process": True, "vr_batch_size": 4, "vr_post_process_threshold": 0.3}) == \
        vr.settings({"aggression": 30, "enable_tta": True, "window_size": 320, "enable_post_process": True,
                     "high_end_process": True, "batch_size": 4, "post_process_threshold": 0.3})
    assert vr.settings({"aggression": 7, "vr_aggression": 30})["aggression"] == 7  # the plain name wins
    defaults = vr.settings({})
    assert (defaults["window_size"], defaults["aggression"], defaults["batch_size"]) == (512, 5, 1)


def test_mask_operations_are_uvrs():
    data = np.load(FIXTURES / "mask_ops.npz")
    mask = torch.from_numpy(data["mask"])
    np.testing.assert_allclose(vr_bands.merge_artifacts(mask.clone(), 0.2).numpy(), data["merged"], atol=1e-6)
    for value in (5, -20):
        for non_accompaniment, primary in ((0, "Instrumental"), (1, "Vocals")):
            got = vr_bands.adjust_aggression(mask.clone(), value, primary, 1).numpy()
            np.testing.assert_allclose(got, data[f"aggr_{value}_{non_accompaniment}"], rtol=1e-5, atol=1e-7)


def test_without_aggression_the_stems_share_the_mix(v50, mix):
    """Mask and one minus the mask: the two stems add up to the mix."""
    stems = v50.separate(mix, **network_settings({"aggression": 0}))
    hop = vr_bands.load("4band_v2").top.hop
    whole = mix.shape[-1] // hop * hop
    assert snr(mix[:, 2000:whole - 2000].numpy(), stems.sum(0)[:, 2000:whole - 2000].numpy()) > 35


@pytest.mark.parametrize("options, words", [
    ({"window_size": 200}, "window_size"), ({"aggression": 500}, "aggression"),
    ({"enable_tta": "maybe"}, "enable_tta"), ({"batch_size": 0}, "batch_size")])
def test_bad_options_are_named(v50, options, words):
    from dsu.engine import TensorSignal
    with pytest.raises(DSUError) as e:
        v50.passes(TensorSignal(torch.zeros(2, 1000)), **options)
    assert e.value.code == "bad_value" and words in e.value.message


@pytest.mark.parametrize("options", [{"aggression": 500}, {"vr_window_size": 8192}, {"batch_size": 100},
                                     {"post_process_threshold": "0.2"}, {"vr_aggression": 2.5}])
def test_options_are_refused_in_the_workers_words(v50, options):
    """VR reads its options through the protocol table: a direct call is refused what a `separate`
    request is refused, with the same message."""
    from dsu import protocol
    from dsu.engine import TensorSignal
    with pytest.raises(DSUError) as direct:
        v50.passes(TensorSignal(torch.zeros(2, 1000)), **options)
    with pytest.raises(DSUError) as request:
        protocol.validate(protocol.COMMANDS["separate"], {"input": "a.wav", "output_dir": "out", **options})
    assert (direct.value.code, direct.value.message) == (request.value.code, request.value.message)


def test_silence_gives_silent_stems(v50):
    stems = v50.separate(torch.zeros(2, 5000), **network_settings({"window_size": 320}))
    assert torch.count_nonzero(stems) == 0


# ---- model data ------------------------------------------------------------------------------------

def test_unknown_model_without_overrides_says_what_to_give(models):
    with pytest.raises(DSUError) as e:
        families.resolve({"model_path": str(models / "tiny_v50.pth")}, None)
    assert e.value.code == "bad_value"
    assert "vr_model_param" in e.value.message and "primary_stem" in e.value.message
    with pytest.raises(DSUError) as e:
        families.resolve({"model_path": str(models / "tiny_v50.pth"), "primary_stem": "Vocals"}, None)
    assert "vr_model_param" in e.value.message and "primary_stem" not in e.value.message.split("give")[-1]


def test_unknown_band_params_list_the_shipped_ones(models):
    with pytest.raises(DSUError) as e:
        families.resolve({"model_path": str(models / "tiny_v50.pth"), "vr_model_param": "5band_nope",
                          "primary_stem": "Vocals"}, None)
    assert e.value.code == "bad_value" and "5band_nope" in e.value.message and "4band_v2" in e.value.message


def test_overrides_name_the_stems_and_network_must_fit(models):
    ref = families.resolve({"model_path": str(models / "tiny_v50.pth"), "vr_model_param": "4band_v2",
                            "primary_stem": "No Reverb", "is_karaoke": True}, None)
    assert ref.family == "vr" and ref.option("karaoke") is True
    assert families.load(ref, CPU).stems == ["No Reverb", "Reverb"]
    wrong = families.resolve({"model_path": str(models / "tiny_v51.pth"), "vr_model_param": "4band_v2",
                              "primary_stem": "Vocals", "nout": 16}, None)
    with pytest.raises(DSUError) as e:
        families.load(wrong, CPU)
    assert e.value.code == "config_mismatch" and "nout" in e.value.message


def test_a_file_that_is_no_state_dict_is_refused(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a torch file at all")
    ref = families.resolve({"model_path": str(bad), "vr_model_param": "4band_v2", "primary_stem": "Vocals"}, None)
    with pytest.raises(DSUError) as e:
        families.load(ref, CPU)
    assert e.value.code == "bad_value" and "broken.pth" in e.value.message


def test_models_dir_names_and_lists_pth_files(models):
    ref = families.resolve({"model": "tiny_v50", "vr_model_param": "4band_v2", "primary_stem": "Vocals"}, models)
    assert ref.family == "vr" and ref.name == "tiny_v50"
    listed = {m["name"]: m for m in families.list_models(models) if m["family"] == "vr"}
    assert set(listed) == {"tiny_v50", "tiny_v51"} and listed["tiny_v50"]["stems"] == []  # not in UVR's table


# ---- through a real worker process -----------------------------------------------------------------

@pytest.mark.slow  # a worker start: test_model_folders runs VR through the audio-separator worker
def test_through_a_worker(tmp_path, models):
    from dsu.client import Worker, WorkerError

    want = np.load(FIXTURES / "v50_defaults.npy").astype(np.float32)
    with Worker(["--models-dir", str(models), "--threads", "1"]) as worker:
        done = worker.separate(input=str(FIXTURES / "mix.wav"), output_dir=str(tmp_path / "out"), model="tiny_v50",
                               vr_model_param="4band_v2", primary_stem="Instrumental", vr_window_size=512)
        assert done["files"] == ["mix_(Instrumental)_tiny_v50.wav", "mix_(Vocals)_tiny_v50.wav"]
        assert sf.info(done["paths"][0]).subtype == "PCM_16"  # python-audio-separator's default
        first = sf.read(done["paths"][0], dtype="float32", always_2d=True)[0].T
        assert snr(want[0], first[:, :want.shape[-1]]) > 50  # 16-bit now
        with pytest.raises(WorkerError) as e:
            worker.separate(input=str(FIXTURES / "mix.wav"), output_dir=str(tmp_path / "bad"),
                            model_path=str(models / "tiny_v51.pth"))
        assert e.value.code == "bad_value" and "vr_model_param" in e.value.message
    # a worker with no models dir, told the folder per request as the previous DSU worker was
    with Worker(["--name", "dsu-audio-separator", "--threads", "1"]) as worker:
        done = worker.separate(input=str(FIXTURES / "mix.wav"), output_dir=str(tmp_path / "again"),
                               model="tiny_v50.pth", model_file_dir=str(models), vr_model_param="4band_v2",
                               primary_stem="Instrumental", single_stem="Vocals")
        assert done["files"] == ["mix_(Vocals)_tiny_v50.wav"]
        with pytest.raises(WorkerError) as e:
            worker.separate(input=str(FIXTURES / "mix.wav"), output_dir=str(tmp_path / "x"), model="tiny_v50",
                            model_file_dir=str(tmp_path / "nowhere"))
        assert e.value.code == "model_not_found" and "nowhere" in e.value.message
        assert worker.ping()["status"] == "pong"


# ---- progress and cancel inside the one whole-file chunk -------------------------------------------

def long_input(tmp_path: Path, mix: torch.Tensor) -> Path:
    path = tmp_path / "long.wav"
    sf.write(path, mix.repeat(1, 12).T.numpy(), 44100)  # 3 s: a dozen 320-frame windows
    return path


def test_progress_is_reported_window_by_window(v50, mix, tmp_path):
    seen = []
    separate_file(v50, long_input(tmp_path, mix), tmp_path / "out", options={"window_size": 320},
                  progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len([p for p in seen if 0 < p < 1]) >= 4


def test_cancel_stops_a_running_vr_job_between_windows(v50, mix, tmp_path):
    seen = []
    with pytest.raises(DSUError) as e:
        separate_file(v50, long_input(tmp_path, mix), tmp_path / "out", options={"window_size": 320},
                      progress=seen.append, cancelled=lambda: bool(seen))
    assert e.value.code == "cancelled"
    assert len(seen) == 1 and seen[0] < 0.5  # stopped at the step after the first report
    assert not list((tmp_path / "out").rglob("*.wav*"))


@pytest.mark.slow  # a worker start and two whole-file VR runs
def test_stems_of_a_32k_model_are_written_at_44k_as_uvr_writes_them(tmp_path, mix):
    torch.manual_seed(0)
    torch.save(CascadedASPPNet(1024, 2, 0, 4).state_dict(), tmp_path / "lofi.pth")
    model = families.load(families.resolve({"model_path": str(tmp_path / "lofi.pth"),
                                            "vr_model_param": "1band_sr32000_hl512", "primary_stem": "Vocals"}, None), CPU)
    assert (model.samplerate, model.params.top.samplerate) == (44100, 32000)
    result = separate_file(model, FIXTURES / "mix.wav", tmp_path / "out")
    assert result.samplerate == 44100
    for path in result.paths:
        info = sf.info(path)
        assert info.samplerate == 44100 and abs(info.frames - mix.shape[-1]) <= 2
    assert separate_file(model, FIXTURES / "mix.wav", tmp_path / "own", sample_rate=32000).samplerate == 32000
