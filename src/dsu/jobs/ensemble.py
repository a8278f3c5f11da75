"""The ensemble job: several models over one file, their stems blended as they are produced.

Every member runs its own engine passes (`engine.blocks`) over its own view of the input, and the
members are stepped side by side, always advancing the one furthest behind, so no member's output is
held longer than it takes the others to reach the same sample. A member whose model works on the
whole file at once (UVR VR) yields everything at its end; the others' blocks then wait for it, so
such an ensemble holds that many whole-file stems (documented in the README).

File ensembles (`files`) blend finished stem files the same way, block by block."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from .. import backends, engine, memory, paths
from ..audio import FORMATS, FileSignal, StemWriter
from ..blend import algorithms
from ..blend.blender import StemBlend
from ..errors import DSUError
from ..families import LoadedModel, ModelRef
from ..paths import safe_component
from ..protocol import COMMANDS, ENSEMBLE_FIELDS, MODEL_NAMING, check_family_options
from . import models as model_jobs
from . import outputs
from ._pipeline import estimate_of, make_passes, runtime_for
from .failures import reraise, stop_if_cancelled

Progress = Callable[..., None]  # progress(fraction, member=name)

LAYOUTS = {"demucs": "demucs", "flat": "flat", "msst": "flat", "uvr": "uvr", "audio_separator": "uvr"}
MEMBER_KEYS = set(model_jobs.MODEL_KEYS) | {"stem_map"}
# spellings of one stem across model families (python-audio-separator's STEM_NAME_MAP, lower case)
EQUIVALENT = {"instrumental": "instrumental", "inst": "instrumental", "karaoke": "instrumental",
              "no_vocals": "instrumental", "no vocals": "instrumental", "accompaniment": "instrumental",
              "vocals": "vocals", "vocal": "vocals"}
SLUG_PREFIXES = ("mel_band_roformer_", "melband_roformer_", "bs_roformer_", "model_bs_roformer_",
                 "UVR-MDX-NET-", "UVR_MDXNET_")


def default_reference(worker_name: str) -> str:
    return "audio_separator" if worker_name == "dsu-audio-separator" else "msst"


def canonical_stem(stem: str, produced: list[str]) -> str:
    """The ensemble's name for a member's stem: case-insensitive, `no_vocals`/`inst`/... are
    `instrumental`, and `other` of a two-stem model that also makes vocals is its instrumental."""
    low = stem.lower().strip()
    if low in EQUIVALENT:
        return EQUIVALENT[low]
    if low == "other" and len(produced) == 2 and any("vocal" in p.lower() for p in produced):
        return "instrumental"
    return low


def presets() -> dict[str, dict]:
    """python-audio-separator's ensemble presets: name -> {models, algorithm, weights, ...}."""
    text = resources.files("dsu").joinpath("data/ensemble_presets.json").read_text(encoding="utf-8")
    return json.loads(text)["presets"]


def _algorithm(fields: dict) -> str:
    algorithm = fields.get("algorithm") or "avg_wave"
    if algorithm not in algorithms.ALGORITHMS:
        raise DSUError("bad_value", f"unknown algorithm {algorithm!r}; one of {', '.join(algorithms.ALGORITHMS)}")
    return algorithm


WEIGHTS = next(f for f in ENSEMBLE_FIELDS if f.name == "weights")


def check_weights(weights, count: int, what: str) -> Tensor | None:
    """The weights as float32 ratios summing to 1 (a preset's are checked as a request's): divided in
    double first, so that weights tiny or large within the table's range blend as their ratios do."""
    if weights is None:
        return None
    WEIGHTS.check(weights, "ensemble")
    if len(weights) != count:
        raise DSUError("bad_value", f"`weights` has {len(weights)} values for {count} {what}: give one per "
                                    f"{what[:-1]}, or none for equal weights")
    total = math.fsum(weights)
    if total <= 0:
        raise DSUError("bad_value", "`weights` sum to 0: at least one must be positive")
    return torch.tensor([w / total for w in weights], dtype=torch.float64).float()


