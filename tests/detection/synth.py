"""Small hand-built signal streams for detection tests (until and besides the simulator).

Built with the relay's own `SignalBook`, so the events are shaped exactly like production ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.signals import SignalBook
from sealguard.contracts import ClientKind, MessageKind, ReasonCode, new_account_id, new_group_id

if TYPE_CHECKING:
    import pandas as pd

T0 = 1_800_000_000_000


def bucket(i: int) -> str:
    return "n" + f"{i:012x}"


@dataclass
class Synth:
    """A seeded little population: normal chatters and a few spammers of simple kinds."""

    seed: int = 7
    events: list[Any] = field(default_factory=list)
    spammers: dict[str, str] = field(default_factory=dict)  # account -> strategy
    normal: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = T0
        self.book = SignalBook("relay-1", clock=lambda: self.now)

    def register(self, net: int | None = None) -> str:
        a = new_account_id()
        self.events.append(self.book.registered(a, bucket(net if net is not None else self.rng.randrange(10**6)),
                                                ClientKind.mobile, ts=self.now))
        return a

    def population(self, normal: int = 40, blasters: int = 2, drips: int = 2, farm: int = 3,
                   minutes: int = 30, gap_ms: tuple[int, int] = (200, 2000)) -> Synth:
        rng = self.rng
        self.normal = [self.register() for _ in range(normal)]
        friends = {a: rng.sample(self.normal, 5) for a in self.normal}
        for a, fs in friends.items():
            for f in fs:
                self.events.append(self.book.contact_added(a, f, ts=self.now))
        for _ in range(blasters):
            self.spammers[self.register()] = "blaster"
        for _ in range(drips):
            self.spammers[self.register()] = "slow_drip"
        for _ in range(farm):
            self.spammers[self.register(net=42)] = "farm"
        group = new_group_id()
        end = self.now + minutes * 60_000
        while self.now < end:
            self.now += rng.randrange(*gap_ms)
            a = rng.choice(self.normal)
            f = rng.choice(friends[a])
            self.events.append(self.book.message_sent(a, f, 100, MessageKind.text, True, ts=self.now))
            if rng.random() < 0.5:  # a reply
                self.now += rng.randrange(100, 500)
                self.events.append(self.book.message_sent(f, a, 80, MessageKind.text, True, ts=self.now))
            if rng.random() < 0.05:
                self.events.append(self.book.group_message_sent(a, group, 50, MessageKind.text, ts=self.now))
            for s, kind in self.spammers.items():
                p = {"blaster": 0.6, "slow_drip": 0.08, "farm": 0.2}[kind]
                if rng.random() < p:
                    victim = rng.choice(self.normal)
                    self.events.append(self.book.message_sent(s, victim, 300, MessageKind.text, False, ts=self.now))
                    r = rng.random()
                    if r < 0.05:
                        self.events.append(self.book.blocked(victim, s, ts=self.now + 1))
                    elif r < 0.08:
                        self.events.append(self.book.report_filed(victim, s, ReasonCode.spam, 3,
                                                                  rng.choice([0, 2]), ts=self.now + 2))
                    if kind == "farm" and rng.random() < 0.1:
                        self.events.append(self.book.group_member_added(group, s, victim, ts=self.now + 3))
        self.events.sort(key=lambda e: e.ts)
        return self

    def strictly_increasing(self) -> Synth:
        """Give every event its own millisecond, so "as of ts" means "up to this event" (parity tests)."""
        last = -1
        out = []
        for ev in self.events:
            ts = max(ev.ts, last + 1)
            out.append(ev if ts == ev.ts else ev.model_copy(update={"ts": ts}))
            last = ts
        self.events = out
        return self


def truth_of(s: Synth) -> pd.DataFrame:
    """The synth population's truth in the simulator's shape (account, label, role, first_spam_ts)."""
    import pandas as pd

    rows = [{"account": a, "label": 0, "role": "normal", "first_spam_ts": float("nan")} for a in s.normal]
    rows += [{"account": a, "label": 1, "role": k, "first_spam_ts": float("nan")} for a, k in s.spammers.items()]
    return pd.DataFrame(rows)
