"""Per-account summaries of simulated signals, by role: how realistic is a scenario?

Used to tune scenarios and in tests (spam goes to strangers, people answer friends, the hard
cases really are heavy). Not a detection feature set — detection/ owns those — just a batch
look at the same metadata a detector sees.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sealguard.contracts import ContactBlocked, Event, MessageSent, ReportFiled


def account_summary(events: list[Event], truth: pd.DataFrame) -> pd.DataFrame:
    """One row per account: sends, distinct recipients, first-contact share, reply share, blocks
    and reports received (per distinct recipient), plus role and label from the truth."""
    direct = [(e.sender, e.recipient, e.first_contact) for e in events
              if isinstance(e, MessageSent) and e.recipient is not None]
    groups = pd.Series([e.sender for e in events if isinstance(e, MessageSent) and e.group is not None],
                       dtype="str")
    msgs = pd.DataFrame(direct, columns=["sender", "recipient", "first_contact"])
    out = truth[["account", "role", "label"]].set_index("account")
    out["sends"] = msgs.groupby("sender").size()
    out["group_sends"] = groups.value_counts()
    out["recipients"] = msgs.groupby("sender")["recipient"].nunique()
    out["first_contact_share"] = msgs.groupby("sender")["first_contact"].mean()
    pairs = msgs[["sender", "recipient"]].drop_duplicates()
    back = set(zip(msgs["recipient"], msgs["sender"]))
    pairs["replied"] = [(s, r) in back for s, r in zip(pairs["sender"], pairs["recipient"])]
    out["reply_share"] = pairs.groupby("sender")["replied"].mean()
    blocks = pd.Series([e.blocked for e in events if isinstance(e, ContactBlocked)], dtype="str")
    reports = [(e.reported, e.messages_verified) for e in events if isinstance(e, ReportFiled)]
    rep = pd.DataFrame(reports, columns=["reported", "verified"])
    out["blocks_received"] = blocks.value_counts()
    out["reports_received"] = rep.groupby("reported").size()
    out["verified_received"] = rep.groupby("reported")["verified"].sum()
    counts = ["sends", "group_sends", "recipients", "blocks_received", "reports_received", "verified_received"]
    out[counts] = out[counts].fillna(0).astype(np.int64)
    out["blocks_per_recipient"] = out["blocks_received"] / out["recipients"].where(out["recipients"] > 0)
    return out


def role_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Medians (and p90 of sends) per role."""
    g = summary.groupby("role")
    table = g[["sends", "recipients", "first_contact_share", "reply_share", "blocks_per_recipient",
               "reports_received", "verified_received", "group_sends"]].median()
    table.insert(0, "accounts", g.size())
    table["sends_p90"] = g["sends"].quantile(0.9)
    return table
