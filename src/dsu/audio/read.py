"""Audio in: streaming decode (libsndfile, ffmpeg for what it cannot read) with resampling and channel
conversion, damaged and non-finite input found as it is read."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from .. import paths, tempfiles
from ..engine import Cancelled
from ..errors import DSUError
from ..paths import native

BLOCK = 1 << 16  # frames decoded per read


def resampled_length(frames: int, src: int, dst: int) -> int:
    """Frames soxr produces for `frames` input frames (streaming and one-shot agree)."""
    return frames if src == dst else int(frames * dst / src + 0.5)


def convert_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """[frames, c] to [frames, channels]: mono is copied to every channel, more channels than
    needed are averaged down to mono or cut to the first ones (as Demucs does)."""
    have = block.shape[1]
    if have == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, keepdims=True)
    if have == 1:
        return np.repeat(block, channels, axis=1)
    if have > channels:
        return block[:, :channels]
    raise DSUError("unsupported_audio", f"cannot make {channels} channels out of {have}")


FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the only sample formats that can hold NaN or infinities
# libsndfile's log for a file cut short: "data : <bytes the header says> (should be <bytes there>)"
_SHORT_DATA = re.compile(r"(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)")
_BLOCK_ALIGN = re.compile(r"Block Align\s*:\s*(\d+)")


def reason(e: Exception) -> str:
    """libsndfile's complaint without its "Error opening '...': " prefix or its (doubled) full stops."""
    text = " ".join(str(e).split())
    text = re.sub(r"^Error opening b?(['\"]).*?\1:\s*", "", text)  # the name (bytes: see paths.native)
    if "does not exist" in text:  # what libsndfile says of an existing file its decoders all refuse
        text = ""
    return text.rstrip(" .") or "format not recognised"


class _Decoded:
    """Where an input file can be read from: the file itself, or a wav ffmpeg made of it."""

    def __init__(self, path: Path):
        self.path = path
        self.temp: Path | None = None
        try:
            info = sf.info(native(path))
        except Exception as e:  # libsndfile does not know it: try ffmpeg when it is installed
            self.temp = _ffmpeg_to_wav(path, e)
            info = sf.info(native(self.temp))
        if info.frames <= 0:
            raise DSUError("unsupported_audio", f"{path.name} holds no audio frames")
        self.samplerate, self.channels, self.frames = info.samplerate, info.channels, info.frames
        self.subtype = info.subtype
        self.missing_frames = _frames_missing(self.source, info)

    @property
    def may_hold_nonfinite(self) -> bool:
        return self.temp is not None or self.subtype in FLOAT_SUBTYPES

    def nonfinite(self) -> tuple[int, int, int]:
        """(NaN/infinite samples, first and last frame holding one) over the whole file."""
        count, first, last = 0, -1, -1
        with sf.SoundFile(self.source) as f:
            pos = 0
            while True:
                try:
                    block = f.read(BLOCK, dtype="float32", always_2d=True)
                except Exception:
                    break  # damaged: the reader says so where it gets there
                bad = ~np.isfinite(block)
                if bad.any():
                    frames = np.flatnonzero(bad.any(axis=1))
                    count += int(bad.sum())
                    first = pos + int(frames[0]) if first < 0 else first
                    last = pos + int(frames[-1])
                pos += len(block)
                if len(block) < BLOCK:
                    break
        return count, first, last

    @property
    def source(self) -> str | bytes:
        return native(self.temp or self.path)

    def close(self) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self.temp = None


def _frames_missing(source: str | bytes, info) -> int:
    """Frames the header promises beyond the data the file holds (libsndfile reads only what is there)."""
    try:
        with sf.SoundFile(source) as f:
            log = f.extra_info
    except Exception:
        return 0
    short, align = _SHORT_DATA.search(log), _BLOCK_ALIGN.search(log)
    if short is None:
        return 0
    frame_bytes = int(align[1]) if align else info.channels * 2
    return max(0, (int(short[1]) - int(short[2])) // max(frame_bytes, 1))


def _ffmpeg_to_wav(path: Path, why: Exception) -> Path:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DSUError("unsupported_audio",
                       f"{path.name} is not an audio file libsndfile can decode ({reason(why)}); if it is audio in "
                       "another format, install ffmpeg or convert it to wav/flac") from None
    fd, tmp = tempfile.mkstemp(suffix=".wav", prefix=tempfiles.decode_prefix())
    os.close(fd)
    done = subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(path), "-f", "wav", "-acodec", "pcm_f32le", tmp],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        said = " ".join(done.stderr.decode(errors="replace").split())[-300:].rstrip(" .")
        raise DSUError("unsupported_audio", f"{path.name} is not an audio file libsndfile or ffmpeg can decode "
                                            f"(libsndfile: {reason(why)}; ffmpeg: {said or 'failed'})")
    return Path(tmp)


