"""Rules over features, declared in YAML with a description each, reloaded when the file changes.

A rule is a conjunction of thresholds on named features and an action:

    rules:
      - id: new_account_blast
        description: Registered minutes ago and already messaging dozens of strangers.
        action: restrict            # restrict | ban | review
        when:
          account_age_s: {lt: 600}
          sends_1m: {gte: 30}

Conditions use `lt`, `lte`, `gt`, `gte`, `eq`. A file that does not parse, or names a feature
this build does not compute, raises RulesError naming the rule and the problem; the hot reloader
logs it, counts it and keeps serving the previous rules, so a typo never stops detection.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detection import DetectionError
from detection.features import FEATURE_INDEX

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).parent / "rules" / "default.yaml"

OPS: dict[str, Callable[[float, float], bool]] = {
    "lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge, "eq": operator.eq,
}
ACTIONS = ("restrict", "ban", "review")
RULE_ID = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class RulesError(DetectionError):
    """A rules file that cannot be used; the message names the file, the rule and what is wrong."""


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    action: str
    conditions: tuple[tuple[int, Callable[[float, float], bool], float], ...]

    @property
    def actor(self) -> str:
        """The decision actor for this rule (contracts' ActorId pattern)."""
        return f"rule:{self.id}"

    def matches(self, row: Sequence[float]) -> bool:
        for idx, op, bound in self.conditions:
            if not op(row[idx], bound):
                return False
        return True


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RulesError(f"{source}: needs a top-level 'rules:' list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(doc["rules"]):
        where = f"{source}: rule #{i + 1}"
        if not isinstance(item, dict):
            raise RulesError(f"{where}: must be a mapping")
        rid = item.get("id")
        if not isinstance(rid, str) or not RULE_ID.match(rid):
            raise RulesError(f"{where}: 'id' must match {RULE_ID.pattern}")
        where = f"{source}: rule {rid!r}"
        if rid in seen:
            raise RulesError(f"{where}: duplicate id")
        seen.add(rid)
        desc = item.get("description")
        if not isinstance(desc, str) or not desc.strip():
            raise RulesError(f"{where}: needs a description (say why the rule exists)")
        action = item.get("action")
        if action not in ACTIONS:
            raise RulesError(f"{where}: action must be one of {', '.join(ACTIONS)}, not {action!r}")
        when = item.get("when")
        if not isinstance(when, dict) or not when:
            raise RulesError(f"{where}: 'when' must map features to conditions")
        conds = []
        for feature, spec in when.items():
            if feature not in FEATURE_INDEX:
                raise RulesError(f"{where}: unknown feature {feature!r}")
            if not isinstance(spec, dict) or not spec:
                raise RulesError(f"{where}: condition on {feature} must be like {{gte: 10}}")
            for opname, bound in spec.items():
                if opname not in OPS:
                    raise RulesError(f"{where}: unknown comparison {opname!r} on {feature} (use {', '.join(OPS)})")
                if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                    raise RulesError(f"{where}: bound for {feature} {opname} must be a number")
                conds.append((FEATURE_INDEX[feature], OPS[opname], float(bound)))
        rules.append(Rule(id=rid, description=desc.strip(), action=action, conditions=tuple(conds)))
    return rules


def load_rules(path: Path) -> list[Rule]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_rules(text, str(path))


class RuleBook:
    """The rules in force; `refresh()` reloads the file when its mtime/size change."""

    def __init__(self, path: Path | None = None, rules: list[Rule] | None = None) -> None:
        self.path = Path(path) if path is not None else (DEFAULT_RULES if rules is None else None)
        self.rules: list[Rule] = rules if rules is not None else []
        self.errors = 0
        self._stamp: tuple[float, int] | None = None
        if self.path is not None:
            self.rules = load_rules(self.path)  # a broken file at start is an error, not a silent no-op
            self._stamp = self._stat()

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat() if self.path else None
        except FileNotFoundError:
            return None
        return (st.st_mtime, st.st_size) if st else None

    def refresh(self) -> bool:
        if self.path is None:
            return False
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.rules = load_rules(self.path)
        except RulesError as exc:
            self.errors += 1
            log.error("keeping the previous %d rules: %s", len(self.rules), exc)
            return False
        log.info("rules reloaded from %s: %d rules", self.path, len(self.rules))
        return True

    def hits(self, row: Sequence[float]) -> list[Rule]:
        return [r for r in self.rules if r.matches(row)]


def rule_hits(rules: Sequence[Rule], matrix: np.ndarray) -> list[Sequence[Rule]]:
    """`RuleBook.hits(row)` for every row of a poll's score matrix at once: each rule's conditions
    compared over whole columns — the same comparisons on the same float64 values, so the same rules
    in the same order (tests/detection/test_rules.py compares them row by row). A row without a
    hit gets the shared empty tuple (most rows: no list built for them)."""
    n = len(matrix)
    out: list[Any] = [()] * n
    for rule in rules:
        mask: Any = None
        for idx, op, bound in rule.conditions:
            got = op(matrix[:, idx], bound)
            mask = got if mask is None else mask & got
        for i in (range(n) if mask is None else np.flatnonzero(mask).tolist()):
            hit = out[i]
            if hit:
                hit.append(rule)
            else:
                out[i] = [rule]
    return out


def describe(rules: list[Rule]) -> list[dict[str, Any]]:
    return [{"id": r.id, "description": r.description, "action": r.action} for r in rules]
