"""Exceptions for problems the user can fix (bad input, bad config, bad file).

The command line turns these into a one-line message and a non-zero exit, without a
traceback. Anything else is a bug and keeps its traceback.
"""


class Pix2PixHDError(Exception):
    """Base class for errors caused by user input."""


class ConfigError(Pix2PixHDError):
    """A configuration value is unknown, of the wrong type or inconsistent."""


class InputError(Pix2PixHDError):
    """An input tensor or file does not match what the model expects."""


class ModelOutputError(Pix2PixHDError):
    """The model produced values that are no image (NaN, inf): its weights are broken.
    A fault of the model, not of the request (HTTP: 500)."""


class CheckpointError(Pix2PixHDError):
    """A checkpoint file is missing, truncated, or does not fit the architecture."""


#: the longest quotation of a user's value in a message
QUOTE_CHARS = 80


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never grows with its input
    (a 4 MB value in a one-line error is not one line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"
