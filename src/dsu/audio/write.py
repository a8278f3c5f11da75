"""Audio out: streaming stem writers that only ever expose complete files (written under a temporary
name, renamed when complete), the formats and bit depths they take, and what a failed write means."""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from .. import tempfiles
from ..errors import DSUError
from ..paths import native

FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}


def subtype_for(fmt: str, bit_depth: int) -> str | None:
    if fmt not in FORMATS:
        raise DSUError("bad_value", f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if bit_depth not in (16, 24, 32):
        raise DSUError("bad_value", f"bit_depth must be 16, 24 or 32 (float), not {bit_depth!r}")
    if fmt == "mp3":
        return "MPEG_LAYER_III"
    if fmt == "flac":  # FLAC has no float samples: 32 is written as 24-bit
        return "PCM_16" if bit_depth == 16 else "PCM_24"
    return {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}[bit_depth]


MP3_BITRATES = {"MPEG-1": (32, 320), "MPEG-2": (8, 160), "MPEG-2.5": (8, 64)}  # kbps a LAME CBR stream can have


def mp3_settings(bitrate: int, samplerate: int) -> dict:
    """soundfile's arguments for a constant-bitrate MP3 of about `bitrate` kbps: libsndfile maps its
    compression level 0..1 linearly onto the bitrates of the MPEG version the sample rate implies
    (measured: 320 -> 321.8, 128 -> 128.7 kbps at 44.1 kHz); higher rates are capped to what it allows."""
    version = "MPEG-1" if samplerate >= 32000 else "MPEG-2" if samplerate >= 16000 else "MPEG-2.5"
    low, high = MP3_BITRATES[version]
    level = (high - min(max(bitrate, low), high)) / (high - low)
    return {"compression_level": min(level, 0.999), "bitrate_mode": "CONSTANT"}  # 1.0 is refused


SFE_SYSTEM = 2  # libsndfile's "System error.": an open(2)/write(2)/lseek(2) failed


def write_errno(e: BaseException) -> int | None:
    """The OS error behind a failed write: an OSError's errno, or for libsndfile's "System error."
    the errno its failing system call left (cffi keeps it per thread until the next C call); None
    for anything else (a format libsndfile refuses is not the disk's fault)."""
    if isinstance(e, OSError):
        return e.errno or errno.EIO
    if isinstance(e, sf.LibsndfileError) and e.code == SFE_SYSTEM:
        return sf._ffi.errno or errno.EIO
    return None


@contextlib.contextmanager
def write_faults(final: Path) -> Iterator[None]:
    """Writing toward `final`: a full disk, a folder removed or turned read-only is `output_not_writable`
    (`tempfiles.write_failure`), never `internal`. Read the errno before anything else calls C."""
    try:
        yield
    except DSUError:
        raise
    except Exception as e:
        err = write_errno(e)
        if err is None:
            raise
        raise tempfiles.write_failure(Path(final), err) from None


def output_format(output_path: Path, fmt: str | None) -> str:
    """`fmt`, else the output's extension (wav when it has none)."""
    fmt = (fmt or output_path.suffix.lstrip(".") or "wav").lower()
    if fmt not in FORMATS:
        raise DSUError("bad_value", f"cannot write {output_path.name}: the format {fmt!r} is not one of "
                                    f"{', '.join(FORMATS)}; name the output .wav, .flac or .mp3 (or give `format`)")
    return fmt


class StemWriter:
    """Writes several stems block by block to temporary names; `commit` renames them all, `abort`
    (or a crash) leaves nothing that looks finished.

    With `peak_limit`, a stem whose peak ends up above it is scaled down to it as a whole (as
    python-audio-separator writes its stems): the blocks go to a float file first, and `commit`
    rewrites each stem in the asked format, scaled, block by block."""

    def __init__(self, paths: dict[str, Path], samplerate: int, channels: int, fmt: str = "wav",
                 bit_depth: int = 16, out_samplerate: int | None = None, peak_limit: float | None = None,
                 mp3_bitrate: int | None = None):
        self.paths = {k: Path(v) for k, v in paths.items()}
        self.samplerate = samplerate
        self.out_samplerate = out_samplerate or samplerate
        self.channels = channels
        self.fmt = fmt
        self.subtype = subtype_for(fmt, bit_depth)
        self.peak_limit = peak_limit
        self.mp3_bitrate = mp3_bitrate or 320
        self.peaks = {stem: 0.0 for stem in self.paths}
        self.clip = self.subtype not in ("FLOAT",) and peak_limit is None
        self._files: dict[str, sf.SoundFile] = {}
        self._resamplers: dict[str, soxr.ResampleStream] = {}
        # this writer's own temporaries, so another job writing the same paths never touches them
        self.partials = {stem: tempfiles.temp_name(path) for stem, path in self.paths.items()}
        self.unscaled = {stem: tempfiles.temp_name(path, ".unscaled") for stem, path in self.paths.items()} \
            if peak_limit is not None else {}
        self._made: list[Path] = []  # folders this writer made, deepest last: an abort removes them if empty
        for stem, path in self.paths.items():
            with self._writing(stem):
                self._make_folder(path.parent)
                if peak_limit is None:
                    self._files[stem] = self._open(self.partials[stem])
                else:
                    self._files[stem] = sf.SoundFile(native(self.unscaled[stem]), "w", channels=channels,
                                                     samplerate=self.out_samplerate, format="WAV", subtype="FLOAT")
            if self.out_samplerate != samplerate:
                self._resamplers[stem] = soxr.ResampleStream(samplerate, self.out_samplerate, channels,
                                                             dtype="float32", quality="HQ")

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another job made it meanwhile: not ours
                folder.mkdir()
                self._made.append(folder)

    @contextlib.contextmanager
    def _writing(self, stem: str) -> Iterator[None]:
        """Any failure aborts the writer (no temporary is left); OS faults become coded errors."""
        try:
            with write_faults(self.paths[stem]):
                yield
        except BaseException:
            self.abort()
            raise

    def _open(self, path: Path) -> sf.SoundFile:
        extra = mp3_settings(self.mp3_bitrate, self.out_samplerate) if self.fmt == "mp3" else {}
        return sf.SoundFile(native(path), "w", samplerate=self.out_samplerate, channels=self.channels,
                            format=FORMATS[self.fmt], subtype=self.subtype, **extra)

    def write(self, blocks: dict[str, Tensor], last: bool = False) -> None:
        """`blocks[stem]` is [channels, n] at the model's sample rate."""
        for stem, f in self._files.items():
            data = blocks[stem].detach().cpu().float().numpy().T
            if stem in self._resamplers:
                data = self._resamplers[stem].resample_chunk(np.ascontiguousarray(data), last=last)
            if self.clip:
                data = np.clip(data, -1.0, 1.0)
            if data.size:
                self.peaks[stem] = max(self.peaks[stem], float(np.abs(data).max()))
            with self._writing(stem):
                f.write(np.ascontiguousarray(data, dtype=np.float32))

    def commit(self) -> list[Path]:
        if self._resamplers:
            empty = {s: torch.zeros(self.channels, 0) for s in self._files}
            self.write(empty, last=True)
        for stem, f in self._files.items():
            with self._writing(stem):
                f.close()
        self._files = {}
        if self.peak_limit is not None:
            for stem in self.paths:
                with self._writing(stem):
                    self._rewrite_scaled(stem)
        try:
            tempfiles.commit({self.partials[stem]: path for stem, path in self.paths.items()})
        except BaseException:
            self.abort()
            raise
        return list(self.paths.values())

    def _rewrite_scaled(self, stem: str) -> None:
        assert self.peak_limit is not None  # rewritten only to scale down to it
        peak = self.peaks[stem]
        gain = self.peak_limit / peak if peak > self.peak_limit else 1.0
        clip = self.subtype not in ("FLOAT",)
        with sf.SoundFile(native(self.unscaled[stem])) as source, self._open(self.partials[stem]) as target:
            for block in source.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                block = block * np.float32(gain) if gain != 1.0 else block
                target.write(np.clip(block, -1.0, 1.0) if clip else block)
        self.unscaled[stem].unlink()

    def abort(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:
                pass
        self._files = {}
        for temp in [*self.partials.values(), *self.unscaled.values()]:
            with contextlib.suppress(OSError):  # a folder removed or turned read-only: nothing more to do
                temp.unlink(missing_ok=True)
        kept: list[Path] = []
        for folder in reversed(self._made):  # files of another writer keep it, until that one aborts too
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                kept.insert(0, folder)
        self._made = kept


def write_audio(path: str | os.PathLike, audio: Tensor, samplerate: int, fmt: str | None = None,
                bit_depth: int = 16) -> Path:
    """One complete file, written under a temporary name first."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower() or "wav"
    w = StemWriter({"audio": path}, samplerate, audio.shape[0], fmt, bit_depth)
    try:
        w.write({"audio": audio})
        w.commit()
    except BaseException:
        w.abort()
        raise
    return path
