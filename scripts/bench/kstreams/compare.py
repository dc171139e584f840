#!/usr/bin/env python3
"""Compares two sets of Waymark outputs (JSON lines in `waymark simulate`'s shape).

  compare.py --expected simulate.jsonl --actual kstreams.jsonl

Commands are matched by `command_id`, journey events by `journey_event_id`; a record matches
when every field is equal. Reports what is missing, extra, different and repeated, with a few
examples of each; exits 1 on any mismatch.
"""
import argparse
import json
import sys
from collections import Counter

ID = {"command": "command_id", "journey_event": "journey_event_id"}


def load(path):
    records = {kind: {} for kind in ID}
    repeated = Counter()
    for n, line in enumerate(open(path), 1):
        line = line.strip()
        if not line:
            continue
        try:
            o = json.loads(line)
        except ValueError as e:
            sys.exit(f"compare: {path}:{n}: not JSON ({e})")
        kind = o.get("kind")
        if kind not in ID:
            sys.exit(f"compare: {path}:{n}: unknown kind {kind!r}")
        key = o.get(ID[kind])
        if key in records[kind]:
            repeated[kind] += 1
        records[kind][key] = o
    return records, repeated


def describe(o):
    if o["kind"] == "command":
        return f"{o['customer_id']} {o['action']} due {o['due_at']}"
    return f"{o['customer_id']} {o['type']} {o.get('step') or o.get('action')} at {o['at']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--expected", required=True, help="waymark simulate output")
    ap.add_argument("--actual", required=True, help="output read back with waymark tail")
    ap.add_argument("--label", default="kstreams")
    args = ap.parse_args()
    want, _ = load(args.expected)
    got, repeated = load(args.actual)
    ok = True
    for kind in ID:
        w, g = want[kind], got[kind]
        missing = [w[k] for k in w if k not in g]
        extra = [g[k] for k in g if k not in w]
        differ = [(w[k], g[k]) for k in w if k in g and w[k] != g[k]]
        same = len(w) - len(missing) - len(differ)
        status = "match" if not (missing or extra or differ or repeated[kind]) else "MISMATCH"
        print(f"{args.label}: {kind}s: {status}: simulate {len(w)}, {args.label} {len(g)}; "
              f"equal {same}, missing {len(missing)}, extra {len(extra)}, "
              f"different {len(differ)}, repeated {repeated[kind]}")
        for o in missing[:5]:
            print(f"  missing: {describe(o)}")
        for o in extra[:5]:
            print(f"  extra:   {describe(o)}")
        for a, b in differ[:5]:
            fields = sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f))
            print(f"  different: {describe(a)}: " +
                  "; ".join(f"{f}: simulate {a.get(f)!r}, {args.label} {b.get(f)!r}" for f in fields))
        ok = ok and status == "match"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
