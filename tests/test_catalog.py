"""The model catalog and its downloads, against a real HTTP server on 127.0.0.1 that serves tiny
random-weight models in their native formats and misbehaves on request (drops, wrong bytes, 404,
stalls, slow streams)."""
from __future__ import annotations

import gzip
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
from helpers import Ran, in_process

from dsu.catalog import catalog as catalogs
from dsu.cli import main
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
        if route in ("endless", "trickle", "slowheaders", "gzip"):
            self.misbehave(route, body)
            return
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


    def misbehave(self, route: str, body: bytes) -> None:
        """endless: a body with no length that never ends; trickle: one byte every 0.1 s after the
        headers; slowheaders: the headers themselves a byte at a time; gzip: a gzip-encoded transfer
        whatever the client accepts."""
        try:
            if route == "slowheaders":
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            self.send_response(206 if route == "gzip" and self.headers.get("Range") else 200)
            if route == "gzip":  # a Range applies to the encoded bytes, as HTTP has it
                packed = gzip.compress(body)
                start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-")[1])
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(packed) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(packed) - 1}/{len(packed)}")
                self.end_headers()
                self.wfile.write(packed[start:])
                return
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            while True:
                self.wfile.write(b"x" * 65536 if route == "endless" else b"x")
                self.wfile.flush()
                if route == "trickle":
                    time.sleep(0.1)
        except OSError:  # the client gave up
            pass


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


def dsu(*args, cwd: Path, env=None) -> Ran:
    """`dsu ARGS` in this process, against the test's server (two at once and the worker: real processes)."""
    return in_process(main, args, cwd=cwd, env=env or ENV)


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
    assert list(tmp_path.iterdir()) == []  # no part, and the lock is removed with the download


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


@pytest.mark.slow  # two real processes racing
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


@pytest.mark.parametrize("body, words", [(b"[" * 100_000 + b"]" * 100_000, "nests deeper than"),
                                         (b'{"version": 1, "models": ' + b"[" * 100 + b"]" * 100 + b"}", "nests deeper than"),
                                         (b'{"version": ' + b"9" * 5000 + b"}", "more digits")])
