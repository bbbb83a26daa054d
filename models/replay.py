"""`sealguard replay --model V --dataset DIR`: what V would have done, next to what the champion did.

Both models are run over the dataset's signals by `detection.evaluate.replay_policy` — the worker's
feature engine, rules and action policy, unchanged — so a "ban" here is a ban the production code
would have issued. The two ban sets are compared account by account:

    new_bans    banned by V, not by the champion
    lost_bans   banned by the champion, not by V
    unchanged   banned by both
    precision_delta, recall_delta   V's minus the champion's, over the labelled accounts
                                    (precision = banned spammers / banned; recall = banned spammers / spammers)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import RegistryError

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    version: str
    champion: str
    new_bans: int
    lost_bans: int
    unchanged: int
    precision: float
    recall: float
    champion_precision: float
    champion_recall: float

    def figures(self) -> dict[str, object]:
        return {"new_bans": self.new_bans, "lost_bans": self.lost_bans, "unchanged": self.unchanged,
                "precision_delta": self.precision - self.champion_precision,
                "recall_delta": self.recall - self.champion_recall}


def _precision_recall(banned: set[str], labels: dict[str, int]) -> tuple[float, float]:
    judged = [a for a in banned if a in labels]
    spam = sum(1 for v in labels.values() if v == 1)
    hits = sum(1 for a in judged if labels[a] == 1)
    precision = hits / len(judged) if judged else float("nan")
    recall = hits / spam if spam else float("nan")
    return precision, recall


def replay(settings: Any, version: str, dataset: Path, *, against: str | None = None) -> ReplayResult:
    """Replay `version` and the champion (or `against`) over the dataset at `dataset`."""
    from detection.evaluate import replay_policy
    from detection.model import load_model
    from detection.policy import Policy
    from detection.rules import RuleBook
    from models.artifacts import artifact_dir, champion_version
    from models.signals_io import iter_events
    from models.training import read_labels

    champion = against or champion_version(settings.state_dir)
    if champion is None:
        raise RegistryError("there is no champion to compare with (train one, or pass --against V)")
    model_dir, champion_dir = artifact_dir(settings.state_dir, version), artifact_dir(settings.state_dir, champion)
    labels_frame = read_labels(Path(dataset))
    labels = dict(zip(labels_frame.account, labels_frame.label.astype(int)))
    events = list(iter_events(Path(dataset)))
    bans: dict[str, set[str]] = {}
    for name, path in ((version, model_dir), (champion, champion_dir)):
        outcome = replay_policy(events, load_model(path), RuleBook(), Policy())
        bans[name] = set(outcome.bans)
        log.info("%s: %d bans over %d scoring moments", name, len(outcome.bans), outcome.rows)
    mine, theirs = bans[version], bans[champion]
    p, r = _precision_recall(mine, labels)
    cp, cr = _precision_recall(theirs, labels)
    return ReplayResult(version=version, champion=champion, new_bans=len(mine - theirs), lost_bans=len(theirs - mine),
                        unchanged=len(mine & theirs), precision=p, recall=r, champion_precision=cp,
                        champion_recall=cr)


__all__ = ["ReplayResult", "replay"]
