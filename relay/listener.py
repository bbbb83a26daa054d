"""The relay's abuse hook: it hands metadata-only events to a listener and never imports the
stream client or detection. The Kafka emitter (relay/emitter.py) is one implementation."""

from __future__ import annotations

from typing import Protocol

from sealguard.contracts import Event


class SignalListener(Protocol):
    """Receives every signal the relay emits. Must not block: called on the delivery path."""

    def emit(self, event: Event) -> None: ...


class NullListener:
    def emit(self, event: Event) -> None:
        return None


class CollectingListener:
    """Keeps signals in a list: for unit tests and the offline simulator."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)