def test_a_hostile_catalog_url_is_read_as_a_catalog_file_is(server, tmp_path, body, words):
    server.content["catalog.json"] = body
    with pytest.raises(DSUError) as e:  # not a RecursionError, nor a nesting a file would be refused for
        catalogs.read(server.url("ok", "catalog.json"))
    assert e.value.code == "bad_value" and words in e.value.message, e.value.message


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
    listed = json.loads(dsu("models", "list", "--installed", "--json", cwd=tmp_path, env=env).stdout)
    assert [(r["name"], r["family"]) for r in listed if r["name"] != "dsp"] == [("tiny_apollo", "apollo")]  # once
    run = dsu("restore", "lossy.wav", "-o", "restored.wav", "-m", "tiny_apollo", "--threads", "1", "-q", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert sf.info(tmp_path / "restored.wav").frames == 22050


@pytest.mark.slow  # a worker start; `dsu models list` is tested in process
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


# ---- hostile servers, full disks, odd names --------------------------------------------------------------

def test_a_body_that_never_ends_stops_at_the_kinds_maximum(server, tmp_path):
    """No size in the catalog (as in every shipped entry): a config that never ends stops at the most a
    config can be, and nothing is left growing."""
    entry = msst_entry(server)
    entry["files"][1].update(url=server.url("endless", "tiny.yaml"), size=None, sha256=None)
    catalog = write_catalog(tmp_path / "catalog.json", entry)
    models = tmp_path / "models"
    run = dsu("models", "download", "tiny_vocals", "--catalog", catalog, "--models-dir", models, "-q",
              cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"sent more than {store.MOST_BYTES['config']} bytes, more than any model config can be" in run.stderr
    assert not (models / "tiny.yaml").exists() and leftovers(models) == []
    shipped = catalogs.shipped()
    assert all(store.expected_of(e, f).limit for e in shipped for f in e.files)  # every file is bounded


@pytest.mark.slow  # seconds of trickle per retry
def test_a_trickling_server_fails_like_a_stalled_one_and_each_retry_is_said(server, tmp_path):
    server.content["tiny.ckpt"] = b"unused"
    entry = msst_entry(server, route="trickle")
    catalog = write_catalog(tmp_path / "catalog.json", entry)
    models = tmp_path / "models"
    run = dsu("models", "download", "tiny_vocals", "--catalog", catalog, "--models-dir", models, "--timeout", "1",
              "--retries", "1", "-q", cwd=tmp_path)
    assert run.returncode == 1 and "download_failed" in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("dsu: tiny.ckpt: ReadTimeout: fewer than 1024 bytes arrived "
                                                   "in 1 s") and lines[0].endswith("retry 1 of 1 in 0.5 s")
    assert "timed out 2 times in a row" in lines[1] and "run the same command again" not in lines[1]
    with Worker(["--threads", "1", "--models-dir", str(models)], timeout=60) as w:  # a worker says it in progress
        request = w.submit("download_model", model="tiny_vocals", catalog=str(catalog), read_timeout=1, retries=1)
        said = []
        with pytest.raises(WorkerError) as e:
            said.extend(m for m in request if m["status"] == "progress")
        assert e.value.code == "download_failed"
        assert [m["retry"] for m in said if "retry" in m] == [lines[0].split("tiny.ckpt: ", 1)[1]]
    server.content["tiny.ckpt"] = msst_files()[0]  # headers that trickle are no better
    with pytest.raises(DSUError) as e:
        download.fetch(server.url("slowheaders", "tiny.ckpt"), tmp_path / "x.ckpt", timeout=1, retries=0)
    assert e.value.code == "download_failed" and "fewer than 1024 bytes" in e.value.message


def test_a_catalog_url_that_trickles_fails(server, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogs, "URL_TIMEOUT", 1.0, raising=False)
    server.content["catalog.json"] = b"{}"
    outcome = []

    def read():
        try:
            catalogs.read(server.url("trickle", "catalog.json"))
        except DSUError as e:
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert outcome and outcome[0].code == "bad_value" and "fewer than 1024 bytes arrived" in outcome[0].message


def test_a_gzipped_transfer_of_the_right_file_is_the_right_file(server, tmp_path):
    data = os.urandom(50_000) + bytes(200_000)  # compressible: the encoded length differs
    server.content["f.bin"] = data
    got = download.fetch(server.url("gzip", "f.bin"), tmp_path / "f.bin", download.Expected(len(data), sha(data)))
    assert got.sha256 == sha(data) and (tmp_path / "f.bin").read_bytes() == data and leftovers(tmp_path) == []
    (tmp_path / "f.bin").unlink()
    (tmp_path / ".f.bin.99999.abcdef.part").write_bytes(data[:1000])  # a dead download's part, decoded bytes
    got = download.fetch(server.url("gzip", "f.bin"), tmp_path / "f.bin", download.Expected(len(data), sha(data)),
                         backoff=0.01)
    assert got.sha256 == sha(data) and leftovers(tmp_path) == []
    assert [r for _, r in server.requests] == [None, "bytes=1000-", None]  # an encoded range is not the file's


def test_glob_characters_in_a_name_adopt_no_other_files_part(server, tmp_path):
    data = os.urandom(100_000)
    server.content["model[1].ckpt"] = data
    other = tmp_path / ".model1.ckpt.99999.abcdef.part"  # another file's resumable part
    other.write_bytes(b"other" * 1000)
    got = download.fetch(server.url("ok", "model[1].ckpt"), tmp_path / "model[1].ckpt",
                         download.Expected(len(data), sha(data)))
    assert got.downloaded and (tmp_path / "model[1].ckpt").read_bytes() == data
    assert other.read_bytes() == b"other" * 1000
    assert [r for _, r in server.requests] == [None]  # from the start, not from the other part's length


def test_a_damaged_file_in_place_is_replaced_by_a_verified_download(server, tmp_path):
    entry = msst_entry(server)  # no published hash: only the loader can tell the file in place is bad
    catalog = catalogs.parse({"version": 1, "models": [entry]}, "test")
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.ckpt").write_bytes(b"<html>an error page saved as the model</html>")
    entry["files"][0]["size"] = None
    catalog = catalogs.parse({"version": 1, "models": [entry]}, "test")
    done = store.install(catalog.get("tiny_vocals"), models)
    assert done.downloaded > 0 and (models / "tiny.ckpt").read_bytes() == msst_files()[0]
    assert leftovers(models) == []


def test_a_host_that_does_not_resolve_fails_at_once_and_leaves_no_lock(tmp_path):
    entry = {"name": "offline", "type": "vr", "stems": ["vocals"], "checkpoint": "o.pth",
             "files": [{"path": "o.pth", "url": "https://models.dsu-test.invalid/o.pth"}]}
    catalog = write_catalog(tmp_path / "catalog.json", entry)
    models = tmp_path / "models"
    run = dsu("models", "download", "offline", "--catalog", catalog, "--models-dir", models, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "dsu: download_failed: the host models.dsu-test.invalid does not resolve (Name or service not known): no "
        "network, or a wrong URL (https://models.dsu-test.invalid/o.pth); nothing was downloaded"]
    assert sorted(p.name for p in models.iterdir()) == []  # no lock, no part


def test_clean_removes_the_locks_of_killed_downloads_only(tmp_path):
    import fcntl
    dead = tmp_path / ".a.ckpt.lock"
    dead.touch()   # a download killed with SIGKILL leaves its lock
    held = tmp_path / ".b.ckpt.lock"
    fd = os.open(held, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    other = tmp_path / ".editor.lock"
    other.write_text("12345")  # not empty: not DSU's
    try:
        run = dsu("clean", tmp_path, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == [str(dead)] and held.exists() and other.exists()
    finally:
        os.close(fd)


@pytest.fixture()
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mount.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_a_coded_error_and_leaves_no_part(server, tmp_path, small_disk):
    server.content["big.ckpt"] = b"unused"
    entry = {"name": "big", "type": "vr", "stems": ["vocals"], "checkpoint": "big.ckpt",
             "files": [{"path": "big.ckpt", "url": server.url("endless", "big.ckpt")}]}
    catalog = write_catalog(tmp_path / "catalog.json", entry)
    run = dsu("models", "download", "big", "--catalog", catalog, "--models-dir", small_disk, "-q", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"dsu: output_not_writable: cannot write {small_disk}: No space left on device")
    assert list(small_disk.iterdir()) == []
    with Worker(["--threads", "1", "--models-dir", str(small_disk)], timeout=60) as w:
        with pytest.raises(WorkerError) as e:
            w.download_model("big", catalog=str(catalog), timeout=60)
        assert e.value.code == "output_not_writable"
    assert list(small_disk.iterdir()) == []


# ---- one lookup for every command -------------------------------------------------------------------------

def test_loose_apollo_weights_are_listed_as_apollo_and_restore_by_name(tmp_path):
    """`dsu models list` and `dsu restore -m` find the same Apollo files in a models dir: a `.ckpt` with its
    Apollo config (not listed as an MSST model) and the official `pytorch_model.bin`."""
    torch = pytest.importorskip("torch")
    import yaml
    from dsu.models.apollo import Apollo
    torch.manual_seed(0)
    arch = {"sr": 44100, "win": 20, "feature_dim": 16, "layer": 1}
    models = tmp_path / "models"
    models.mkdir()
    state = Apollo(**arch).state_dict()
    torch.save({"state_dict": {f"audio_model.{k}": v for k, v in state.items()}}, models / "vocal_restorer.ckpt")
    (models / "config_vocal_restorer.yaml").write_text(yaml.safe_dump({"model": arch}))
    torch.save(state, models / "pytorch_model.bin")
    listed = dsu("models", "list", "--installed", "--json", "--models-dir", models, cwd=tmp_path)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert (rows["vocal_restorer"]["family"], rows["vocal_restorer"]["stems"]) == ("apollo", ["restored"])
    assert (rows["pytorch_model"]["family"], rows["pytorch_model"]["stems"]) == ("apollo", ["restored"])
    t = np.arange(22050) / 44100
    sf.write(tmp_path / "lossy.wav", (np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3).astype(np.float32), 44100)
    for name in ("vocal_restorer", "pytorch_model.bin"):
        run = dsu("restore", "lossy.wav", "-o", f"{name}.wav", "-m", name, "--models-dir", models, "--threads", "1",
                  "-q", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert sf.info(tmp_path / f"{name}.wav").frames == 22050
    run = dsu("restore", "lossy.wav", "-o", "x.wav", "-m", "htdemucs", "--models-dir", models, cwd=tmp_path)
    assert run.returncode == 2 and "dsu models download htdemucs" in run.stderr  # the catalog's, as separate says


def test_a_catalog_name_is_found_with_its_extension_or_its_file_name(tmp_path):
    c = catalogs.shipped()
    assert c.find("UVR-MDX-NET-Inst_HQ_3.onnx").name == "UVR-MDX-NET-Inst_HQ_3"
    assert c.find("model_bs_roformer_ep_317_sdr_12.9755.ckpt").name == "bs_roformer_viperx_1297"
    assert c.find("model_bs_roformer_ep_317_sdr_12.9755").name == "bs_roformer_viperx_1297"
    assert c.find("nope.onnx") is None
    sf.write(tmp_path / "x.wav", np.zeros((1000, 2), np.float32), 44100)
    (tmp_path / "m").mkdir()
    run = dsu("separate", "x.wav", "-m", "UVR-MDX-NET-Inst_HQ_3.onnx", "--models-dir", tmp_path / "m", "-o", "out",
              cwd=tmp_path)
    assert run.returncode == 2
    assert f"run `dsu models download UVR-MDX-NET-Inst_HQ_3 --models-dir {tmp_path / 'm'}`" in run.stderr


def test_a_retry_line_and_the_progress_bar_share_stderr(server, tmp_path):
    catalog = write_catalog(tmp_path / "catalog.json", msst_entry(server, route="drop"))
    models = tmp_path / "models"
    run = dsu("models", "download", "tiny_vocals", "--catalog", catalog, "--models-dir", models, "--retries", "2",
              cwd=tmp_path)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert re.search(r"^dsu: tiny\.ckpt: RemoteProtocolError: .*; retry 1 of 2 in 0\.5 s$", run.stderr, re.M)
    assert (models / "tiny.ckpt").read_bytes() == msst_files()[0]
    # stderr a log, not a terminal: whole lines (no tqdm redraws with \r), the last one at 100 %
    assert "\r" not in run.stderr and re.search(r"^dsu: tiny\.ckpt: .* \(100 %\)$", run.stderr, re.M), run.stderr


def test_a_missing_catalog_model_is_offered_only_the_downloads_the_interface_has(tmp_path):
    """`--download` is a flag of `dsu separate` alone: restore, ensemble, the drop-ins and the worker give
    the `dsu models download` command and no `dsu separate --download`."""
    sf.write(tmp_path / "x.wav", np.zeros((1000, 2), np.float32), 44100)
    (tmp_path / "m").mkdir()
    m = tmp_path / "m"
    run = dsu("separate", "x.wav", "-m", "htdemucs", "--models-dir", m, "-o", "out", cwd=tmp_path)
    assert run.returncode == 2 and "(or add --download)" in run.stderr and "dsu separate --download" not in run.stderr
    for name, args in (("apollo_lew_uni", ("restore", "x.wav", "-o", "r.wav", "-m", "apollo_lew_uni")),
                       ("htdemucs", ("ensemble", "x.wav", "-m", "dsp", "-m", "htdemucs", "-o", "e"))):
        run = dsu(*args, "--models-dir", m, cwd=tmp_path)
        assert run.returncode == 2 and f"dsu models download {name}" in run.stderr, run.stderr
        assert "--download" not in run.stderr.replace("dsu models download", ""), run.stderr
    worker = subprocess.run([*DSU, "worker", "--models-dir", str(m)], input=json.dumps(
        {"cmd": "separate", "id": "a", "input": "x.wav", "model": "htdemucs", "output_dir": "o"}) + "\n",
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    error = [json.loads(line) for line in worker.stdout.splitlines() if '"error"' in line][0]
    assert error["code"] == "model_not_found" and "dsu models download htdemucs" in error["message"]
    assert "--download" not in error["message"].replace("dsu models download", "")


def test_every_listed_row_has_the_catalog_rows_fields(tmp_path):
    """`dsu models list --json`: an installed model the catalog lacks (dsp, a loose checkpoint) has
    every field a catalog row has, so a client reads `type` or `sdr` of any row."""
    from tiny_models import tiny_apollo
    (tmp_path / "m").mkdir()
    tiny_apollo(tmp_path / "m", "my_apollo.ckpt")
    rows = json.loads(dsu("models", "list", "--json", "--models-dir", tmp_path / "m", cwd=tmp_path).stdout)
    keys = set(next(r for r in rows if r["name"] == "htdemucs"))
    local = {r["name"]: r for r in rows if r["name"] in ("dsp", "my_apollo")}
    assert set(local) == {"dsp", "my_apollo"} and all(keys <= set(r) for r in local.values()), local
    assert (local["dsp"]["type"], local["my_apollo"]["type"]) == ("dsp", "apollo")
