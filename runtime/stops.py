"""Stop strings over streamed text, for every engine: text is released only once it can no
longer turn out to be the start of a stop string, so a stop never reaches the client, even
when it arrives split across tokens."""

from __future__ import annotations


class StopMatcher:
    """Holds back text that might begin a stop sequence; cuts the output at the first one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched: str | None = None
        """The stop sequence that ended the output, once one has (clients may ask which:
        Anthropic's `stop_sequence`)."""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop sequence was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        # The first occurrence wins; of several starting there, the shortest (it ended first).
        hits = sorted((at, len(s), s) for s in self.stops if (at := self.pending.find(s)) >= 0)
        if hits:
            at, _, self.matched = hits[0]
            out, self.pending = self.pending[:at], ""
            return out, True
        keep = self._longest_stop_prefix_suffix()
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(stop[:n]):
                    best = n
                    break
        return best


def done_data(finish_reason: str, usage: dict, stops: StopMatcher) -> dict:
    """A `done` event's data, for every engine: the finish reason, the usage, and the stop
    sequence that ended the answer when one did (its finish reason is `stop` either way)."""
    data = {"finish_reason": finish_reason, "usage": usage}
    if stops.matched is not None:
        data["stop_sequence"] = stops.matched
    return data
