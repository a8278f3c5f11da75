"""Write DSU's UVR tables (src/dsu/data/uvr/) from UVR's published model data.

    python tools/uvr_tables.py UVR_APPLICATION_DATA BAND_PARAMS_DIR [EXTRA_MODEL_DATA]

UVR_APPLICATION_DATA is a checkout of TRvlvr/application_data (vr_model_data/, mdx_model_data/);
BAND_PARAMS_DIR a folder of UVR's band-parameter JSONs (e.g. python-audio-separator's
uvr_lib_v5/vr_network/modelparams); EXTRA_MODEL_DATA a JSON with `vr_model_data`/`mdx_model_data`
entries laid over UVR's (python-audio-separator's model-data.json). The output is DSU's own schema, documented in each file's
`schema` field; only facts about the models travel (hashes, sizes, stem names)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "dsu" / "data" / "uvr"
STEREO_MODES = ("mid_side", "mid_side_b", "mid_side_b2", "stereo_w", "stereo_n", "reverse")


def vr_entry(md5: str, uvr: dict) -> dict:
    entry = {"md5": md5, "band_params": uvr["vr_model_param"], "primary_stem": uvr["primary_stem"]}
    if "nout" in uvr:
        entry["nout"], entry["nout_lstm"] = int(uvr["nout"]), int(uvr["nout_lstm"])
    if uvr.get("is_karaoke"):
        entry["karaoke"] = True
    if uvr.get("is_bv_model"):
        entry["backing_vocals"] = True
        entry["bv_rebalance"] = float(uvr.get("is_bv_model_rebalanced", 0))
    return entry


def mdx_entry(md5: str, uvr: dict) -> dict | None:
    if "mdx_dim_f_set" not in uvr:  # MDX-C / RoFormer checkpoints listed by UVR with a YAML: not ONNX
        return None
    entry = {"md5": md5, "primary_stem": uvr["primary_stem"], "n_fft": int(uvr["mdx_n_fft_scale_set"]),
             "dim_f": int(uvr["mdx_dim_f_set"]), "dim_t": 2 ** int(uvr["mdx_dim_t_set"]),
             "compensate": float(uvr["compensate"])}
    if uvr.get("is_karaoke"):
        entry["karaoke"] = True
    return entry


def band(uvr: dict) -> dict:
    out = {"samplerate": uvr["sr"], "hop": uvr["hl"], "n_fft": uvr["n_fft"],
           "crop": [uvr["crop_start"], uvr["crop_stop"]], "resampler": uvr["res_type"]}
    if "lpf_start" in uvr:
        out["lowpass"] = [uvr["lpf_start"], uvr["lpf_stop"]]
    if "hpf_start" in uvr:
        out["highpass"] = [uvr["hpf_start"], uvr.get("hpf_stop")]
    if "convert_channels" in uvr:
        out["channels"] = uvr["convert_channels"]
    return out


def band_params(uvr: dict) -> dict:
    bins = uvr.get("n_bins", uvr.get("bins"))
    out = {"schema": "dsu.uvr.band_params/1", "samplerate": uvr["sr"], "bins": bins,
           "unstable_bins": uvr.get("unstable_bins", 0), "reduction_bins": uvr.get("reduction_bins", bins),
           "pre_filter": ([uvr["pre_filter_start"], uvr["pre_filter_stop"]]
                          if uvr.get("pre_filter_start", -1) > 0 else None),
           "stereo": next((m for m in STEREO_MODES if uvr.get(m)), None),
           "bands": [band(uvr["band"][k]) for k in sorted(uvr["band"], key=int)]}
    return out


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def main(app_data: str, params_dir: str, extra: str | None = None) -> None:
    app = Path(app_data)
    vr = json.loads((app / "vr_model_data" / "model_data_new.json").read_text())
    mdx = json.loads((app / "mdx_model_data" / "model_data_new.json").read_text())
    if extra:
        more = json.loads(Path(extra).read_text())
        vr.update(more.get("vr_model_data", {}))
        mdx.update(more.get("mdx_model_data", {}))
    write(OUT / "vr_models.json", {
        "schema": "dsu.uvr.vr_models/1: md5 (UVR's file hash), band_params (a file in bands/), primary_stem, "
                  "nout/nout_lstm (v5.1 networks only), karaoke, backing_vocals, bv_rebalance",
        "models": [vr_entry(k, v) for k, v in sorted(vr.items())]})
    write(OUT / "mdx_models.json", {
        "schema": "dsu.uvr.mdx_models/1: md5 (UVR's file hash), primary_stem, n_fft, dim_f (frequency bins the "
                  "network sees), dim_t (frames per segment), compensate (output gain), karaoke",
        "models": [e for k, v in sorted(mdx.items()) if (e := mdx_entry(k, v))]})
    for f in sorted(Path(params_dir).glob("*.json")):
        if f.stem == "ensemble":  # UVR's ensembling settings, not a model's bands
            continue
        write(OUT / "bands" / f.name, band_params(json.loads(f.read_text())))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
