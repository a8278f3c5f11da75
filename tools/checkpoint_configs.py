"""Write src/dsu/data/checkpoint_configs.json: which YAML config each published MDX-C / RoFormer / SCNet
checkpoint goes with, as UVR and python-audio-separator pair them.

    python tools/checkpoint_configs.py DOWNLOAD_CHECKS_JSON [AUDIO_SEPARATOR_MODELS_JSON ...]

DOWNLOAD_CHECKS_JSON is UVR's filelists/download_checks.json (TRvlvr/application_data, which
python-audio-separator also keeps in its model folder); AUDIO_SEPARATOR_MODELS_JSON its
audio_separator/models.json. Only file names travel. `dsu.families.model_folder.pairs_in` reads the
same lists, so a folder's own download_checks.json is read the same way at run time."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dsu.families.model_folder import pairs_in

OUT = Path(__file__).resolve().parents[1] / "src" / "dsu" / "data" / "checkpoint_configs.json"


def main(*files: str) -> None:
    pairs: dict[str, str] = {}
    for f in files:
        for checkpoint, config in pairs_in(json.loads(Path(f).read_text(encoding="utf-8"))).items():
            pairs.setdefault(checkpoint, config)
    OUT.write_text(json.dumps({
        "schema": "dsu.checkpoint_configs/1: checkpoint file name -> the YAML config file name published with it",
        "source": "UVR's filelists/download_checks.json (TRvlvr/application_data) and python-audio-separator's "
                  "audio_separator/models.json (MIT)",
        "pairs": dict(sorted(pairs.items()))}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:])
