"""The signal code the relay uses — and the offline simulator too, so training data is built the
same way production signals are.

`SignalBook` keeps the little metadata a signal needs (who already talks to whom, who is a
contact) and builds every v1 signal. Events are built with `model_construct` (no validation on
the hot path): the relay validated every id at login; `tests/relay/test_signals.py` checks that
what it builds validates.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable

from sealguard.contracts import (
    AccountRegistered,
    Action,
    ClientKind,
    ContactAdded,
    ContactBlocked,
    EnforcementApplied,
    GroupCreated,
    GroupMemberAdded,
    GroupMemberRemoved,
    Limit,
    LimitBreached,
    MediaFetched,
    MediaUploaded,
    MessageKind,
    MessageSent,
    ReasonCode,
    ReportFiled,
    SessionClosed,
    SessionOpened,
    new_event_id,
    now_ms,
    size_bucket,
)


def net_bucket(address: str, salt: str) -> str:
    """Salted hash of the peer's /24 (IPv4) or /48 (IPv6): `n` + 12 hex digits."""
    ip = ipaddress.ip_address(address)
    prefix = 24 if ip.version == 4 else 48
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    digest = hashlib.blake2b(f"{salt}|{network}".encode(), digest_size=6).hexdigest()
    return "n" + digest


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


class SignalBook:
    """Metadata the relay remembers for signals, and the builders of every signal.

    `clock` returns milliseconds; the simulator passes its simulated clock.
    """

    def __init__(self, node: str, clock: Callable[[], int] = now_ms) -> None:
        self.node = node
        self.clock = clock
        self._talked: set[tuple[str, str]] = set()
        self._contacts: dict[str, set[str]] = {}

    # -- relationships -------------------------------------------------------------------
    def is_contact(self, account: str, other: str) -> bool:
        return other in self._contacts.get(account, ())

    def is_first_contact(self, sender: str, recipient: str) -> bool:
        """True when the two never exchanged a message and the recipient is not the sender's contact."""
        return _pair(sender, recipient) not in self._talked and not self.is_contact(sender, recipient)

    def forget(self, account: str) -> None:
        self._contacts.pop(account, None)

    def contacts_of(self, account: str) -> set[str]:
        return self._contacts.get(account) or set()

    def set_contacts(self, account: str, contacts: set[str]) -> None:
        """Prime what the relay loaded from the database at login (emits nothing)."""
        if contacts:
            self._contacts[account] = set(contacts)
        else:
            self._contacts.pop(account, None)

    def remove_contact(self, account: str, contact: str) -> None:
        self._contacts.get(account, set()).discard(contact)

    # -- builders ------------------------------------------------------------------------
    def _envelope(self, ts: int | None) -> dict[str, object]:
        return {"v": 1, "ts": self.clock() if ts is None else ts, "id": new_event_id()}

    def registered(self, account: str, bucket: str, client_kind: ClientKind, ts: int | None = None) -> AccountRegistered:
        return AccountRegistered.model_construct(type="account.registered", account=account, net_bucket=bucket,
                                                 client_kind=client_kind, **self._envelope(ts))

    def session_opened(self, account: str, bucket: str, ts: int | None = None) -> SessionOpened:
        return SessionOpened.model_construct(type="session.opened", account=account, net_bucket=bucket,
                                             node=self.node, **self._envelope(ts))

    def session_closed(self, account: str, bucket: str, duration_s: float, ts: int | None = None) -> SessionClosed:
        return SessionClosed.model_construct(type="session.closed", account=account, net_bucket=bucket,
                                             node=self.node, duration_s=float(duration_s), **self._envelope(ts))

    def message_sent(self, sender: str, recipient: str, nbytes: int, kind: MessageKind, recipient_online: bool,
                     ts: int | None = None) -> MessageSent:
        pair = _pair(sender, recipient)
        first = pair not in self._talked and not self.is_contact(sender, recipient)
        self._talked.add(pair)
        return MessageSent.model_construct(type="message.sent", sender=sender, recipient=recipient, group=None,
                                           size_bucket=size_bucket(nbytes), kind=kind, first_contact=first,
                                           recipient_online=recipient_online, **self._envelope(ts))

    def group_message_sent(self, sender: str, group: str, nbytes: int, kind: MessageKind,
                           ts: int | None = None) -> MessageSent:
        return MessageSent.model_construct(type="message.sent", sender=sender, recipient=None, group=group,
                                           size_bucket=size_bucket(nbytes), kind=kind, first_contact=False,
                                           recipient_online=False, **self._envelope(ts))

    def contact_added(self, account: str, contact: str, ts: int | None = None) -> ContactAdded:
        self._contacts.setdefault(account, set()).add(contact)
        return ContactAdded.model_construct(type="contact.added", account=account, contact=contact,
                                            **self._envelope(ts))

    def blocked(self, blocker: str, blocked: str, ts: int | None = None) -> ContactBlocked:
        return ContactBlocked.model_construct(type="contact.blocked", blocker=blocker, blocked=blocked,
                                              **self._envelope(ts))

    def report_filed(self, reporter: str, reported: str, reason: ReasonCode, named: int, verified: int,
                     ts: int | None = None) -> ReportFiled:
        return ReportFiled.model_construct(type="report.filed", reporter=reporter, reported=reported,
                                           reason_code=reason, messages_named=named, messages_verified=verified,
                                           **self._envelope(ts))

    def group_created(self, group: str, actor: str, ts: int | None = None) -> GroupCreated:
        return GroupCreated.model_construct(type="group.created", group=group, actor=actor, member=None,
                                            member_is_contact=False, **self._envelope(ts))

    def group_member_added(self, group: str, actor: str, member: str, ts: int | None = None) -> GroupMemberAdded:
        return GroupMemberAdded.model_construct(type="group.member_added", group=group, actor=actor, member=member,
                                                member_is_contact=self.is_contact(actor, member), **self._envelope(ts))

    def group_member_removed(self, group: str, actor: str, member: str, ts: int | None = None) -> GroupMemberRemoved:
        return GroupMemberRemoved.model_construct(type="group.member_removed", group=group, actor=actor,
                                                  member=member, member_is_contact=self.is_contact(actor, member),
                                                  **self._envelope(ts))

    def media_uploaded(self, account: str, blob: str, nbytes: int, ts: int | None = None) -> MediaUploaded:
        return MediaUploaded.model_construct(type="media.uploaded", account=account, blob=blob,
                                             size_bucket=size_bucket(nbytes), **self._envelope(ts))

    def media_fetched(self, account: str, blob: str, fetch_count: int, ts: int | None = None) -> MediaFetched:
        return MediaFetched.model_construct(type="media.fetched", account=account, blob=blob,
                                            fetch_count=fetch_count, **self._envelope(ts))

    def limit_breached(self, limit: Limit, *, account: str | None = None, bucket: str | None = None,
                       ts: int | None = None) -> LimitBreached:
        return LimitBreached.model_construct(type="limit.breached", account=account, net_bucket=bucket, limit=limit,
                                             **self._envelope(ts))

    def enforcement_applied(self, account: str, decision_id: str, action: Action,
                            ts: int | None = None) -> EnforcementApplied:
        return EnforcementApplied.model_construct(type="enforcement.applied", account=account,
                                                  decision_id=decision_id, action=action, node=self.node,
                                                  **self._envelope(ts))
