"""The one exception type for failures a user can fix (bad input, missing data, bad settings)."""


class AudioNetError(Exception):
    """A user-facing failure: the message names the file, row or value at fault."""


class DatasetError(AudioNetError):
    """A dataset directory that is missing, unfinished, corrupt or does not fit the model."""


class ConfigError(AudioNetError):
    """A pipeline file or flag value that cannot be used."""
