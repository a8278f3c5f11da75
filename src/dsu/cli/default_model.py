"""Which model `dsu separate` uses when none is named: `$DSU_MODEL`, else the best installed model
that makes the four classic stems, else the built-in `dsp` (needs no files)."""
from __future__ import annotations

import os
from pathlib import Path

from .. import families

FOUR_STEMS = {"drums", "bass", "other", "vocals"}
# without published quality figures, the ranking Demucs' own documentation gives (best first)
KNOWN_RANKING = ("htdemucs_ft", "htdemucs", "hdemucs_mmi", "mdx_extra_q", "mdx_extra", "mdx_q", "mdx")
FAMILY_RANKING = ("msst", "demucs", "mdx", "vr")


def rank(entry: dict, members: frozenset[str] = frozenset()) -> tuple:
    """Sort key, best first: a catalogue's SDR when known, then Demucs' ranking, then a named model
    before a signature that is one of a bag's `members` (as demucs offers the bag, not its parts),
    then the family."""
    sdr = entry.get("sdr")
    sdr = float(sdr) if isinstance(sdr, (int, float)) else float("-inf")
    name = str(entry.get("name", ""))
    known = KNOWN_RANKING.index(name) if name in KNOWN_RANKING else len(KNOWN_RANKING)
    family = entry.get("family")
    fam = FAMILY_RANKING.index(family) if family in FAMILY_RANKING else len(FAMILY_RANKING)
    return (-sdr, known, name in members, fam, name)


def choose(models_dir: str | Path | None, environ=os.environ) -> tuple[str, str]:
    """(the model name, why it was chosen)."""
    named = environ.get("DSU_MODEL", "").strip()
    if named:
        return named, "from $DSU_MODEL"
    found = [m for m in families.list_models(models_dir)
             if m.get("family") != "dsp" and not m.get("error")
             and {str(s).lower() for s in m.get("stems") or []} == FOUR_STEMS]
    if found:
        members = frozenset(str(m) for e in found for m in e.get("models") or [])
        best = min(found, key=lambda e: rank(e, members))
        return best["name"], f"the best installed 4-stem model in {models_dir}; -m/--model or $DSU_MODEL for another"
    where = f"in {models_dir}" if models_dir else "(no models dir: --models-dir or $DSU_MODELS)"
    return "dsp", f"no 4-stem model installed {where}: the built-in filter separation, far below a trained model"
