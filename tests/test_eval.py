"""`dsu eval`: real MUSDB-style folders, real separations through the library, scores checked against
a direct computation, the cache reused, bad tracks reported while the others go on."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import in_process, shared_corpus

import dsu
from dsu.cli import main

STEMS = ("drums", "bass", "other", "vocals")
CORPUS = shared_corpus()


def _track(folder: Path, seconds: float = 1.5, seed: int = 0, stems=STEMS, rate: int = 44100) -> dict:
    """Stems of tones and noise, and their 16-bit sum as the mixture; what the files hold, as float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    folder.mkdir(parents=True, exist_ok=True)
    held = {}
    parts = {s: (0.1 * np.sin(2 * np.pi * (80 + 150 * i) * t)[:, None] * [1.0, 0.7]
                 + 0.02 * rng.standard_normal((t.size, 2))) for i, s in enumerate(stems)}
    ints = {s: np.round(v * 32767).astype(np.int16) for s, v in parts.items()}
    for s, v in ints.items():
        sf.write(folder / f"{s}.wav", v, rate, subtype="PCM_16")
        held[s] = v.T.astype(np.float32) / 32768
    mix = sum(v.astype(np.int32) for v in ints.values()).astype(np.int16)
    sf.write(folder / "mixture.wav", mix, rate, subtype="PCM_16")
    held["mixture"] = mix.T.astype(np.float32) / 32768
    return held


def _sdr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10((np.sum(ref.astype(np.float64) ** 2) + 1e-7)
                               / (np.sum((ref.astype(np.float64) - est) ** 2) + 1e-7)))


def _eval(tmp_path: Path, *args) -> tuple:
    ran = in_process(main, ["eval", *args, "-o", tmp_path / "cache", "--json", tmp_path / "out.json"],
                     cwd=tmp_path)
    results = json.loads((tmp_path / "out.json").read_text()) if (tmp_path / "out.json").exists() else None
    return ran, results


def test_dsp_scores_equal_a_direct_computation_and_the_cache_is_reused(tmp_path):
    held = {name: _track(tmp_path / "lib" / name, seed=i) for i, name in enumerate(["a", "b"])}
    ran, results = _eval(tmp_path, tmp_path / "lib", "-m", "dsp", "--oracle", "mixture", "--csv",
                         tmp_path / "out.csv", "--plot", tmp_path / "sdr.png")
    assert ran.returncode == 0, ran.stderr
    dsp = results["systems"]["dsp"]
    separator = dsu.Separator("dsp", device="cpu")
    for name, files in held.items():
        stems = separator.separate(files["mixture"], 44100)
        for stem in STEMS:
            assert dsp["tracks"][name][stem]["sdr"] == pytest.approx(_sdr(files[stem], stems[stem]), abs=1e-4)
            floor = results["systems"]["mixture"]["tracks"][name][stem]["sdr"]
            assert floor == pytest.approx(_sdr(files[stem], files["mixture"]), abs=1e-4)
    vocals = [dsp["tracks"][n]["vocals"]["sdr"] for n in held]
    assert dsp["summary"]["vocals"]["sdr"]["mean"] == pytest.approx(np.mean(vocals))
    assert dsp["summary"]["vocals"]["sdr"]["median"] == pytest.approx(np.median(vocals))
    assert dsp["summary"]["vocals"]["sdr"]["std"] == pytest.approx(np.std(vocals))
    assert set(dsp["tracks"]["a"]["vocals"]) == {"sdr", "si_sdr", "l1_freq", "bleedless", "fullness"}
    assert "vocals" in ran.stdout and "dsp" in ran.stdout  # the table
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(rows) == 2 * 2 * 4 and {"system", "track", "stem", "sdr"} <= set(rows[0])
    assert (tmp_path / "sdr.png").read_bytes()[:4] == b"\x89PNG"
    separated = sorted((tmp_path / "cache" / "dsp").rglob("*.wav"))
    stamps = [p.stat().st_mtime_ns for p in separated]
    again, second = _eval(tmp_path, tmp_path / "lib", "-m", "dsp", "--oracle", "mixture")
    assert again.returncode == 0 and "separating" not in again.stderr and "cached scores" in again.stderr
    assert second["systems"]["dsp"]["tracks"] == dsp["tracks"]
    assert [p.stat().st_mtime_ns for p in separated] == stamps
    # scores of another metric set are computed again, from the separation kept in the cache
    third, results3 = _eval(tmp_path, tmp_path / "lib", "-m", "dsp", "--metrics", "sdr,si_sdr")
    assert third.returncode == 0 and "cached separation" in third.stderr and "separating" not in third.stderr
    assert results3["systems"]["dsp"]["tracks"]["a"]["vocals"]["sdr"] == dsp["tracks"]["a"]["vocals"]["sdr"]


def test_tampered_cache_records_are_redone_not_trusted(tmp_path):
    _track(tmp_path / "lib" / "t")
    ran, first = _eval(tmp_path, tmp_path / "lib", "-m", "dsp", "--metrics", "sdr")
    assert ran.returncode == 0, ran.stderr
    folder = tmp_path / "cache" / "dsp" / "t"
    entry = json.loads((folder / "entry.json").read_text())
    entry["files"]["vocals"] = "../../../lib/t/vocals.wav"  # a record pointing outside its folder
    (folder / "entry.json").write_text(json.dumps(entry))
    scores = json.loads((folder / "scores.json").read_text())
    scores["scores"]["vocals"]["sdr"] = "99"
    (folder / "scores.json").write_text(json.dumps(scores))
    again, second = _eval(tmp_path, tmp_path / "lib", "-m", "dsp", "--metrics", "sdr")
    assert again.returncode == 0 and "separating" in again.stderr and "cached" not in again.stderr
    assert second["systems"]["dsp"]["tracks"] == first["systems"]["dsp"]["tracks"]
    (folder / "scores.json").write_text("{" * 100000)  # not JSON, and deep: rescored, not a crash
    third, _ = _eval(tmp_path, tmp_path / "lib", "-m", "dsp", "--metrics", "sdr")
    assert third.returncode == 0 and "cached separation" in third.stderr and "scoring" in third.stderr


