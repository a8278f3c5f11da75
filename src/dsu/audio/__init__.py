"""Audio files: `read` decodes them as signals the engine can stream, `write` streams stems out."""
from .read import ArraySignal, FileSignal, read_audio
from .write import FORMATS, StemWriter, output_format, write_audio, write_faults

__all__ = ["FORMATS", "ArraySignal", "FileSignal", "StemWriter", "output_format", "read_audio", "write_audio",
           "write_faults"]
