"""``TextStream``: generated tokens -> text pieces that are safe to send, one token at a time.

Text is held back while it ends in an incomplete UTF-8 sequence or could still grow into a stop
string, so the pieces concatenate to exactly the text of all tokens up to the first stop string.
The decoding is incremental (the ``tokenizers`` library's ``DecodeStream``: it decodes a short window
of recent tokens, not the whole reply), and a stop string is looked for only in the held-back tail
plus the new piece, so a token costs the same at the 10th and the 10,000th position.
:class:`~bitnet.inference.generation.Generation` keeps one per sequence, for ``Engine.generate`` /
``Engine.stream`` and the scheduler alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TextStream"]


class TextStream:
    """Incremental detokenizer with stop strings.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        stops: stop strings; the text ends before the first one that appears (empty strings ignored).

    Special tokens are skipped, as ``Tokenizer.decode`` does by default.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._stops = [s for s in stops if s]
        self._ids: list[int] = []
        self._pieces: list[str] = []  # decoded text so far, in pieces
        self._decoded = 0  # characters in _pieces
        self._held = ""  # decoded, not yet emitted: a tail that may be the start of a stop string
        self.stopped = False  # a stop string completed: nothing more will be emitted

    @property
    def text(self) -> str:
        """The decoded text of all tokens pushed so far (up to the stop string's end once stopped)."""
        return "".join(self._pieces)

    def _decode_step(self, token_id: int) -> str:
        """The new decoded text (may be "" while a character is incomplete)."""
        try:
            piece = self._decoder.step(self._tokenizer, token_id)
        except Exception:  # DecodeStream refuses an inconsistent prefix: fall back to a full decode
            from tokenizers.decoders import DecodeStream

            full = self._tokenizer.decode(self._ids)
            piece = full[self._decoded:] if full.startswith(self.text) and not full.endswith("\ufffd") else None
            self._decoder = DecodeStream(skip_special_tokens=True)
            if piece is None:
                return ""
            self._decoder.step(self._tokenizer, self._ids[-8:])  # recent context for the next step's spacing
        return piece or ""

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text that became safe to send ("" while held back).

        After a stop string completes, ``stopped`` is set and the piece up to it is returned.
        """
        if self.stopped:
            return ""
        self._ids.append(int(token_id))
        piece = self._decode_step(int(token_id))
        if not piece:
            return ""
        self._pieces.append(piece)
        self._decoded += len(piece)
        # A stop string can only start inside the held tail: everything before it was emitted because
        # no suffix of it was the start of any stop string.
        buf = self._held + piece
        hits = [buf.find(s) for s in self._stops if s in buf]
        if hits:
            self.stopped = True
            self._held = ""
            return buf[:min(hits)]
        safe = len(buf)
        for s in self._stops:  # hold back the longest tail that may grow into a stop string
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    safe = min(safe, len(buf) - n)
                    break
        out, self._held = buf[:safe], buf[safe:]
        return out

    def flush(self) -> str:
        """The held-back tail at the end of generation, with any incomplete trailing character as
        U+FFFD, as a full decode shows it (nothing after a stop string)."""
        if self.stopped:
            return ""
        tail = self._held
        self._held = ""
        if self._ids:
            full = self._tokenizer.decode(self._ids)  # once per request: the bytes DecodeStream still holds
            if len(full) > self._decoded and full.startswith(self.text):
                rest = full[self._decoded:]
                self._pieces.append(rest)
                self._decoded += len(rest)
                tail += rest
        return tail
