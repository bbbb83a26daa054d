"""How checkpoint_3b66d32.bin was made (kept for the record; tests only read the file).

Run with the code of commit 3b66d32 (the last to checkpoint a RollingVector and a RollingDistinct per
window per account), its working directory on `sys.path`, after writing RECS: `(keys, records)` of the
bench's stream, `bench.detect._signals(1_000_000, first_seed=100)` decoded by `decode_batch`. It keeps
the records of 8 busy senders and 16 quiet ones from the first 400,000 (account ids and net buckets
renamed `x<n>`), replays the first half through the record doors and the schedule (as
test_account_windows.py's `_replay`), and writes the records, the accounts and the NetBook pickled
by that build.
"""

import collections
import pickle
import zlib

import detection
from detection.features import FeatureEngine, ScoreSchedule

RECS = "/tmp/a-work/recs.pkl"
ROLE = ("sender", "recipient", "account", "actor", "member", "blocked", "reported", "contact")
KEEP = ("type", "ts", "sender", "recipient", "first_contact", "account", "net_bucket", "actor", "member",
        "member_is_contact", "blocked", "reported", "messages_verified", "contact")


def main() -> None:
    with open(RECS, "rb") as fh:
        _keys, recs = pickle.load(fh)
    recs = recs[:400_000]
    sends = collections.Counter(r.get("sender") for r in recs if r["type"] == "message.sent")
    chosen = {a for a, _ in sends.most_common(8)} | set([a for a, n in sends.items() if 3 <= n <= 30][:16])
    names: dict[str, str] = {}

    def short(v: object) -> object:
        return names.setdefault(v, f"x{len(names)}") if isinstance(v, str) else v

    sub = [{k: (short(r[k]) if k in ROLE or k == "net_bucket" else r[k]) for k in KEEP if k in r}
           for r in recs if any(r.get(f) in chosen for f in ROLE)]
    half = len(sub) // 2
    eng, sched = FeatureEngine(), ScoreSchedule()
    for r in sub[:half]:
        for account, received in ((eng.outbound_record(r), False), (eng.inbound_record(r), True)):
            if account is not None:
                st = eng.accounts[account]
                if sched.due(st, r["ts"], received=received):
                    sched.mark(st, r["ts"])
    out = zlib.compress(pickle.dumps({"written_by": "3b66d32", "records": sub, "checkpoint_after": half,
                                      "accounts": pickle.dumps(eng.accounts, protocol=5),
                                      "book": pickle.dumps(eng.book, protocol=5)}, protocol=5), 9)
    with open("checkpoint_3b66d32.bin", "wb") as fh:
        fh.write(out)
    print(detection.__file__, len(sub), half, len(eng.accounts), len(out))


if __name__ == "__main__":
    main()
