"""Rules: the YAML format, clear errors naming the rule and the problem, hot reload that keeps the
previous rules when an edit is broken."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from detection.features import FEATURE_INDEX, FEATURE_NAMES
from detection.rules import DEFAULT_RULES, RuleBook, RulesError, load_rules, parse_rules

GOOD = """
rules:
  - id: fast_new
    description: New and fast.
    action: restrict
    when:
      account_age_s: {lt: 600}
      sends_1m: {gte: 30}
"""


def test_default_rules_load_and_describe_themselves() -> None:
    rules = load_rules(DEFAULT_RULES)
    assert rules and all(r.description for r in rules)


def test_a_rule_matches_on_all_its_conditions() -> None:
    (rule,) = parse_rules(GOOD)
    row = [0.0] * len(FEATURE_NAMES)
    row[FEATURE_INDEX["account_age_s"]] = 100
    row[FEATURE_INDEX["sends_1m"]] = 30
    assert rule.matches(row) and rule.actor == "rule:fast_new"
    row[FEATURE_INDEX["account_age_s"]] = 601
    assert not rule.matches(row)


@pytest.mark.parametrize("text, needle", [
    ("rules: [", "not valid YAML"),
    ("{}", "top-level 'rules:' list"),
    (GOOD.replace("sends_1m", "sends_2m"), "unknown feature 'sends_2m'"),
    (GOOD.replace("description: New and fast.", ""), "needs a description"),
    (GOOD.replace("restrict", "explode"), "action must be one of"),
    (GOOD.replace("lt: 600", "lt: soon"), "must be a number"),
    (GOOD.replace("lt: 600", "under: 600"), "unknown comparison 'under'"),
    (GOOD.replace("fast_new", "Fast New"), "'id' must match"),
])
def test_broken_rules_name_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(RulesError, match=needle):
        parse_rules(text, "r.yaml")


def test_hot_reload_keeps_previous_rules_on_a_broken_edit(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    book = RuleBook(path)
    assert [r.id for r in book.rules] == ["fast_new"]
    path.write_text(GOOD.replace("sends_1m", "nope_1m"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert book.refresh() is False and book.errors == 1
    assert [r.id for r in book.rules] == ["fast_new"], "the old rules still serve"
    path.write_text(GOOD.replace("fast_new", "faster_new"))
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert book.refresh() is True and [r.id for r in book.rules] == ["faster_new"]


def test_a_broken_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: 3")
    with pytest.raises(RulesError, match="rules.yaml"):
        RuleBook(path)


def _row(**values: float) -> list[float]:
    r = [0.0] * len(FEATURE_NAMES)
    for k, v in values.items():
        r[FEATURE_INDEX[k]] = v
    return r


def test_group_stuffing_by_an_account_without_conversations_bans_and_an_admin_does_not() -> None:
    book = RuleBook()
    stuffer = _row(strangers_added_1h=25, strangers_added_24h=25, account_age_s=20 * 86_400.0)
    assert [(r.id, r.action) for r in book.hits(stuffer) if r.action == "ban"] == [
        ("group_stuffing_without_a_life", "ban")]
    admin = _row(strangers_added_1h=25, strangers_added_24h=25, received_24h=40, recipients_24h=30,
                 account_age_s=400 * 86_400.0)
    assert not [r for r in book.hits(admin) if r.action == "ban"]


def test_rule_hits_of_a_poll_match_the_rulebook_row_by_row() -> None:
    """`rule_hits` (a poll's rules over the score matrix's columns) gives every row the rules
    `RuleBook.hits` gives it, in the same order — bounds hit exactly, every comparison, the default
    rules and rules sharing a feature."""
    import random

    import numpy as np

    from detection.features import FEATURE_NAMES
    from detection.rules import RuleBook, parse_rules, rule_hits

    names = FEATURE_NAMES[:6]
    extra = parse_rules("rules:\n" + "".join(
        f"  - {{id: r{i}, description: d, action: {('restrict', 'ban', 'review')[i % 3]},"
        f" when: {{{names[i % 6]}: {{{op}: {bound}}}, {names[(i + 2) % 6]}: {{gte: 1, lt: 3}}}}}}\n"
        for i, (op, bound) in enumerate([("lt", 2), ("lte", 2), ("gt", 1), ("gte", 2.5), ("eq", 1), ("eq", 0)])))
    rng = random.Random(11)
    book = RuleBook()  # detection/rules/default.yaml
    for rules in (book.rules, extra, book.rules + extra, []):
        book.rules = rules
        matrix = np.array([[rng.choice([0.0, 1.0, 2.0, 2.5, 3.0, 20.0, 900.0, 0.05, 0.9, float("nan")])
                            for _ in FEATURE_NAMES] for _ in range(3000)])
        got = rule_hits(rules, matrix)
        want = [book.hits(row) for row in matrix.tolist()]
        assert [list(h) for h in got] == want
        assert sum(map(len, want)) > (100 if rules else -1)
