"""A vision job's tokens as text, as the engine emits them."""

from __future__ import annotations

import codecs

from mlx_vlm.tokenizer_utils import BPEStreamingDetokenizer, make_streaming_detokenizer

from mlx_common.tools import special_tokens


class TextStream:
    """A job's tokens as text, token by token, never splitting a UTF-8 character.

    mlx-vlm's BPE streaming detokenizer holds text back until a token starts with a space:
    a reply without spaces (Chinese, Japanese, code) would arrive in one piece at the end.
    So byte-level BPE tokens go through an incremental UTF-8 decoder, as mlx-vlm's own
    server streams them; other tokenizers use mlx-vlm's streaming detokenizer as it is."""

    def __init__(self, processor):
        self.tokenizer = processor.tokenizer
        # Control tokens (`<|im_start|>`, `<|vision_pad|>`) are never answer text.
        self.hidden = special_tokens(self.tokenizer)
        self.detokenizer = make_streaming_detokenizer(processor)
        self.utf8 = None
        if isinstance(self.detokenizer, BPEStreamingDetokenizer):
            self.tokenmap, self.byte_decoder = self.detokenizer.tokenmap, self.detokenizer._byte_decoder
            self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, token: int) -> str:
        if token in self.hidden:
            return ""
        if self.utf8 is None:
            self.detokenizer.add_token(token)
            return self.detokenizer.last_segment
        value = self.tokenmap[token] if token < len(self.tokenmap) else None
        try:
            data = bytes(self.byte_decoder[c] for c in value) if value is not None else None
        except KeyError:  # an added token outside the byte alphabet
            data = None
        if data is None:
            return self.utf8.decode(self.tokenizer.decode([token]).encode("utf-8"), final=False)
        return self.utf8.decode(data, final=False)

    def finish(self) -> str:
        """What is still held back (an unfinished character ends as U+FFFD)."""
        if self.utf8 is None:
            # All of it: `last_segment` holds back text that ends in U+FFFD (awaiting the rest of
            # a character), and nothing comes after finalize: the answer's tail was lost.
            detokenizer = self.detokenizer
            detokenizer.finalize()
            rest, detokenizer.offset = detokenizer.text[detokenizer.offset :], len(detokenizer.text)
            return rest
        return self.utf8.decode(b"", final=True)
