"""Errors that minilocal raises, each naming its fix.

Every error raised on bad input is a :class:`MinilocalError`: its message says what was
wrong, then a line starting with ``Fix:`` says what to do. The book's "Common errors" page
is generated from :data:`ERRORS` below, so a new error class appears there once it is
added to that list.

Book: ``book/common_errors.ipynb``.
"""

from __future__ import annotations


class MinilocalError(Exception):
    """Base class: a message plus the fix.

    Args:
        message: What went wrong, with the offending value.
        fix: What the user should do about it (one or two sentences).
    """

    def __init__(self, message: str, fix: str):
        self.message = message
        self.fix = fix
        super().__init__(f"{message}\nFix: {fix}")


class ImageError(MinilocalError, ValueError):
    """The image cannot be used as it is (too small, too large, unreadable)."""


class ExpressionError(MinilocalError, ValueError):
    """The referring expression is empty or longer than the model's context."""


class ModelNotSupportedError(MinilocalError, ValueError):
    """No adapter knows this model family."""


class ImageTokensNotFoundError(MinilocalError, ValueError):
    """The prompt holds no image tokens, or not as many as the image grid needs."""


class AttentionCaptureError(MinilocalError, RuntimeError):
    """The decoder's attention could not be recorded (unsupported attention path)."""


class HeadTableError(MinilocalError, ValueError):
    """A head table is malformed or was made for a different model."""


class DatasetError(MinilocalError, ValueError):
    """A dataset folder, file, split or item is missing or malformed."""


class SamError(MinilocalError, ValueError):
    """SAM cannot be loaded (package, checkpoint, model type) or prompted (box, mask prompt)."""


class OutOfMemoryError(MinilocalError, RuntimeError):
    """The accelerator ran out of memory."""


class InputError(MinilocalError, ValueError):
    """An array or option given to a step has the wrong shape, values or name."""


class CacheError(MinilocalError, RuntimeError):
    """A cache folder holds results made with other settings or another model."""


class UnknownWordsWarning(UserWarning):
    """The expression holds words outside the model's vocabulary (a closed one, such as the
    embedded shapes model's): the model reads them as ``<unk>``, so the box answers a
    sentence with holes in it. The message lists the words the model knows."""


class ModelLoadError(MinilocalError, OSError):
    """A model's files could not be fetched: no internet, a gated or a missing model id."""


#: Every error type, in the order the "Common errors" page lists them.
ERRORS: tuple[type[MinilocalError], ...] = (
    ImageError,
    ExpressionError,
    ModelNotSupportedError,
    ImageTokensNotFoundError,
    AttentionCaptureError,
    HeadTableError,
    DatasetError,
    SamError,
    OutOfMemoryError,
    ModelLoadError,
    InputError,
    CacheError,
)
