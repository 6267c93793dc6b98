"""``TextStream``: the text of a growing token sequence, handed out piece by piece as it grows.

A token need not end on a character boundary (byte-level BPE splits multi-byte characters), so
the whole sequence is decoded each time and only text that is complete is handed out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedkit.data.tokenizers import Tokenizer

REPLACEMENT = "\ufffd"  # what decoding gives for the bytes of an incomplete character


class TextStream:
    """The new text of a sequence that starts with ``prompt_ids``, token by token."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> None:
        """
        Args:
            tokenizer: Decodes the ids.
            prompt_ids: The ids before the first pushed one; their text is never handed out.
        """
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.num_chars = len(tokenizer.decode(self.ids))

    def push(self, ids: Sequence[int]) -> str:
        """The text that ``ids`` complete (empty while a character is unfinished)."""
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids)
        if text.endswith(REPLACEMENT):
            return ""
        new, self.num_chars = text[self.num_chars :], len(text)
        return new

    def flush(self) -> str:
        """The text not yet handed out, unfinished characters included."""
        text = self.tokenizer.decode(self.ids)
        new, self.num_chars = text[self.num_chars :], len(text)
        return new
