"""``TextStream``: generated tokens -> text pieces that are safe to send, one token at a time.

The rule is :meth:`bitnet.inference.Engine.stream`'s: text is held back while it ends in an
incomplete UTF-8 sequence or could still grow into a stop string, so the pieces concatenate to
exactly the text ``Engine.generate`` returns for the same tokens. The scheduler keeps one per
request and feeds it as tokens arrive (``Engine.stream`` pulls tokens from its own loop instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TextStream"]


class TextStream:
    """Incremental detokenizer with stop strings.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (``decode(ids) -> str``).
        stops: stop strings; the text ends before the first one that appears (empty strings ignored).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stops = [s for s in stops if s]
        self._ids: list[int] = []
        self._emitted = 0  # characters of ``text`` already handed out
        self.text = ""  # decoded text of all tokens pushed so far
        self.stopped = False  # a stop string completed: nothing more will be emitted

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text that became safe to send ("" while held back).

        After a stop string completes, ``stopped`` is set and the piece up to it is returned.
        """
        if self.stopped:
            return ""
        self._ids.append(int(token_id))
        text = self.text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return ""
        hits = [text.find(s) for s in self._stops if s in text]
        if hits:
            self.stopped = True
            cut = min(hits)
            piece = text[self._emitted:cut] if cut > self._emitted else ""
            self._emitted = max(self._emitted, cut)
            return piece
        safe = len(text)
        for s in self._stops:  # hold back a tail that may grow into a stop string
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    safe = min(safe, len(text) - n)
                    break
        if safe > self._emitted:
            piece, self._emitted = text[self._emitted:safe], safe
            return piece
        return ""

    def flush(self) -> str:
        """The held-back tail at the end of generation (nothing after a stop string)."""
        if self.stopped or len(self.text) <= self._emitted:
            return ""
        piece, self._emitted = self.text[self._emitted:], len(self.text)
        return piece
