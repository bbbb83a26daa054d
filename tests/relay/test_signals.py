"""The relay's signal builders produce valid v1 events and compute first contact correctly."""

from __future__ import annotations

from relay.signals import SignalBook, net_bucket
from sealguard.contracts import (
    Action,
    ClientKind,
    Limit,
    MessageKind,
    ReasonCode,
    decode,
    encode,
    new_account_id,
    new_decision_id,
    new_group_id,
)


def test_every_builder_produces_a_valid_event() -> None:
    book = SignalBook("relay-1")
    a, b, g = new_account_id(), new_account_id(), new_group_id()
    nb = net_bucket("127.1.2.3", "salt")
    events = [
        book.registered(a, nb, ClientKind.sdk),
        book.session_opened(a, nb),
        book.session_closed(a, nb, 3.5),
        book.message_sent(a, b, 100, MessageKind.text, True),
        book.group_message_sent(a, g, 5000, MessageKind.media),
        book.contact_added(a, b),
        book.blocked(b, a),
        book.report_filed(b, a, ReasonCode.spam, 3, 2),
        book.group_created(g, a),
        book.group_member_added(g, a, b),
        book.group_member_removed(g, a, b),
        book.media_uploaded(a, "b" + "0" * 20, 70000),
        book.media_fetched(b, "b" + "0" * 20, 2),
        book.limit_breached(Limit.register, bucket=nb),
        book.enforcement_applied(a, new_decision_id(), Action.ban),
    ]
    for event in events:
        assert decode(encode(event)) == event


def test_first_contact_only_on_the_first_message_between_strangers() -> None:
    book = SignalBook("relay-1")
    a, b, c = new_account_id(), new_account_id(), new_account_id()
    assert book.message_sent(a, b, 10, MessageKind.text, True).first_contact
    assert not book.message_sent(a, b, 10, MessageKind.text, True).first_contact
    assert not book.message_sent(b, a, 10, MessageKind.text, True).first_contact  # a reply
    book.contact_added(a, c)
    assert not book.message_sent(a, c, 10, MessageKind.text, True).first_contact


def test_net_bucket_groups_by_slash24_and_slash48() -> None:
    assert net_bucket("127.1.2.3", "s") == net_bucket("127.1.2.200", "s")
    assert net_bucket("127.1.2.3", "s") != net_bucket("127.1.3.3", "s")
    assert net_bucket("127.1.2.3", "s") != net_bucket("127.1.2.3", "other-salt")
    assert net_bucket("2001:db8:1::1", "s") == net_bucket("2001:db8:1:ffff::2", "s")


def test_a_reply_to_a_one_sided_contact_is_not_a_first_contact() -> None:
    book = SignalBook("relay-1")
    a, b = new_account_id(), new_account_id()
    book.contact_added(a, b)  # a added b; b never added a
    assert not book.message_sent(a, b, 10, MessageKind.text, True).first_contact
    assert not book.message_sent(b, a, 10, MessageKind.text, True).first_contact
