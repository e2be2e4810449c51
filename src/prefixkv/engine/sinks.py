"""Collect: the Sink a caller on its own thread reads (``Engine.generate``/``stream``, the
batch runner's ``run_all``), as the server's Job is the Sink its event loop reads."""

from __future__ import annotations

from prefixkv.engine.request import Completion
from prefixkv.engine.role import Delivery, Outcome


class Collect:
    """Keeps what a runner delivers until taken: text deltas, the Completion, the outcome
    and the error. Never cancelled (its reader stops a request by closing what drives it)."""

    cancelled = False

    def __init__(self) -> None:
        self.items: list[Delivery] = []
        self.completion: Completion | None = None
        self.outcome: Outcome = "pending"
        self.error: BaseException | None = None

    def deliver(self, item: Delivery) -> None:
        self.items.append(item)
        if isinstance(item, Completion):
            self.completion = item

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        self.outcome, self.error = outcome, error

    def take(self) -> list[Delivery]:
        """The items delivered since the last call, in order; forgets them."""
        items, self.items = self.items, []
        return items

    def result(self) -> Completion:
        """The Completion; raises the request's error, or RuntimeError if it ended without
        one."""
        if self.completion is None:
            raise self.error or RuntimeError("the request ended without a completion")
        return self.completion