def test_bad_tracks_are_named_and_the_others_go_on(tmp_path):
    lib = tmp_path / "lib"
    _track(lib / "good")
    (lib / "bare").mkdir(parents=True)
    sf.write(lib / "bare" / "mixture.wav", np.zeros((1000, 2), np.float32), 44100)
    _track(lib / "short")
    sf.write(lib / "short" / "bass.wav", np.zeros((1000, 2), np.float32), 44100)
    _track(lib / "nan")
    bad = np.zeros((66150, 2), np.float32)
    bad[500, 0] = np.nan
    sf.write(lib / "nan" / "vocals.wav", bad, 44100, subtype="FLOAT")
    ran, results = _eval(tmp_path, lib, "-m", "dsp")
    assert ran.returncode == 1
    errors = results["systems"]["dsp"]["errors"]
    assert sorted(errors) == ["bare", "nan", "short"]
    assert "no stem files" in errors["bare"]
    assert "bass.wav is 1000 frames" in errors["short"] and "must match the mixture" in errors["short"]
    assert "NaN" in errors["nan"] and "vocals.wav" in errors["nan"]
    assert list(results["systems"]["dsp"]["tracks"]) == ["good"]
    assert "short" in ran.stdout  # the terminal says it too


def test_stems_the_model_does_not_make_are_skipped_and_names_match(tmp_path):
    _track(tmp_path / "lib" / "t", stems=("Vocals", "accompaniment"))
    ran, results = _eval(tmp_path, tmp_path / "lib", "-m", "dsp", "--metrics", "sdr")
    assert ran.returncode == 0, ran.stderr
    assert list(results["systems"]["dsp"]["tracks"]["t"]) == ["vocals"]  # `Vocals` is the model's `vocals`
    assert results["systems"]["dsp"]["skipped"] == {"t": ["accompaniment"]}


def test_tracks_of_the_same_name_in_two_folders_are_both_scored(tmp_path):
    _track(tmp_path / "one" / "song", seed=1)
    _track(tmp_path / "two" / "song", seed=2)
    ran, results = _eval(tmp_path, tmp_path / "one", tmp_path / "two", "-m", "dsp", "--metrics", "sdr")
    assert ran.returncode == 0, ran.stderr
    scores = results["systems"]["dsp"]["tracks"]
    assert sorted(scores) == ["song", "song~2"] and scores["song"] != scores["song~2"]


def test_mistakes_on_the_command_line(tmp_path):
    _track(tmp_path / "lib" / "t")
    for args, words in [(["-m", "dsp", "--metrics", "sdr,loudness"], "unknown metric 'loudness'"),
                        (["-m", "dsp", "--metrics", "log_wmse"], "torchaudio"),
                        (["-m", "no-such-model"], "no-such-model"),
                        ([], "nothing to evaluate"),
                        (["--ensemble", "dsp"], "at least two models")]:
        ran, _ = _eval(tmp_path, tmp_path / "lib", *args)
        assert ran.returncode == 2 and words in ran.stderr, (args, ran.stderr)


def test_an_ensemble_is_scored_like_a_model(tmp_path):
    _track(tmp_path / "lib" / "t")
    ran, results = _eval(tmp_path, tmp_path / "lib", "--ensemble", "dsp,dsp", "-m", "dsp", "--metrics", "sdr")
    assert ran.returncode == 0, ran.stderr
    blended = results["systems"]["ensemble(dsp+dsp)"]["tracks"]["t"]
    alone = results["systems"]["dsp"]["tracks"]["t"]
    assert all(blended[s]["sdr"] == pytest.approx(alone[s]["sdr"], abs=1e-3) for s in STEMS)


@pytest.mark.slow  # 30 s of audio, three systems: about 20 s
@pytest.mark.skipif(CORPUS is None, reason="the shared corpus is not here")
def test_the_corpus_readme_baselines_and_dsp(tmp_path):
    assert CORPUS is not None
    ran, results = _eval(tmp_path, CORPUS / "data" / "song_000", "-m", "dsp", "--oracle", "irm", "--oracle",
                         "mixture", "--metrics", "sdr")
    assert ran.returncode == 0, ran.stderr
    table = {"mixture": (-4.59, -5.59, -7.20, -2.41), "irm": (12.70, 9.82, 10.85, 14.86)}  # the corpus README's
    for system, want in table.items():
        got = [results["systems"][system]["tracks"]["song_000"][s]["sdr"] for s in STEMS]
        assert got == pytest.approx(want, abs=0.006), system
    folder = CORPUS / "data" / "song_000"
    stems = dsu.Separator("dsp", device="cpu").separate(sf.read(folder / "mixture.flac", dtype="float32")[0].T,
                                                        44100)
    for s in STEMS:
        ref = sf.read(folder / f"{s}.flac", dtype="float32")[0].T
        assert results["systems"]["dsp"]["tracks"]["song_000"][s]["sdr"] == pytest.approx(_sdr(ref, stems[s]),
                                                                                           abs=0.005)
