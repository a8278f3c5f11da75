"""MUSDB-style tracks: a folder holding `mixture.<ext>` and one audio file per stem, given itself or
as one of the folders under a given folder. Each track is checked before any model runs; a track
that fails is an error of that track alone."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

AUDIO = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


@dataclass
class Track:
    name: str
    folder: Path
    mixture: Path | None = None
    stems: dict[str, Path] = field(default_factory=dict)
    samplerate: int = 0
    channels: int = 0
    frames: int = 0
    error: str | None = None  # why this track cannot be scored

    def key(self) -> dict:
        """What a cached separation of this track depends on: the mixture file as it is now."""
        assert self.mixture is not None
        st = self.mixture.stat()
        return {"mixture": str(self.mixture.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO)


def _mixture(folder: Path) -> Path | None:
    return next((p for p in _audio_files(folder) if p.stem.lower() == "mixture"), None)


def _check(track: Track) -> Track:
    assert track.mixture is not None
    track.stems = {p.stem: p for p in _audio_files(track.folder) if p.stem.lower() != "mixture"}
    if not track.stems:
        track.error = f"track {track.name}: no stem files beside {track.mixture.name} (one audio file per stem)"
        return track
    try:
        info = {p: sf.info(str(p)) for p in [track.mixture, *track.stems.values()]}
    except Exception as e:  # libsndfile's complaint about the file it cannot read
        track.error = f"track {track.name}: cannot read {e}"
        return track
    mix = info[track.mixture]
    track.samplerate, track.channels, track.frames = mix.samplerate, mix.channels, mix.frames
    for path in track.stems.values():
        got = info[path]
        if (got.samplerate, got.channels, got.frames) != (mix.samplerate, mix.channels, mix.frames):
            track.error = (f"track {track.name}: stem {path.name} is {got.frames} frames, {got.samplerate} Hz, "
                           f"{got.channels} channels but {track.mixture.name} is {mix.frames} frames, "
                           f"{mix.samplerate} Hz, {mix.channels} channels: stems must match the mixture")
            return track
    return track


def find(dirs: list[str | Path]) -> list[Track]:
    """Every track under `dirs` in order, each checked (`error` set when it cannot be scored); a DIR
    holding no track is a track with that error, so it is reported beside the others."""
    out: list[Track] = []
    for given in map(Path, dirs):
        if not given.is_dir():
            out.append(Track(given.name, given, error=f"{given}: no such folder"))
            continue
        mixture = _mixture(given)
        if mixture is not None:
            out.append(_check(Track(given.name, given, mixture)))
            continue
        found = [Track(d.name, d, m) for d in sorted(given.iterdir()) if d.is_dir() and (m := _mixture(d))]
        if not found:
            out.append(Track(given.name, given, error=f"{given}: no track (a folder with mixture.<ext> and a "
                                                      "file per stem, or folders of such)"))
        out += [_check(t) for t in found]
    return _unique(out)


def _unique(tracks: list[Track]) -> list[Track]:
    """Names made unique (`name~2`, ...): results and cache folders are keyed by them, and two DIRs
    may each hold a `song_000`."""
    seen: dict[str, int] = {}
    for t in tracks:
        seen[t.name] = seen.get(t.name, 0) + 1
        if seen[t.name] > 1:
            t.name = f"{t.name}~{seen[t.name]}"
    return tracks