@dataclass
class Member:
    index: int
    request: dict                     # model fields
    options: dict                     # family options of this member
    stem_map: dict[str, str]
    label: str = ""
    ref: ModelRef | None = None
    model: LoadedModel | None = None
    from_cache: bool = False
    mapping: dict[str, str] = field(default_factory=dict)  # member stem -> ensemble stem
    runtime: backends.Runtime | None = None  # what ran its network, once it ran

    @property
    def loaded(self) -> LoadedModel:
        """The model, once `ensemble` has loaded it."""
        assert self.model is not None
        return self.model

    def fail(self, e: DSUError) -> DSUError:
        return DSUError(e.code, f"ensemble member {self.index + 1} ({self.label}): {e.message}")


def _members(models, extra: dict) -> list[Member]:
    if not isinstance(models, list) or len(models) < 2:
        got = len(models) if isinstance(models, list) else "none"
        raise DSUError("bad_value", f"an ensemble needs at least 2 `models` (got {got}): give each as "
                                    "`{\"model\": ...}` or `{\"model_path\": ...}`, or a `preset`")
    out = []
    for i, m in enumerate(models):
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, dict):
            raise DSUError("bad_value", f"`models[{i}]` must be an object like {{\"model\": \"dsp\"}}, "
                                        f"not {json.dumps(m)}")
        for k in (f.name for f in MODEL_NAMING):
            if k in m and m[k] is not None and not isinstance(m[k], str):
                raise DSUError("bad_value", f"`models[{i}].{k}` must be a string, not {json.dumps(m[k])}")
        stem_map = m.get("stem_map") or {}
        if not isinstance(stem_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in stem_map.items()):
            raise DSUError("bad_value", f"`models[{i}].stem_map` must map the member's stem names to ensemble "
                                        "stem names (strings), e.g. {\"no_vocals\": \"instrumental\"}")
        request = {k: v for k, v in m.items() if k in model_jobs.MODEL_KEYS}
        if not request.get("model") and not request.get("model_path"):
            raise DSUError("missing_field", f"`models[{i}]` needs `model` or `model_path`")
        label = request.get("model") or Path(request["model_path"]).name
        options = {k: v for k, v in m.items() if k not in MEMBER_KEYS}
        try:  # as the request's own family options were, before any model sees them
            check_family_options(COMMANDS["ensemble"], options)
        except DSUError as e:
            raise DSUError(e.code, f"ensemble member {i + 1} ({label}): {e.message}") from None
        options = {**extra, **options}
        out.append(Member(i, request, options, {k.lower(): v for k, v in stem_map.items()}, label))
    return out


def ensemble_name(fields: dict, members: list[Member]) -> str:
    """`name`, else python-audio-separator's: preset_<preset> or custom_ensemble_<member slugs>."""
    if fields.get("name"):
        name = fields["name"]
    elif fields.get("preset"):
        name = f"preset_{fields['preset']}"
    else:
        slugs = []
        for m in members:
            slug = Path(m.label).stem if "." in m.label else m.label
            slug = next((slug[len(p):] for p in SLUG_PREFIXES if slug.startswith(p)), slug)
            slugs.append(slug[:12])
        name = "custom_ensemble_" + "_".join(slugs)
    return safe_component(name)


# ---- models ------------------------------------------------------------------------------------------

