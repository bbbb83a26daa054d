"""`sealguard models report V --out FILE.html`: an honest, self-contained evaluation page.

Two kinds of evidence, both on data V never trained on:

* **Scores** on an evaluation population — a dataset directory (`--dataset`) or, by default, the
  first held-out scenario simulated offline. Features come from detection's operators; an
  account's score is its highest (what the policy acts on). From these: PR and ROC curves,
  calibration (row level, labelled rows as in training), a threshold table (precision, recall,
  false-ban rate per threshold), all drawn next to the champion's.
* **Decisions** on every held-out scenario through the production policy (`models.promotion`,
  the same cached figures `promote` uses): recall per spam strategy, false bans per legitimate
  hard case, pooled recall and false-ban rate — V beside the champion.

Plus the model itself: LightGBM gain importance and a SHAP summary on a sample of rows.
Plots are matplotlib PNGs embedded as base64, so the file can be mailed or attached to a review.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.boosting import auc, pr_auc

log = logging.getLogger(__name__)

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
SHAP_ROWS = 1500


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.4f}", border=0, classes="t", na_rep="nan")


def evaluation_data(dataset: Path | None, heldout: Path) -> tuple[str, list[Any], pd.DataFrame]:
    """(description, ts-ordered events, truth with account/label/role/first_spam_ts)."""
    if dataset is not None:
        from models.signals_io import iter_events
        from models.training import read_labels

        return f"dataset {dataset}", list(iter_events(Path(dataset))), read_labels(Path(dataset))
    from models.promotion import scenario_files
    from simulator.offline import simulate
    from simulator.scenario import load_scenario

    path = scenario_files(heldout)[0]
    sim = simulate(load_scenario(path))
    return f"held-out scenario {path.name} (simulated offline)", sim.events, sim.truth


def account_scores(table: pd.DataFrame, model: Any) -> pd.Series:
    from detection.features import FEATURE_NAMES

    scores = model.score(table[list(FEATURE_NAMES)].to_numpy(dtype=np.float64))
    return pd.Series(scores, index=table.account.to_numpy()).groupby(level=0).max()


def threshold_table(scores: pd.Series, truth: pd.DataFrame) -> pd.DataFrame:
    labels = truth.set_index("account").label.reindex(scores.index).fillna(0).astype(int)
    rows = []
    for t in THRESHOLDS:
        flagged = scores >= t
        tp = int((flagged & (labels == 1)).sum())
        fp = int((flagged & (labels == 0)).sum())
        rows.append({"threshold": t, "flagged": int(flagged.sum()),
                     "precision": tp / (tp + fp) if tp + fp else float("nan"),
                     "recall": tp / int((labels == 1).sum()) if (labels == 1).any() else float("nan"),
                     "false_ban_rate": fp / int((labels == 0).sum()) if (labels == 0).any() else float("nan")})
    return pd.DataFrame(rows)


def build_report(settings: Any, version: str, out: Path, *, dataset: Path | None = None,
                 heldout: Path | None = None) -> dict[str, Any]:
    """Write the HTML report of `version` to `out`; returns the headline figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from detection.features import FEATURE_NAMES, build_feature_table
    from detection.model import load_model
    from models.artifacts import artifact_dir, champion_version, read_meta
    from models.promotion import HELDOUT_DIR, evaluate_heldout
    from models.training import labelled_rows

    started = time.perf_counter()
    heldout = heldout or HELDOUT_DIR
    champion = champion_version(settings.state_dir)
    versions = [version] + ([champion] if champion and champion != version else [])
    models = {v: load_model(artifact_dir(settings.state_dir, v)) for v in versions}
    meta = read_meta(artifact_dir(settings.state_dir, version))
    description, events, truth = evaluation_data(dataset, heldout)
    table = build_feature_table(events)
    scores = {v: account_scores(table, m) for v, m in models.items()}
    labels = truth.set_index("account").label
    sections: list[str] = []

    # Curves: PR, ROC (account level), calibration (row level).
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    summary = []
    for v, s in scores.items():
        y = labels.reindex(s.index).fillna(0).astype(int).to_numpy()
        p, r, _ = precision_recall_curve(y, s.to_numpy())
        fpr, tpr, _ = roc_curve(y, s.to_numpy())
        axes[0].plot(r, p, label=f"{v} (AP {pr_auc(y, s.to_numpy()):.3f})")
        axes[1].plot(fpr, tpr, label=f"{v} (AUC {auc(y, s.to_numpy()):.3f})")
        rows, ry = labelled_rows(table, truth)
        rp = models[v].score(rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float64))
        bins = np.clip((rp * 10).astype(int), 0, 9)
        frame = pd.DataFrame({"bin": bins, "p": rp, "y": ry}).groupby("bin").mean()
        axes[2].plot(frame.p, frame.y, marker="o", label=v)
        summary.append({"version": v, "accounts": len(y), "spammers": int(y.sum()), "pr_auc": pr_auc(y, s.to_numpy()),
                        "auc": auc(y, s.to_numpy()), "brier_rows": float(np.mean((rp - ry) ** 2))})
    axes[0].set(title="Precision–recall (accounts)", xlabel="recall", ylabel="precision")
    axes[1].set(title="ROC (accounts)", xlabel="false-positive rate", ylabel="true-positive rate")
    axes[1].plot([0, 1], [0, 1], ls=":", c="grey")
    axes[2].plot([0, 1], [0, 1], ls=":", c="grey")
    axes[2].set(title="Calibration (rows)", xlabel="predicted probability", ylabel="observed spam share")
    for ax in axes:
        ax.legend(loc="best", fontsize=8)
    sections.append(f"<h2>Scores on {html.escape(description)}</h2>" + _table(pd.DataFrame(summary)) + _png(fig))

    for v, s in scores.items():
        sections.append(f"<h3>Threshold table — {html.escape(v)}</h3>" + _table(threshold_table(s, truth)))

    # Decisions on the held-out scenarios, through the production policy.
    figures = evaluate_heldout(settings.state_dir, versions, heldout)
    pooled = pd.DataFrame([{"version": v, "recall": f.recall, "false_ban_rate": f.false_ban_rate,
                            "spammers": f.spammers, "spammers_banned": f.spammers_banned, "legit": f.legit,
                            "false_bans": f.false_bans} for v, f in figures.items()])
    strategy = pd.DataFrame({v: pd.Series({f"{scn}/{k}": val for scn, d in f.scenarios.items()
                                           for k, val in d["recall_per_strategy"].items()})
                             for v, f in figures.items()})
    hard = pd.DataFrame({v: pd.Series({f"{scn}/{k}": val for scn, d in f.scenarios.items()
                                       for k, val in d["false_bans_per_case"].items()})
                         for v, f in figures.items()})
    fig, axes = plt.subplots(1, 2, figsize=(15, max(3.5, 0.28 * max(len(strategy), len(hard), 1))))
    if not strategy.empty:
        strategy.plot.barh(ax=axes[0])
    axes[0].set(title="Recall per spam strategy (held-out, production policy)", xlabel="recall")
    if not hard.empty:
        hard.plot.barh(ax=axes[1])
    axes[1].set(title="False bans per legitimate case (held-out)", xlabel="accounts banned")
    sections.append("<h2>Decisions on the held-out scenarios</h2>" + _table(pooled) + _png(fig)
                    + "<h3>Recall per strategy</h3>" + _table(strategy) + "<h3>False bans per case</h3>"
                    + _table(hard))

    # The model itself: importance and SHAP.
    booster = models[version].booster
    gain = pd.Series(booster.feature_importance("gain"), index=booster.feature_name()).sort_values()
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(gain) + 1))
    gain.plot.barh(ax=ax)
    ax.set(title=f"Gain importance — {version}")
    sections.append("<h2>Feature importance</h2>" + _png(fig))
    sections.append(_shap_section(booster, table, version))

    meta_rows = pd.DataFrame([{"version": v, **{k: val for k, val in read_meta(artifact_dir(settings.state_dir, v))
                                               .get("metrics", {}).items() if isinstance(val, (int, float))}}
                              for v in versions]).set_index("version").T
    head = (f"<h1>Model report — {html.escape(version)}</h1><p>Champion: {html.escape(str(champion))}. "
            f"Trained {time.strftime('%Y-%m-%d %H:%M', time.gmtime(meta.get('trained_at', 0) / 1000))} UTC on "
            f"{html.escape(str(meta.get('dataset', '?')))}. Report built in {time.perf_counter() - started:.0f}s.</p>"
            "<h2>Training figures (test part of the training split)</h2>" + _table(meta_rows))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Sealguard model report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1200px}table.t{border-collapse:collapse;margin:.5em 0}"
            "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
            "img{max-width:100%}</style></head><body>" + head + "".join(sections) + "</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    mine = figures[version]
    return {"version": version, "champion": champion, "pr_auc": summary[0]["pr_auc"], "auc": summary[0]["auc"],
            "heldout_recall": mine.recall, "heldout_false_ban_rate": mine.false_ban_rate,
            "seconds": round(time.perf_counter() - started, 1)}


def _shap_section(booster: Any, table: pd.DataFrame, version: str) -> str:
    """SHAP summary (beeswarm) on a sample of rows; says so plainly if SHAP cannot run."""
    import warnings

    import matplotlib.pyplot as plt

    from detection.features import FEATURE_NAMES

    sample = table.sample(n=min(SHAP_ROWS, len(table)), random_state=0)
    X = sample[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import shap

            values = shap.TreeExplainer(booster).shap_values(X)
            if isinstance(values, list):
                values = values[-1]
            plt.figure()
            shap.summary_plot(values, X, feature_names=list(FEATURE_NAMES), show=False, max_display=20)
            fig = plt.gcf()
            fig.suptitle(f"SHAP summary — {version} ({len(X)} rows, log-odds)")
        return "<h2>SHAP summary</h2>" + _png(fig)
    except Exception as exc:  # noqa: BLE001 - the rest of the report is still worth having
        log.warning("SHAP summary skipped: %s", exc)
        return f"<h2>SHAP summary</h2><p>Not available: {html.escape(str(exc))}</p>"
