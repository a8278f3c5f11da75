"""`dsu` on the command line: real processes, their files, streams and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DSU = [sys.executable, "-m", "dsu.cli"]


def dsu(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*DSU, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)


def test_separate_files_with_progress_and_errors(tmp_path):
    t = np.arange(2 * 22050) / 22050
    sf.write(tmp_path / "mono.flac", (0.3 * np.sin(2 * np.pi * 110 * t)).astype(np.float32), 22050)
    (tmp_path / "broken.wav").write_text("not audio")
    run = dsu("separate", "mono.flac", "broken.wav", "-m", "dsp", "-o", "out", "--bit-depth", "24",
              "--two-stems", "vocals", "--sample-rate", "input", "-O", "segment=1.0", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    written = run.stdout.split()
    assert written == [str(tmp_path / "out" / "mono" / f"{s}.wav") for s in ("vocals", "no_vocals")]
    info = sf.info(written[0])
    assert (info.samplerate, info.channels, info.subtype) == (22050, 2, "PCM_24")  # dsp is stereo
    assert abs(info.frames - 2 * 22050) <= 1
    lines = run.stderr.splitlines()
    assert any("100%" in line for line in lines) and "\r" not in run.stderr  # not a terminal: whole lines
    assert "dsu: broken.wav: unsupported_audio: " in run.stderr
    assert not (tmp_path / "out" / "broken").exists()


def test_usage_and_model_errors(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros((4096, 2), np.float32), 44100)
    run = dsu("separate", "a.wav", "-m", "dsp", "-o", "out", "--bit-depth", "20", cwd=tmp_path)
    assert run.returncode == 2
    run = dsu("separate", "a.wav", "-m", "no-such-model", "-o", "out", "-q", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.strip().startswith("dsu: model_not_found: ")
    assert len(run.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_models_list(tmp_path):
    run = dsu("models", "list", "--json", cwd=tmp_path)
    assert run.returncode == 0
    models = [json.loads(line) for line in run.stdout.splitlines()]
    assert {"name": "dsp", "family": "dsp"}.items() <= next(m for m in models if m["name"] == "dsp").items()


def test_worker_subcommand_speaks_the_protocol(tmp_path):
    run = subprocess.run([*DSU, "worker", "--name", "dsu-bsroformer", "--threads", "1"], input='{"cmd":"ping","id":1}\n',
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=60)
    messages = [json.loads(line) for line in run.stdout.splitlines()]
    assert [m["status"] for m in messages] == ["loading", "ready", "pong", "exiting"]
    assert messages[1]["worker"] == "dsu-bsroformer" and messages[1]["default_model"] is None
    assert run.returncode == 0


def test_restore_writes_one_file_and_names_a_mismatch(tmp_path):
    import torch
    import yaml
    from dsu.models.apollo import Apollo
    apollo = {"sr": 44100, "win": 20, "feature_dim": 16, "layer": 1}
    torch.save({"state_dict": {f"audio_model.{k}": v for k, v in Apollo(**apollo).state_dict().items()}},
               tmp_path / "apollo_tiny.ckpt")
    (tmp_path / "apollo.yaml").write_text(yaml.safe_dump({"model": apollo}))
    t = np.arange(22050) / 44100
    sf.write(tmp_path / "lossy.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    run = dsu("restore", "lossy.wav", "-o", "fixed.flac", "--model-path", "apollo_tiny.ckpt", "--config-path",
              "apollo.yaml", "--chunk-seconds", "0.2", "--overlap-seconds", "0.05", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(tmp_path / "fixed.flac")]
    info = sf.info(tmp_path / "fixed.flac")
    assert (info.samplerate, info.channels, info.frames) == (44100, 1, 22050)
    assert "100%" in run.stderr
    run = dsu("restore", "lossy.wav", "-o", "again.wav", "--model-path", "apollo_tiny.ckpt", "--feature-dim", "32",
              "-q", cwd=tmp_path)
    assert run.returncode == 1
    assert "config_mismatch" in run.stderr and "feature_dim 16" in run.stderr
    assert not (tmp_path / "again.wav").exists()