def ensemble(fields: dict, extra: dict, *, cache, models_dir: Path | None, emit, layout: str = "flat",
             reference: str = "msst", progress: Progress | None = None,
             cancelled: Callable[[], bool] | None = None) -> dict:
    """The `ensemble` command: `fields` validated by the protocol table, `extra` the family options
    given for every member; `layout`/`reference` are the worker's defaults for those fields."""
    started = time.perf_counter()
    if fields.get("files"):
        if fields.get("models") or fields.get("preset"):
            raise DSUError("bad_value", "give either `files` (stem files to blend) or `models`/`preset`, not both")
        return ensemble_files(fields, reference=fields.get("reference") or reference, progress=progress,
                              cancelled=cancelled, started=started)
    fields = dict(fields)
    if fields.get("preset"):
        table = presets()
        if fields["preset"] not in table:
            raise DSUError("bad_value", f"unknown preset {fields['preset']!r}; presets: {', '.join(table)}")
        preset = table[fields["preset"]]
        fields.setdefault("models", [{"model": m} for m in preset["models"]])
        if not fields.get("algorithm"):
            fields["algorithm"] = preset["algorithm"]
        if fields.get("weights") is None and preset.get("weights") is not None:
            fields["weights"] = preset["weights"]
    algorithm = _algorithm(fields)
    reference = fields.get("reference") or reference
    if not fields.get("input"):
        raise DSUError("missing_field", "ensemble needs `input` (the audio file) with `models`, or `files`")
    if not fields.get("output_dir"):
        raise DSUError("missing_field", "ensemble needs `output_dir` (the folder the blended stems go under)")
    members = _members(fields.get("models"), extra)
    weights = check_weights(fields.get("weights"), len(members), "members")
    layout_name = fields.get("layout") or layout
    if layout_name not in LAYOUTS:
        if "{" not in layout_name:
            raise DSUError("bad_value", f"`layout` must be one of {', '.join(LAYOUTS)} or a template, "
                                        f"not {layout_name!r}")
        outputs.template_of(layout_name)  # before the output folder is made
    output_names = outputs.check_output_names(fields.get("output_names"))
    input_path = paths.check_input(fields["input"])
    # separate's check, before any member resolves or loads; the stems go under this absolute folder
    out = _Output(paths.check_output_dir(fields["output_dir"]), LAYOUTS.get(layout_name, layout_name),
                  output_names, fields.get("format", "wav"), fields.get("bit_depth") or 32)

    for m in members:  # every name resolved before anything heavy is loaded
        try:
            m.ref = model_jobs.resolve(m.request, models_dir)
        except DSUError as e:
            raise m.fail(e) from None
    restore = None
    if cache.enabled and cache.max_models < len(members):
        restore = cache.max_models
        cache.set_limits(max_models=len(members), on_evict=lambda name: emit("cache_evicted", model=name))
    try:
        for m in members:
            stop_if_cancelled(cancelled, "while loading its members")
            assert m.ref is not None  # every member was resolved above
            try:
                m.model, m.from_cache = model_jobs.load(m.ref, cache, emit)
                m.options, _ = model_jobs.family_options(m.model, m.options)
            except DSUError as e:
                raise m.fail(e) from None
            m.label = m.ref.name
        return _run_members(fields, members, _Blend(algorithm, weights, reference), input_path, out, emit,
                            progress, cancelled, started, models_dir)
    finally:
        if restore is not None:
            cache.set_limits(max_models=restore, on_evict=lambda name: emit("cache_evicted", model=name))


def _plan(members: list[Member], wanted) -> tuple[list[str], dict[str, list[int]]]:
    """(the ensemble's stems, for each the members that make it)."""
    for m in members:
        assert m.model is not None  # loaded before the plan is made
        produced = m.model.output_stems(**m.options)
        m.mapping = {s: canonical_stem(m.stem_map.get(s.lower(), s), produced) for s in produced}
    order: list[str] = []
    for m in members:
        order.extend(s for s in m.mapping.values() if s not in order)
    if wanted:
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        asked = [canonical_stem(s, []) for s in wanted]
        missing = [s for s, a in zip(wanted, asked, strict=True) if a not in order]
        if missing:
            makes = "; ".join(f"{m.label} makes {', '.join(m.mapping)}" for m in members)
            raise DSUError("bad_value", f"no member makes stem {', '.join(missing)}: {makes} "
                                        "(a member's `stem_map` can rename its stems)")
        order = list(dict.fromkeys(asked))
    return order, {s: [m.index for m in members if s in m.mapping.values()] for s in order}


