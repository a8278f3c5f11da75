"""The model catalog and its downloads, against a real HTTP server on 127.0.0.1 that serves tiny
random-weight models in their native formats and misbehaves on request (drops, wrong bytes, 404,
stalls, slow streams)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dsu.catalog import catalog as catalogs
from dsu.catalog import download, store
from dsu.client import Worker, WorkerError
from dsu.errors import DSUError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DSU = [sys.executable, "-m", "dsu.cli"]


class Files(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.content: dict[str, bytes] = {}   # name -> bytes
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.dropped: set[str] = set()

    def url(self, route: str, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{route}/{name}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server: Files = self.server
        route, _, name = self.path.strip("/").partition("/")
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.content.get(name)
        if body is None or route == "missing":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route == "wrong":
            body = bytes(b ^ 0xFF for b in body)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and route != "norange":
            start = int(match[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        rest = body[start:]
        if route == "drop" and name not in server.dropped:  # half, then the connection dies
            server.dropped.add(name)
            self.wfile.write(rest[:len(rest) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if route == "stall":
            self.wfile.write(rest[:10])
            self.wfile.flush()
            time.sleep(5)
            return
        step = 4096 if route == "slow" else len(rest)
        for i in range(0, len(rest), step):
            self.wfile.write(rest[i:i + step])
            if route == "slow":
                time.sleep(0.02)


@pytest.fixture()
def server():
    s = Files()
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def msst_files() -> tuple[bytes, bytes]:
    d = FIXTURES / "msst" / "mel_band_roformer"
    return (d / "model.ckpt").read_bytes(), (d / "config.yaml").read_bytes()


def msst_entry(server: Files, name="tiny_vocals", route="ok", checkpoint_sha=None, size=True) -> dict:
    ckpt, config = msst_files()
    server.content.update({"tiny.ckpt": ckpt, "tiny.yaml": config})
    return {"name": name, "type": "mel_band_roformer", "stems": ["vocals", "other"], "aliases": ["tv"] if name == "tiny_vocals" else [],
            "checkpoint": "tiny.ckpt", "config": "tiny.yaml",
            "files": [{"path": "tiny.ckpt", "url": server.url(route, "tiny.ckpt"), "size": len(ckpt) if size else None,
                       "sha256": checkpoint_sha},
                      {"path": "tiny.yaml", "url": server.url("ok", "tiny.yaml"), "size": len(config), "sha256": sha(config)}]}


def write_catalog(path: Path, *entries) -> Path:
    path.write_text(json.dumps({"version": 1, "models": list(entries)}))
    return path


def dsu(*args, cwd: Path, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*DSU, *map(str, args)], capture_output=True, text=True, env=env or ENV, cwd=cwd,
                          timeout=timeout)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.part"))


# ---- downloads ----------------------------------------------------------------------------------------------

def test_download_then_separate_by_name(server, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", msst_entry(server))
    models = tmp_path / "models"
    run = dsu("models", "download", "tiny_vocals", "--catalog", catalog, "--models-dir", models, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(models / "tiny.ckpt"), str(models / "tiny.yaml")]
    assert (models / "tiny.ckpt").read_bytes() == msst_files()[0]
    pins = json.loads((models / "dsu-lock.json").read_text())["files"]
    assert pins["tiny.ckpt"]["sha256"] == sha(msst_files()[0])  # no published hash: pinned
    assert "pinned 1 hash" in run.stderr and leftovers(models) == []

    listed = dsu("models", "list", "--installed", "--json", "--catalog", catalog, "--models-dir", models, cwd=tmp_path)
    rows = json.loads(listed.stdout)
    assert {"name": "tiny_vocals", "type": "mel_band_roformer", "installed": True}.items() <= rows[0].items()
    assert dsu("models", "verify", "--catalog", catalog, "--models-dir", models, cwd=tmp_path).returncode == 0

    t = np.arange(44100) / 44100
    sf.write(tmp_path / "song.wav", np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1).astype(np.float32) * 0.3, 44100)
    env = {**ENV, "DSU_CATALOG": str(catalog)}
    sep = dsu("separate", "song.wav", "-m", "tv", "--models-dir", models, "-o", "out", "--threads", "1", "-q",
              cwd=tmp_path, env=env)
    assert sep.returncode == 0, sep.stderr
    assert [Path(p).name for p in sep.stdout.split()] == ["vocals.wav", "other.wav"]
    assert all(sf.info(p).frames == 44100 for p in sep.stdout.split())


def test_resume_after_the_server_drops_the_connection(server, tmp_path):
    data = os.urandom(300_000)
    server.content["big.bin"] = data
    seen = []
    got = download.fetch(server.url("drop", "big.bin"), tmp_path / "big.bin", download.Expected(len(data), sha(data)),
                         on_progress=lambda done, total, speed: seen.append((done, total)), backoff=0.01)
    assert got.downloaded and got.sha256 == sha(data) and (tmp_path / "big.bin").read_bytes() == data
    ranges = [r for _, r in server.requests]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"  # resumed, not restarted
    assert seen[-1] == (len(data), len(data)) and leftovers(tmp_path) == []


def test_a_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = os.urandom(200_000)
    server.content["f.bin"] = data
    dest = tmp_path / "f.bin"
    stale = tmp_path / ".f.bin.99999.abcdef.part"   # left by a dead download
    stale.write_bytes(b"garbage" * 100)
    got = download.fetch(server.url("norange", "f.bin"), dest, download.Expected(len(data), sha(data)))
    assert got.sha256 == sha(data) and dest.read_bytes() == data and leftovers(tmp_path) == []


def test_wrong_bytes_are_a_checksum_mismatch_and_nothing_is_kept(server, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", msst_entry(server, route="wrong", checkpoint_sha=sha(msst_files()[0])))
    models = tmp_path / "models"
    run = dsu("models", "download", "tiny_vocals", "--catalog", catalog, "--models-dir", models, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("dsu: checksum_mismatch: tiny.ckpt's sha256 is ")
    assert not (models / "tiny.ckpt").exists() and leftovers(models) == []


def test_a_file_its_loader_refuses_is_not_installed(server, tmp_path):
    entry = msst_entry(server)
    server.content["tiny.ckpt"] = b"<html>not a checkpoint</html>"  # right size unknown, no hash: only the loader can tell
    entry["files"][0]["size"] = None
    catalog = catalogs.parse({"version": 1, "models": [entry]}, "test")
    with pytest.raises(DSUError) as e:
        store.install(catalog.get("tiny_vocals"), tmp_path)
    assert e.value.code == "bad_value" and "tiny.ckpt was downloaded but cannot be used" in e.value.message
    assert not (tmp_path / "tiny.ckpt").exists() and leftovers(tmp_path) == []
    assert not (tmp_path / "dsu-lock.json").exists()


def test_demucs_sha8_in_the_name_is_checked(server, tmp_path):
    data = os.urandom(1000)
    server.content["abcd1234-00000000.th"] = data
    with pytest.raises(DSUError) as e:
        download.fetch(server.url("ok", "abcd1234-00000000.th"), tmp_path / "abcd1234-00000000.th",
                       download.Expected(sha256_prefix="00000000"))
    assert e.value.code == "checksum_mismatch" and "not 00000000" in e.value.message
    assert list(tmp_path.iterdir()) == [tmp_path / ".abcd1234-00000000.th.lock"]


def test_404_and_stall_fail_with_one_line_and_no_file(server, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", msst_entry(server, route="missing"),
                            msst_entry(server, name="stalled", route="stall"))
    models = tmp_path / "models"
    run = dsu("models", "download", "tiny_vocals", "--catalog", catalog, "--models-dir", models, cwd=tmp_path)
    assert run.returncode == 1 and "download_failed" in run.stderr and "HTTP 404" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    started = time.monotonic()
    run = dsu("models", "download", "stalled", "--catalog", catalog, "--models-dir", models, "--timeout", "0.5",
              "--retries", "1", "-q", cwd=tmp_path)
    assert run.returncode == 1 and "download_failed" in run.stderr and "timed out 2 times" in run.stderr
    assert time.monotonic() - started < 30
    assert not (models / "tiny.ckpt").exists()
    assert all(r == "bytes=10-" for p, r in server.requests[2:] if "stall" in p)  # the retry resumed


def test_two_downloads_of_the_same_file_end_with_one_good_file(server, tmp_path):
    entry = msst_entry(server, route="slow")
    server.content["tiny.ckpt"] = server.content["tiny.ckpt"] + b""  # the checkpoint, served slowly
    catalog = write_catalog(tmp_path / "catalog.json", entry)
    models = tmp_path / "models"
    procs = [subprocess.Popen([*DSU, "models", "download", "tiny_vocals", "--catalog", str(catalog), "--models-dir",
                               str(models), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (models / "tiny.ckpt").read_bytes() == msst_files()[0]
    assert sum(1 for p, _ in server.requests if p.endswith("tiny.ckpt")) == 1  # the second found it done
    assert leftovers(models) == []


def test_cancel_mid_download_through_a_worker(server, tmp_path):
    data = os.urandom(2_000_000)
    server.content["tiny.ckpt"] = data
    entry = msst_entry(server, route="slow")
    server.content["tiny.ckpt"] = data
    entry["files"][0]["size"] = len(data)
    catalog = write_catalog(tmp_path / "catalog.json", entry)
    models = tmp_path / "models"
    with Worker(["--threads", "1", "--models-dir", str(models)], timeout=60) as w:
        request = w.submit("download_model", model="tiny_vocals", catalog=str(catalog))
        first = next(iter(request))
        assert first["status"] == "progress" and first["file"] == "tiny.ckpt"
        assert first["bytes_total"] == len(data) and 0 < first["bytes_done"] < len(data) and first["speed"] > 0
        w.cancel(request.id)
        with pytest.raises(WorkerError) as e:
            request.result(timeout=30)
        assert e.value.code == "cancelled"
        assert not (models / "tiny.ckpt").exists() and leftovers(models) == []

        server.content["tiny.ckpt"] = msst_files()[0]
        entry = msst_entry(server)
        write_catalog(catalog, entry)
        done = w.download_model("tiny_vocals", catalog=str(catalog), timeout=60)
        assert done["status"] == "model_downloaded" and done["paths"] == [str(models / "tiny.ckpt"), str(models / "tiny.yaml")]
        assert done["pinned"] == ["tiny.ckpt"]


def test_pinned_hash_is_checked_by_later_downloads_and_verify(server, tmp_path):
    entry = msst_entry(server)
    catalog = catalogs.parse({"version": 1, "models": [entry]}, "test")
    models = tmp_path / "models"
    first = store.install(catalog.get("tiny_vocals"), models)
    assert first.pinned == ["tiny.ckpt"] and first.downloaded > 0
    again = store.install(catalog.get("tiny_vocals"), models)
    assert again.downloaded == 0  # found, hashed against the pin

    ckpt = models / "tiny.ckpt"
    damaged = bytearray(ckpt.read_bytes())
    damaged[-100] ^= 1
    ckpt.write_bytes(bytes(damaged))
    catalog_file = write_catalog(tmp_path / "catalog.json", entry)
    run = dsu("models", "verify", "--catalog", catalog_file, "--models-dir", models, cwd=tmp_path)
    assert run.returncode == 1 and "as pinned in dsu-lock.json" in run.stdout

    ckpt.unlink()  # the publisher now serves other bytes of the same size
    server.content["tiny.ckpt"] = bytes(damaged)
    with pytest.raises(DSUError) as e:
        store.install(catalog.get("tiny_vocals"), models)
    assert e.value.code == "checksum_mismatch" and "pinned by the first download" in e.value.message
    assert not ckpt.exists() and leftovers(models) == []

    removed = dsu("models", "remove", "tiny_vocals", "--catalog", catalog_file, "--models-dir", models, cwd=tmp_path)
    assert removed.returncode == 0 and "tiny.ckpt" not in json.loads((models / "dsu-lock.json").read_text())["files"]


# ---- catalogs ----------------------------------------------------------------------------------------------

def test_a_bad_entry_is_reported_and_the_others_stay_usable(server, tmp_path):
    good = msst_entry(server)
    bad = {**msst_entry(server, name="broken"), "files": [{"path": "../escape.ckpt", "url": "http://x/y"}],
           "checkpoint": "../escape.ckpt"}
    catalog = write_catalog(tmp_path / "catalog.json", bad, good, {"name": "no_type", "stems": [], "files": []})
    run = dsu("models", "list", "--available", "--json", "--catalog", catalog, "--models-dir", tmp_path, cwd=tmp_path)
    assert run.returncode == 0
    assert [r["name"] for r in json.loads(run.stdout)] == ["tiny_vocals"]
    assert "entry `broken`, file #0: `path` '../escape.ckpt' must be a relative path" in run.stderr
    assert "entry `no_type` has no `type`" in run.stderr
    info = dsu("models", "info", "broken", "--catalog", catalog, cwd=tmp_path)
    assert info.returncode == 1 and "cannot be used" in info.stderr
    assert dsu("models", "info", "tv", "--catalog", catalog, cwd=tmp_path).returncode == 0  # by alias
    not_a_catalog = tmp_path / "x.json"
    not_a_catalog.write_text("[1, 2]")
    run = dsu("models", "list", "--catalog", not_a_catalog, cwd=tmp_path)
    assert run.returncode == 1 and "is not a DSU catalog" in run.stderr


def test_catalog_from_a_url(server, tmp_path):
    server.content["catalog.json"] = json.dumps({"version": 1, "models": [msst_entry(server)]}).encode()
    c = catalogs.read(server.url("ok", "catalog.json"))
    assert c.get("tv").name == "tiny_vocals" and not c.errors


def test_not_installed_catalog_model_says_how_to_get_it(tmp_path):
    run = dsu("separate", "x.wav", "-m", "htdemucs", "--models-dir", tmp_path / "m", "-o", "out", cwd=tmp_path)
    assert "x.wav: no such file" in run.stderr and run.returncode == 2  # with every other argument problem
    sf.write(tmp_path / "x.wav", np.zeros((1000, 2), np.float32), 44100)
    (tmp_path / "m").mkdir()
    run = dsu("separate", "x.wav", "-m", "htdemucs", "--models-dir", tmp_path / "m", "-o", "out", cwd=tmp_path)
    assert run.returncode == 2
    assert f"run `dsu models download htdemucs --models-dir {tmp_path / 'm'}`" in run.stderr


def test_shipped_catalog_is_well_formed():
    c = catalogs.shipped()
    assert c.errors == []
    seeds = ["htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra", "mdx_q", "mdx_extra_q",
             "bs_roformer_viperx_1297", "bs_roformer_viperx_1296", "mel_roformer_kj_vocals", "resurrection_vocals",
             "revive2_vocals", "gabox_inst_fv7z", "karaoke_becruily", "karaoke_aufr33", "denoise", "dereverb",
             "aspiration", "crowd", "bleed_suppressor", "chorus_male_female", "drumsep_mdx23c_aufr33", "scnet_xl_ihf",
             "vocals_mdx23c", "UVR-MDX-NET-Inst_HQ_3", "Kim_Vocal_2", "UVR-MDX-NET-Voc_FT", "1_HP-UVR",
             "5_HP-Karaoke-UVR", "UVR-DeEcho-DeReverb", "apollo_official", "apollo_lew_uni", "apollo_lew_v2",
             "apollo_edm_big", "apollo_vocal_msst"]
    assert [s for s in seeds if c.find(s) is None] == []
    from dsu.families import msst
    for entry in c:
        if entry.config_in_package():
            path = catalogs.package_config(entry.config)
            assert path.is_file(), entry.name
            if entry.type in store.MSST_TYPES:
                assert msst.load_config(path)["model"], entry.name
        for f in entry.files:
            assert f.url.startswith("https://"), entry.name
            if f.path.endswith(".th"):  # demucs' <sig>-<sha8>.th: the prefix is the name's
                assert f.sha256_prefix == f.path[:-3].split("-")[1]
    bag = catalogs.package_config(c.get("htdemucs_ft").config).read_text()
    assert all(f.path.split("-")[0] in bag for f in c.get("htdemucs_ft").files)


def test_docs_describe_the_format_the_code_checks():
    doc = (ROOT / "docs" / "catalog.md").read_text()
    for name, (kind, required, _) in {**catalogs.FIELDS, **catalogs.FILE_FIELDS}.items():
        kind = kind.replace("|", " or ")  # `|` would split a markdown table cell
        assert re.search(rf"\| `{name}` \| {re.escape(kind)} \| {'yes' if required else 'no'} \|", doc), name
    example = re.search(r"```json\n(.*?)```", doc, re.S)[1]
    parsed = catalogs.parse(json.loads(example), "docs/catalog.md")
    assert parsed.errors == [] and len(parsed) >= 2


def test_separate_download_fetches_a_demucs_bag_then_separates(server, tmp_path):
    """`dsu separate -m NAME --download`: a Demucs bag whose member's file name carries its sha8."""
    torch = pytest.importorskip("torch")
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state, save_with_checksum
    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], samplerate=8000, segment=1.5, channels=8, depth=2,
                     t_layers=1, t_heads=2, bottom_channels=0, nfft=512)
    args, kwargs = model._init_args_kwargs
    save_with_checksum({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": get_state(model, None, True)},
                       tmp_path / "tiny01.th")
    member = next(tmp_path.glob("tiny01-*.th"))
    server.content[member.name] = member.read_bytes()
    server.content["tinybag.yaml"] = b"models: ['tiny01']\n"
    entry = {"name": "tinybag", "type": "demucs", "stems": ["drums", "bass", "other", "vocals"], "checkpoint": None,
             "config": "tinybag.yaml",
             "files": [{"path": member.name, "url": server.url("ok", member.name), "size": member.stat().st_size,
                        "sha256": None, "sha256_prefix": member.stem.split("-")[1]},
                       {"path": "tinybag.yaml", "url": server.url("ok", "tinybag.yaml"), "size": None, "sha256": None}]}
    catalog = write_catalog(tmp_path / "catalog.json", entry)
    sf.write(tmp_path / "song.wav", (np.random.default_rng(0).standard_normal((8000, 2)) * 0.1).astype(np.float32), 8000)
    env = {**ENV, "DSU_CATALOG": str(catalog), "DSU_MODELS": str(tmp_path / "models")}
    run = dsu("separate", "song.wav", "-m", "tinybag", "-o", "out", "--threads", "1", "-q", cwd=tmp_path, env=env)
    assert run.returncode == 2 and "dsu models download tinybag" in run.stderr
    run = dsu("separate", "song.wav", "-m", "tinybag", "--download", "-o", "out", "--threads", "1", "-q",
              cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert sorted(Path(p).relative_to(tmp_path / "out").as_posix() for p in run.stdout.split()) == \
        [f"tinybag/song/{s}.wav" for s in ("bass", "drums", "other", "vocals")]
    assert (tmp_path / "models" / member.name).is_file()


def test_restore_with_an_installed_apollo_model(server, tmp_path):
    torch = pytest.importorskip("torch")
    import yaml
    from dsu.models.apollo import Apollo
    torch.manual_seed(0)
    arch = {"sr": 44100, "win": 20, "feature_dim": 16, "layer": 1}
    torch.save({"state_dict": {f"audio_model.{k}": v for k, v in Apollo(**arch).state_dict().items()}},
               tmp_path / "apollo.ckpt")
    server.content["apollo.ckpt"] = (tmp_path / "apollo.ckpt").read_bytes()
    server.content["apollo.yaml"] = yaml.safe_dump({"model": arch}).encode()
    entry = {"name": "tiny_apollo", "type": "apollo", "stems": ["restored"], "checkpoint": "apollo.ckpt",
             "config": "apollo.yaml", "purpose": ["restoration"],
             "files": [{"path": "apollo.ckpt", "url": server.url("ok", "apollo.ckpt")},
                       {"path": "apollo.yaml", "url": server.url("ok", "apollo.yaml")}]}
    env = {**ENV, "DSU_CATALOG": str(write_catalog(tmp_path / "catalog.json", entry)), "DSU_MODELS": str(tmp_path / "m")}
    t = np.arange(22050) / 44100
    sf.write(tmp_path / "lossy.wav", (np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3).astype(np.float32), 44100)
    run = dsu("restore", "lossy.wav", "-o", "restored.wav", "-m", "tiny_apollo", "--threads", "1", "-q", cwd=tmp_path, env=env)
    assert run.returncode == 2 and "dsu models download tiny_apollo" in run.stderr
    assert dsu("models", "download", "tiny_apollo", "-q", cwd=tmp_path, env=env).returncode == 0
    run = dsu("restore", "lossy.wav", "-o", "restored.wav", "-m", "tiny_apollo", "--threads", "1", "-q", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert sf.info(tmp_path / "restored.wav").frames == 22050


def test_a_worker_lists_the_catalog_with_what_is_installed(server, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", msst_entry(server))
    models = tmp_path / "models"
    with Worker(["--threads", "1", "--models-dir", str(models)], env={**ENV, "DSU_CATALOG": str(catalog)},
                timeout=60) as w:
        before = w.request("list_models")
        assert [(m["name"], m["installed"], m["family"]) for m in before["catalog"]] == [
            ("tiny_vocals", False, "msst")]
        w.download_model("tiny_vocals", timeout=60)
        after = w.request("list_models")
        assert [m["installed"] for m in after["catalog"]] == [True]
        assert after["catalog"][0]["stems"] == before["catalog"][0]["stems"] != []
