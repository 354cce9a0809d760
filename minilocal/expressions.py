"""Checks on a user's referring expression that need no model (so the CLI runs them first).

The adapters normalise white space and build the prompt; what no prompt can carry is
refused here: control characters, and text without a single letter or digit.

Book: ``book/common_errors.ipynb``.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import ExpressionError


def check_expression(expr: str) -> str:
    """Refuse an expression the model cannot read as words; return it unchanged.

    Raises:
        ExpressionError: It holds a control character (other than tab, newline, carriage
            return), or it is not empty but has no letter or digit (e.g. only emoji).

    Book: ``book/common_errors.ipynb``.
    """
    if not isinstance(expr, str):
        return expr  # the adapter says what is wrong with a non-string
    for pos, ch in enumerate(expr):
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r":
            raise ExpressionError(
                f"the expression holds the control character U+{ord(ch):04X} at position "
                f"{pos} ({expr!r})",
                "remove control characters (they come from pasted terminal text or a "
                "corrupted file); write the expression as plain text.",
            )
    text = expr.strip()
    if text and not re.search(r"\w", text):
        raise ExpressionError(
            f"the expression {expr!r} has no letter or digit (only symbols or emoji)",
            'describe the object in words, e.g. "the dog on the left".',
        )
    return expr