class _MemberRun:
    """One member stepping through the file: its engine blocks, finished into ensemble stems."""

    def __init__(self, member: Member, input_path: Path, wanted: list[str], report, cancelled,
                 held: memory.Estimate | None):
        model = member.model
        assert model is not None  # every member is loaded before any runs
        self.member, self.model = member, model
        self.signal = FileSignal(input_path, model.samplerate, model.audio_channels, checked=True)
        self.length = self.signal.length
        # every member's overlap-add is held at once: each is checked beside those before it
        self.held = memory.beside(held, estimate_of(model, self.length, member.options, member.label,
                                                    runtime=member.runtime))
        passes = make_passes(model, self.signal, member.options, cancelled, self.held, runtime=member.runtime)
        needs_mix = type(model).finish is not LoadedModel.finish
        self.mix = self.signal.fresh() if needs_mix else None
        self.blocks = engine.blocks(passes, self.length, report, cancelled)
        self.position = 0
        self.done = False
        self.pending: dict[str, list[Tensor]] = {s: [] for s in wanted if s in member.mapping.values()}

    def step(self) -> None:
        try:
            block = next(self.blocks)
        except StopIteration:
            self.done = True
            return
        n = block.shape[-1]
        by_stem = dict(zip(self.model.stems, block, strict=False))
        if self.mix is not None:
            mix = self.mix.read(self.position, self.position + n)
            self.mix.forget(self.position + n)
            by_stem = self.model.finish(by_stem, mix, **self.member.options)
        for stem, target in self.member.mapping.items():
            if target in self.pending:
                self.pending[target].append(by_stem[stem])
        self.position += n

    def take(self, stem: str, n: int) -> Tensor:
        joined = torch.cat(self.pending[stem], -1) if len(self.pending[stem]) > 1 else self.pending[stem][0]
        rest = joined[..., n:]
        self.pending[stem] = [rest] if rest.shape[-1] else []
        return joined[..., :n]

    def close(self) -> None:
        self.signal.close()
        if self.mix is not None:
            self.mix.close()


@dataclass
class _Output:
    """Where the ensemble's stems go, checked before any member loads."""
    folder: Path
    layout: str
    names: dict[str, str]   # output_names, checked
    fmt: str
    bit_depth: int


@dataclass
class _Blend:
    algorithm: str
    weights: Tensor | None   # one per member
    reference: str


MEMBERS_LOWER = "members' `batch_size`/`segment`"


def _run_members(fields: dict, members: list[Member], blend: _Blend, input_path: Path, out: _Output, emit,
                 progress: Progress | None, cancelled, started: float, models_dir: Path | None = None) -> dict:
    """The loaded members over `input_path`, their stems blended into files under `out`; the answer."""
    samplerate, nch = _common_format(members)
    stems, contributors = _plan(members, fields.get("stems"))
    _check_stem_weights(blend.weights, contributors)
    name = ensemble_name(fields, members)
    targets = outputs.stem_paths(out.layout, out.folder, name, input_path, stems, out.fmt, output_names=out.names)
    used = [m for m in members if any(m.index in c for c in contributors.values())]
    emit("ensembling", input=fields["input"], model=name, members=[m.label for m in used],
         algorithm=blend.algorithm)
    for m in used:
        m.runtime = runtime_for(m.loaded, m.options, models_dir, emit)
    written = _blend_members(used, stems, input_path, targets, blend, out, samplerate, nch,
                             _member_progress(used, progress), cancelled)
    folder, names = outputs.written_folder(written, out.folder)
    return {"elapsed": round(time.perf_counter() - started, 3), "output_dir": str(folder),
            "files": names, "paths": [str(p.resolve()) for p in written], "stems": stems,
            "model": name, "algorithm": blend.algorithm,
            "weights": fields.get("weights"),
            "members": [_member_answer(m, stems) for m in members],
            "model_from_cache": all(m.from_cache for m in members),
            **({"warnings": said} if (said := [w for m in used if m.runtime for w in m.runtime.warnings]) else {})}


