"""An evaluation's results as people read them: a table per stem on the terminal, JSON, CSV (one row
per system, track and stem) and a plot of each system's per-track SDR."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .. import paths


def _stems(results: dict) -> list[str]:
    seen: dict[str, None] = {}
    for system in results["systems"].values():
        for scores in system["tracks"].values():
            seen.update(dict.fromkeys(scores))
    return list(seen)


def tables(results: dict) -> str:
    """Per stem: a row per system, each metric's mean and median over tracks (std beside the mean)."""
    metrics = results["metrics"]
    lines = []
    for stem in _stems(results):
        lines.append(f"\n{stem}")
        head = f"  {'system':<28}" + "".join(f"{m + ' mean±std':>22}{'median':>9}" for m in metrics) + "  tracks"
        lines.append(head)
        for name, system in results["systems"].items():
            by_metric = system["summary"].get(stem)
            if not by_metric:
                continue
            cells = "".join(
                f"{by_metric[m]['mean']:>14.3f} ±{by_metric[m]['std']:>6.2f}{by_metric[m]['median']:>9.3f}"
                if m in by_metric else f"{'-':>22}{'-':>9}" for m in metrics)
            count = max(v["tracks"] for v in by_metric.values())
            lines.append(f"  {name[:28]:<28}{cells}  {count:>6}")
    for name, system in results["systems"].items():
        for track, error in system["errors"].items():
            lines.append(f"{name}: {track}: {error}")
        for track, stems in system["skipped"].items():
            lines.append(f"{name}: {track}: no estimate of {', '.join(stems)}")
    return "\n".join(lines).lstrip("\n")


def write_json(results: dict, path: str | Path) -> Path:
    out = paths.check_output_file(path, "--json")
    out.write_text(json.dumps(results, indent=1))
    return out


def write_csv(results: dict, path: str | Path) -> Path:
    out = paths.check_output_file(path, "--csv")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["system", "track", "stem", *results["metrics"]])
    for name, system in results["systems"].items():
        for track, scores in system["tracks"].items():
            for stem, by_metric in scores.items():
                writer.writerow([name, track, stem, *(by_metric.get(m, "") for m in results["metrics"])])
    out.write_text(text.getvalue())
    return out


def plot(results: dict, path: str | Path, metric: str = "sdr") -> Path:
    """One panel per stem: each system's `metric` per track (PNG, SVG or PDF by the file's suffix)."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    out = paths.check_output_file(path, "--plot")
    stems = _stems(results) or ["-"]
    tracks = results["tracks"]
    fig, axes = plt.subplots(len(stems), 1, figsize=(max(6.0, 0.5 * len(tracks) + 3), 2.6 * len(stems)),
                             squeeze=False)
    for ax, stem in zip(axes[:, 0], stems, strict=True):
        for name, system in results["systems"].items():
            xs = [i for i, t in enumerate(tracks) if stem in system["tracks"].get(t, {})]
            ys = [system["tracks"][tracks[i]][stem].get(metric) for i in xs]
            if xs:
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_title(stem)
        ax.set_ylabel(f"{metric} (dB)" if "sdr" in metric else metric)
        ax.set_xticks(range(len(tracks)), tracks, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
