#!/usr/bin/env python3
"""Summarises Waymark output JSON lines: commands per channel/action and the step funnel.

usage: summarize.py OUTPUT.jsonl [SIMULATE.jsonl]
With a second file, also says whether the two hold the same records (by id and content).
"""
import collections
import json
import sys


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


def key(r):
    # A command_emitted journey event carries its command's id too: key by kind.
    return r["command_id"] if r.get("kind") == "command" else r.get("journey_event_id")


def main():
    out = load(sys.argv[1])
    cmds = collections.Counter((r["channel"], r["action"]) for r in out if r.get("kind") == "command")
    print("commands:")
    for (channel, action), n in sorted(cmds.items()):
        print(f"  {channel:15} {action:16} {n:6}")
    steps = collections.Counter(r["step"] for r in out if r.get("type") == "step_completed")
    abandoned = collections.Counter(r["step"] for r in out if r.get("type") == "step_abandoned")
    entered = sum(1 for r in out if r.get("type") == "entered")
    goal = sum(1 for r in out if r.get("type") == "goal_reached")
    order = ["login", "payment_account", "financials", "references", "first_order", "second_order",
             "additional_product_line"]
    print(f"funnel: {entered} entered, {goal} reached the goal")
    for s in order:
        bar = "#" * int(40 * steps[s] / max(entered, 1))
        print(f"  {s:24} completed {steps[s]:6}  abandoned {abandoned[s]:6}  {bar}")
    if len(sys.argv) > 2:
        sim = {key(r): r for r in load(sys.argv[2])}
        got = {key(r): r for r in out if r.get("kind") in ("command", "journey_event")}
        same = sim == got
        print(f"kafka output vs waymark simulate: {len(got)} vs {len(sim)} records -> "
              f"{'IDENTICAL' if same else 'DIFFERENT'}")
        if not same:
            missing = set(sim) - set(got)
            extra = set(got) - set(sim)
            print(f"  missing {len(missing)}, extra {len(extra)}")
            sys.exit(1)


if __name__ == "__main__":
    main()