def _member_answer(m: Member, stems: list[str]) -> dict:
    assert m.ref is not None  # every member was resolved before any ran
    return {"model": m.label, "family": m.ref.family, "stems": list(m.mapping), "model_from_cache": m.from_cache,
            "blended": sorted({v for v in m.mapping.values() if v in stems}),
            **(m.runtime.fields() if m.runtime else {})}


def _common_format(members: list[Member]) -> tuple[int, int]:
    """(the sample rate, the channel count) every member works at, `bad_value` when they differ."""
    rates = {m.loaded.samplerate for m in members}
    channels = {m.loaded.audio_channels for m in members}
    if len(rates) > 1 or len(channels) > 1:
        said = ", ".join(f"{m.label}: {m.loaded.samplerate} Hz, {m.loaded.audio_channels} ch" for m in members)
        raise DSUError("bad_value", f"ensemble members must work at one sample rate and channel count ({said}); "
                                    "ensemble their stem files with `files` instead, which resamples")
    return rates.pop(), channels.pop()


def _check_stem_weights(weights: Tensor | None, contributors: dict[str, list[int]]) -> None:
    for s, makers in contributors.items():
        if weights is not None and len(makers) > 1 and float(weights[makers].sum()) <= 0:
            raise DSUError("bad_value", f"`weights` give every member that makes `{s}` weight 0 (members "
                                        f"{', '.join(str(k + 1) for k in makers)}): give one of them a positive "
                                        f"weight, or leave `{s}` out of `stems`")


def _member_progress(used: list[Member], progress: Progress | None) -> list[Callable[[float], None]]:
    """Each member's progress report: the ensemble's is the mean of its members', naming the one reporting."""
    fractions = [0.0] * len(used)

    def reporter(k: int):
        def report(fraction: float) -> None:
            fractions[k] = fraction
            if progress is not None:
                progress(sum(fractions) / len(used), member=used[k].label)
        return report
    return [reporter(k) for k in range(len(used))]


@contextmanager
def _blamed(member: Member):
    """A coded error raised in the block names `member`; a cancel names no one."""
    try:
        yield
    except DSUError as e:
        if e.code == "cancelled":
            raise
        raise member.fail(e) from None


def _blend_members(used: list[Member], stems: list[str], input_path: Path, targets: dict[str, Path], blend: _Blend,
                   out: _Output, samplerate: int, nch: int, reports, cancelled) -> list[Path]:
    """Every member stepped over the file, each stem's blend written as it is ready; the files written,
    or on any failure none of them (coded by the one mapping)."""
    runs: list[_MemberRun] = []
    writers: dict[str, StemWriter] = {}
    blends: dict[str, StemBlend] = {}
    try:
        for m, report in zip(used, reports, strict=True):
            with _blamed(m):
                runs.append(_MemberRun(m, input_path, stems, report, cancelled, runs[-1].held if runs else None))
        for s in stems:
            idx = [k for k, r in enumerate(runs) if s in r.pending]
            w = None if blend.weights is None else blend.weights[[used[k].index for k in idx]]
            blends[s] = StemBlend(blend.algorithm, len(idx), nch, runs[0].length, w, blend.reference,
                                  targets[s].parent, stem=s)
            writers[s] = StemWriter({s: targets[s]}, samplerate, nch, out.fmt, out.bit_depth)
        _step_all(runs, stems, blends, writers)
        for s in stems:
            for block in blends[s].finish():
                writers[s].write({s: block})
        return [writers[s].commit()[0] for s in stems]
    except BaseException as e:
        _abort(writers)
        reraise(e, MEMBERS_LOWER, what="the ensemble")
    finally:
        for b in blends.values():
            b.close()
        for r in runs:
            r.close()


