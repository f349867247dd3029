"""`reset-sink NAME --to T`: move one sink's delivery cursor, and only that one.

The cursor goes to just before the first event still in the outbox that was enqueued at or after
T. Backward, the sink is sent again what the outbox still holds from T on; forward, it skips
what lies between (never sent to it). Events already pruned from the outbox cannot be re-sent
this way: `replay --sink NAME --since T` re-exports those from the API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter.state.store import StateStore
from transport import timestamps


@dataclass(frozen=True)
class CursorMove:
    sink: str
    to: float  # the T asked for (epoch seconds)
    current: int
    target: int
    resend: int  # events for this sink that will be sent again (backward)
    skip: int  # events for this sink that will never be sent to it (forward)
    pruned_since: float | None  # T is older than the oldest event held and events were pruned

    @property
    def moves(self) -> bool:
        return self.target != self.current

    def describe(self) -> str:
        at = _iso(self.to)
        if not self.moves:
            text = (
                f"sink {self.sink}: the cursor is already at the first event enqueued at or after {at}; nothing to do"
            )
        elif self.target < self.current:
            text = (
                f"sink {self.sink}: cursor {self.current} -> {self.target} (back to {at}): "
                f"{self.resend} event(s) still in the outbox will be sent to {self.sink} again"
            )
        else:
            text = (
                f"sink {self.sink}: cursor {self.current} -> {self.target} (forward to {at}): "
                f"{self.skip} event(s) will be skipped, never sent to {self.sink}"
            )
        if self.pruned_since is not None:
            text += (
                f"\nnote: events enqueued before {_iso(self.pruned_since)} are no longer in the outbox; "
                f"to send those again: duvo-exporter replay --sink {self.sink} --since {at}"
            )
        return text


def plan_move(store: StateStore, sink: str, to: float) -> CursorMove:
    """Where ``sink``'s cursor goes for ``--to`` = ``to`` (epoch seconds), and what that does."""
    current = store.cursor(sink).seq
    low, high = store.outbox_bounds()
    first = store.first_seq_enqueued_at_or_after(to)
    target = first - 1 if first is not None else high
    target = max(target, low - 1)  # pruned events are gone: never point before what is held
    resend = store.count_for_sink(sink, target, current) if target < current else 0
    skip = store.count_for_sink(sink, current, target) if target > current else 0
    oldest = store.oldest_held_enqueued_at()
    pruned = low > 1 and (oldest is None or to < oldest)
    return CursorMove(sink, to, current, target, resend, skip, (oldest or to) if pruned else None)


def reset_sink(
    store: StateStore,
    sink: str,
    to: float,
    confirm: Callable[[CursorMove], bool],
    say: Callable[[str], None] = print,
) -> CursorMove | None:
    """Describe the move, ask ``confirm``, then move the cursor. None when not confirmed."""
    move = plan_move(store, sink, to)
    say(move.describe())
    if not move.moves:
        return move
    if not confirm(move):
        return None
    store.set_cursor(sink, move.target)
    say(f"sink {sink}: cursor moved to {move.target}; the next `run` or `once` delivers from there")
    return move


def _iso(epoch: float) -> str:
    return timestamps.format_utc(datetime.fromtimestamp(epoch, tz=UTC))
