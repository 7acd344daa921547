"""Exceptions raised by `mamba_audio`; each subclasses the builtin a caller would catch."""


class AudioFileNotFoundError(FileNotFoundError):
    """Raised if an audio file or folder does not exist, or a folder holds no audio files."""


class AudioReadError(ValueError):
    """Raised if an audio file is corrupt, empty, or contains NaN or infinite samples."""


class AudioDatasetError(ValueError):
    """Raised if the audio files cannot make the requested data set (too few files, bad split)."""


class CheckpointError(ValueError):
    """Raised if a checkpoint is missing, unreadable, or does not describe an audio model."""