class FileSignal:
    """An audio file decoded on demand at `samplerate` with `channels`, holding only the samples not yet
    forgotten, so a long file costs memory in proportion to the chunk span, not its duration.
    `checked`: `path` is what `paths.check_input` returned to the job, not checked again; `scanned`: its
    samples were read through once already (a `fresh` reader), not scanned again."""

    def __init__(self, path: str | os.PathLike, samplerate: int | None = None, channels: int | None = None,
                 sanitize: bool = False, checked: bool = False, scanned: bool = False):
        self.path = Path(path) if checked else paths.check_input(path)
        self.sanitize = sanitize
        self.warnings: list[str] = []   # what a finished job reports about its input
        self.cancelled = None           # a job's cancel check, asked before every block decoded
        self._decoded = _Decoded(self.path)
        self._start(self._decoded.samplerate, self._decoded.channels, self._decoded.frames, samplerate, channels)
        if not scanned:
            self._check_input()

    def _start(self, input_samplerate: int, input_channels: int, input_frames: int, samplerate: int | None,
               channels: int | None) -> None:
        self._frames_read = 0
        self.input_samplerate = input_samplerate
        self.input_channels = input_channels
        self.input_frames = input_frames
        self.samplerate = samplerate or self.input_samplerate
        self.channels = channels or self.input_channels
        self.length = resampled_length(self.input_frames, self.input_samplerate, self.samplerate)
        self._file: sf.SoundFile | None = None
        self._resampler = None
        self._buf = np.zeros((0, self.channels), np.float32)
        self._buf_start = 0  # timeline position of _buf[0]
        self._produced = 0   # samples decoded so far (== _buf_start + len(_buf))
        self._exhausted = False

    def fresh(self) -> FileSignal:
        """An independent reader of the same file (for a statistics pass before the real one)."""
        other = FileSignal(self.path, self.samplerate, self.channels, self.sanitize, checked=True, scanned=True)
        other.cancelled = self.cancelled
        return other

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def _seconds(self, frames: int) -> str:
        return f"{frames / self.input_samplerate:.2f} s ({frames} frames)"

    def _check_input(self) -> None:
        """Refuse (or with `sanitize`, note) NaN/infinite samples; note a header promising more than
        the file holds."""
        missing = self._decoded.missing_frames
        if missing:
            self._warn(f"{self.path.name} is truncated: {self._seconds(missing)} its header promises are "
                       f"missing; it was read as far as it goes ({self._seconds(self.input_frames)})")
        if not self._decoded.may_hold_nonfinite:
            return
        count, first, last = self._decoded.nonfinite()
        if not count:
            return
        where = (f"frames {first} to {last}, {first / self.input_samplerate:.2f} s to "
                 f"{last / self.input_samplerate:.2f} s")
        if not self.sanitize:
            self._exhausted = True
            self.close()
            raise DSUError("unsupported_audio", f"{self.path.name} holds {count} NaN or infinite samples ({where}); "
                                                "the stems would be garbage. Repair the file, or send "
                                                "`sanitize: true` to read them as silence")
        self._warn(f"{self.path.name}: {count} NaN or infinite samples ({where}) were read as 0 (sanitize)")

    def _read_block(self) -> np.ndarray:
        """The next block; a file that breaks off (a damaged or cut FLAC) is read up to the break, in
        small steps from the block that failed, and noted; one with nothing readable is refused."""
        start = self._frames_read
        assert self._file is not None  # blocks are read from an open file
        try:
            return self._file.read(BLOCK, dtype="float32", always_2d=True)
        except Exception as e:
            why = e
        pieces: list[np.ndarray] = []
        try:  # libsndfile cannot seek a decoder that lost its way: a fresh one reads up to the break
            self._file.close()
            self._file = sf.SoundFile(self._decoded.source)
            self._file.seek(start)
            while sum(map(len, pieces)) < BLOCK - 1:
                piece = self._file.read(1024, dtype="float32", always_2d=True)
                pieces.append(piece)
                if len(piece) < 1024:
                    break
        except Exception:
            pass
        got = np.concatenate(pieces) if pieces else np.zeros((0, self.input_channels), np.float32)
        if start + len(got) == 0:
            raise DSUError("unsupported_audio", f"{self.path.name} is damaged: {reason(why)}") from None
        return got[:BLOCK - 1]  # short: the caller takes it as the last block

    def _decode_more(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise Cancelled()
        if self._file is None:
            self._open()
            if self.samplerate != self.input_samplerate:
                self._resampler = soxr.ResampleStream(self.input_samplerate, self.samplerate, self.channels,
                                                      dtype="float32", quality="HQ")
        block = self._read_block()
        self._frames_read += len(block)
        last = len(block) < BLOCK
        if last and self._frames_read < self.input_frames:
            self._warn(f"{self.path.name} is damaged or truncated: "
                       f"{self._seconds(self.input_frames - self._frames_read)} could not be read; it was read as "
                       f"far as it goes ({self._seconds(self._frames_read)})")
        if self.sanitize and not np.isfinite(block).all():
            block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        block = convert_channels(block, self.channels)
        if self._resampler is not None:
            block = self._resampler.resample_chunk(np.ascontiguousarray(block), last=last)
        block = block[: max(0, self.length - self._produced)]
        if last:
            self._exhausted = True
            self.close()
        self._buf = np.concatenate([self._buf, block]) if len(self._buf) else block
        self._produced += len(block)

    def _open(self) -> None:
        try:
            self._file = sf.SoundFile(self._decoded.source)
        except Exception as e:
            raise DSUError("unsupported_audio", f"cannot read {self.path.name}: {e}") from None

    def read(self, start: int, stop: int) -> Tensor:
        want = min(stop, self.length)
        while self._produced < want and not self._exhausted:
            self._decode_more()
        if max(start, 0) < self._buf_start and max(start, 0) < min(stop, self.length):
            raise RuntimeError(f"sample {start} was already forgotten (kept from {self._buf_start})")
        out = np.zeros((stop - start, self.channels), np.float32)
        lo, hi = max(start, 0), min(stop, self._produced)
        if hi > lo:
            out[lo - start:hi - start] = self._buf[lo - self._buf_start:hi - self._buf_start]
        return torch.from_numpy(out.T.copy())

    def forget(self, before: int) -> None:
        drop = min(before, self._produced) - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._exhausted:
            self._decoded.close()

    def __del__(self):
        try:
            self._exhausted = True
            self.close()
        except Exception:
            pass




class ArraySignal(FileSignal):
    """An array [frames, channels] read as `FileSignal` reads a file: the same blocks, channel conversion,
    resampling and non-finite checks, so a model sees exactly the samples `dsu separate` gives it for a
    file that holds these values (`name` is how errors speak of it)."""

    def __init__(self, frames: np.ndarray, input_samplerate: int, samplerate: int | None = None,
                 channels: int | None = None, sanitize: bool = False, name: str = "the audio",
                 scanned: bool = False):
        self.path = Path(name)
        self.sanitize = sanitize
        self.warnings = []
        self.cancelled = None
        self._frames = frames
        self._start(input_samplerate, frames.shape[1], frames.shape[0], samplerate, channels)
        if not scanned:
            self._check_input()

    def fresh(self) -> ArraySignal:
        other = ArraySignal(self._frames, self.input_samplerate, self.samplerate, self.channels, self.sanitize,
                            str(self.path), scanned=True)
        other.cancelled = self.cancelled
        return other

    def _check_input(self) -> None:
        nonfinite = ~np.isfinite(self._frames)
        count = int(np.count_nonzero(nonfinite))
        if not count:
            return
        where = np.flatnonzero(nonfinite.any(axis=1))
        said = f"{count} NaN or infinite samples (frames {where[0]} to {where[-1]})"
        if not self.sanitize:
            raise DSUError("unsupported_audio", f"{self.path} holds {said}; the stems would be garbage. Repair "
                                                "it, or pass `sanitize=True` to read them as silence")
        self._warn(f"{self.path}: {said} were read as 0 (sanitize)")

    def _open(self) -> None:
        self._file = True  # a cursor over the array stands for the open file

    def _read_block(self) -> np.ndarray:
        return self._frames[self._frames_read:self._frames_read + BLOCK]

    def close(self) -> None:
        self._file = None


def read_audio(path: str | os.PathLike, samplerate: int | None = None,
               channels: int | None = None) -> tuple[Tensor, int]:
    """The whole file as float32 [channels, samples] and its sample rate."""
    sig = FileSignal(path, samplerate, channels)
    return sig.read(0, sig.length), sig.samplerate