def _step_all(runs: list[_MemberRun], stems: list[str], blends: dict[str, StemBlend],
              writers: dict[str, StemWriter]) -> None:
    """Step the member furthest behind until all are done, blending and writing what every member has
    reached."""
    length = runs[0].length
    emitted = 0
    while not all(r.done for r in runs):
        behind = min((r for r in runs if not r.done), key=lambda r: r.position)
        with _blamed(behind.member):
            behind.step()
        ready = min(r.position if not r.done else length for r in runs)
        if ready > emitted:
            n = ready - emitted
            for s in stems:
                block = torch.stack([r.take(s, n) for r in runs if s in r.pending])
                blended = blends[s].push(block)
                if blended.shape[-1]:
                    writers[s].write({s: blended})
            emitted = ready


def _abort(writers: dict[str, StemWriter]) -> None:
    for w in reversed(writers.values()):  # the first made the track folder: aborted last, it finds it empty
        w.abort()


# ---- files -------------------------------------------------------------------------------------------

BLOCK = 1 << 16


def ensemble_files(fields: dict, *, reference: str = "msst", progress: Progress | None = None,
                   cancelled: Callable[[], bool] | None = None, started: float | None = None) -> dict:
    """Blend finished stem files into one (MSST's ensemble.py, the previous DSU's offline utility).
    Like python-audio-separator: files are read at the first one's sample rate, mono is copied to both
    channels (and the result stays mono when every file is), shorter files are padded with silence."""
    started = started or time.perf_counter()
    if len(fields["files"]) < 2:
        raise DSUError("bad_value", f"a file ensemble needs at least 2 `files` (got {len(fields['files'])})")
    if not fields.get("output"):
        raise DSUError("missing_field", "a file ensemble needs `output`: the file to write")
    algorithm = _algorithm(fields)
    weights = check_weights(fields.get("weights"), len(fields["files"]), "files")
    files = [paths.check_input(f, f"files[{i}]") for i, f in enumerate(fields["files"])]
    output = paths.check_output_file(fields["output"])  # separate's check of its folder, before any reading
    paths.check_not_input(output, dict.fromkeys(files, "one of `files`"))
    signals = [FileSignal(files[0], checked=True)]
    rate = signals[0].input_samplerate
    try:
        for f in files[1:]:
            signals.append(FileSignal(f, rate, checked=True))
        counts = [s.input_channels for s in signals]
        distinct = sorted(set(counts) - {1})
        if len(distinct) > 1:
            raise DSUError("bad_value", f"the files have {', '.join(map(str, counts))} channels: they must all "
                                        "have the same count (mono files are copied to every channel)")
        nch = distinct[0] if distinct else 1
        length = max(s.length for s in signals)
        suffix = output.suffix.lstrip(".").lower()
        fmt = suffix if suffix in FORMATS else fields.get("format") or "wav"
        writer = StemWriter({"ensemble": output}, rate, nch, fmt, fields.get("bit_depth") or 32)
        blend = StemBlend(algorithm, len(files), nch, length, weights, reference, output.parent, stem=output.name)
        try:
            for pos in range(0, length, BLOCK):
                stop_if_cancelled(cancelled, what="the ensemble")
                # a mono file is copied to every channel
                block = torch.stack([s.read(pos, min(pos + BLOCK, length)).expand(nch, -1) for s in signals])
                for s in signals:
                    s.forget(pos + BLOCK)
                out = blend.push(block)
                if out.shape[-1]:
                    writer.write({"ensemble": out})
                if progress is not None:
                    progress(min(1.0, (pos + BLOCK) / length) * 0.999)
            for out in blend.finish():
                writer.write({"ensemble": out})
            written = writer.commit()[0]
        except BaseException:
            writer.abort()
            raise
        finally:
            blend.close()
    finally:
        for s in signals:
            s.close()
    if progress is not None:
        progress(1.0)
    return {"elapsed": round(time.perf_counter() - started, 3), "output_dir": str(written.parent.resolve()),
            "files": [written.name], "paths": [str(written.resolve())], "stems": ["ensemble"],
            "model": "files", "algorithm": algorithm,
            "weights": fields.get("weights"),
            "members": [{"file": str(f)} for f in files]}
