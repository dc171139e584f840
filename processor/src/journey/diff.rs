//! `waymark journeys diff <old> <new>`: what a change of the journey definitions does to the
//! customers in flight, in words a journey owner can check before deploying it.

use super::{Journey, JourneySet};
use crate::model::format_millis;

/// The explanation of going from `old` to `new`, one paragraph per journey that changes.
pub fn explain(old: &JourneySet, new: &JourneySet) -> Vec<String> {
    let mut out = Vec::new();
    let mut names: Vec<&str> = old
        .latest()
        .chain(new.latest())
        .map(|j| j.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let (was, now) = (old.get(name), new.get(name));
        let text = match (was, now) {
            (None, Some(now)) => format!(
                "journey `{name}` is new (version {}): {}; no customer is in it yet.",
                now.version,
                match now.effective_from {
                    Some(at) => format!("customers entering from {} get it", format_millis(at)),
                    None => "customers enter it from their next matching event (a running processor refuses it without `effective-from`)".to_owned(),
                }
            ),
            (Some(_), None) => format!(
                "journey `{name}` is removed: its instances in flight stop where they are; nothing pending of it is sent."
            ),
            (Some(was), Some(now)) => match explain_versions(was, now, new) {
                Some(text) => text,
                None => continue,
            },
            (None, None) => continue,
        };
        out.push(text);
    }
    out
}

/// What changes for customers of one journey, from its latest version in the old set to its
/// latest in the new one; `None` when nothing does.
fn explain_versions(was: &Journey, now: &Journey, new: &JourneySet) -> Option<String> {
    let name = &now.name;
    let changes = changes(was, now);
    let mut text = String::new();
    if now.version == was.version {
        if changes.is_empty() && now.digest == was.digest {
            return None;
        }
        text.push_str(&format!(
            "journey `{name}` version {} changed in place. A running processor refuses this reload; restarted with it, every instance, also those in flight, runs the new definition from its entry (actions with new ids go out, even for the past):\n",
            now.version
        ));
    } else {
        let old_still_loaded = new
            .iter()
            .any(|j| j.name == *name && j.version == was.version);
        let migrates = now.migrate_from.contains(&was.version);
        let when = now.effective_from.map(format_millis);
        match (when, migrates, old_still_loaded) {
            (Some(at), false, true) => text.push_str(&format!(
                "journey `{name}`: version {} takes over from version {} for customers entering from {at}. Instances in flight (entered before {at}) stay on version {}: nothing changes for them. For new entries:\n",
                now.version, was.version, was.version
            )),
            (Some(at), true, _) => text.push_str(&format!(
                "journey `{name}`: version {} takes over from version {} at {at}, and instances of version {} still in flight then move to it: what version {} did before {at} stays done (no command is sent twice), and from {at} on:\n",
                now.version, was.version, was.version, was.version
            )),
            (Some(at), false, false) => text.push_str(&format!(
                "journey `{name}`: version {} replaces version {} from {at}, but version {}'s file is gone and `migrate-from` does not list it: its instances in flight stop, and a running processor refuses this reload. Keep version {}'s file, or add `migrate-from: [{}]`. For new entries:\n",
                now.version, was.version, was.version, was.version, was.version
            )),
            (None, _, _) => text.push_str(&format!(
                "journey `{name}`: version {} replaces version {} with no `effective-from`: every instance, also those in flight, is derived again as version {} and its outputs get new ids, so what was sent goes out again. Give version {} an `effective-from:` and keep version {}'s file. Changes:\n",
                now.version, was.version, now.version, now.version, was.version
            )),
        }
    }
    if changes.is_empty() {
        text.push_str("  - no step, exit or action changes\n");
    }
    for c in changes {
        text.push_str(&format!("  - {c}\n"));
    }
    Some(text.trim_end().to_owned())
}

/// What starts, cancels and guards a rule, with steps by id (their indices shift when a step
/// is added).
fn rule_shape(j: &Journey, r: &super::Rule) -> String {
    let after = match &r.after {
        super::Trigger::Step(s) => j.steps[*s].id.clone(),
        other => format!("{other:?}"),
    };
    let unless: Vec<&str> = r.unless.iter().map(|s| j.steps[*s].id.as_str()).collect();
    format!("{after} {unless:?} {:?} {:?}", r.guards, r.choose)
}

/// The differences between two definitions of a journey, one line each.
fn changes(was: &Journey, now: &Journey) -> Vec<String> {
    let mut out = Vec::new();
    let duration = |ms: Option<i64>| {
        ms.map_or("none".to_owned(), |ms| {
            humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64))
                .to_string()
        })
    };
    for s in &now.steps {
        match was.steps.iter().find(|o| o.id == s.id) {
            None => out.push(format!(
                "step `{}` is new (completed by `{}`)",
                s.id, s.matcher.event_type
            )),
            Some(o) if o.matcher != s.matcher => out.push(format!(
                "step `{}` is completed differently (`{}` → `{}`, or its conditions changed)",
                s.id, o.matcher.event_type, s.matcher.event_type
            )),
            Some(o) if o.abandon_after != s.abandon_after => out.push(format!(
                "step `{}`: abandoned after {} instead of {}",
                s.id,
                duration(s.abandon_after),
                duration(o.abandon_after)
            )),
            Some(_) => {}
        }
    }
    for o in &was.steps {
        if now.step_index(&o.id).is_none() {
            out.push(format!(
                "step `{}` is removed: no longer reported or abandoned",
                o.id
            ));
        }
    }
    if was.steps[was.goal].id != now.steps[now.goal].id {
        out.push(format!(
            "the goal is `{}` instead of `{}`",
            now.steps[now.goal].id, was.steps[was.goal].id
        ));
    }
    if was.exits != now.exits {
        out.push("the exit conditions change".to_owned());
    }
    if was.re_entry != now.re_entry {
        out.push(format!(
            "re-entry is {:?} instead of {:?}",
            now.re_entry, was.re_entry
        ));
    }
    for r in &now.rules {
        let Some(o) = was.rules.iter().find(|o| o.id == r.id) else {
            let actions: Vec<String> = r
                .actions
                .iter()
                .map(|a| {
                    format!(
                        "`{}` on {} after {}",
                        a.id,
                        a.channel,
                        duration(Some(a.delay))
                    )
                })
                .collect();
            out.push(format!("rule `{}` is new: {}", r.id, actions.join(", ")));
            continue;
        };
        if rule_shape(was, o) != rule_shape(now, r) {
            out.push(format!(
                "rule `{}` starts, is cancelled or is guarded differently",
                r.id
            ));
        }
        for a in &r.actions {
            match o.actions.iter().find(|x| x.id == a.id) {
                None => out.push(format!(
                    "rule `{}`: action `{}` is new ({} after {})",
                    r.id,
                    a.id,
                    a.channel,
                    duration(Some(a.delay))
                )),
                Some(x) if x != a => {
                    let mut what = Vec::new();
                    if x.delay != a.delay {
                        what.push(format!(
                            "after {} instead of {}",
                            duration(Some(a.delay)),
                            duration(Some(x.delay))
                        ));
                    }
                    if x.channel != a.channel {
                        what.push(format!("on {} instead of {}", a.channel, x.channel));
                    }
                    if x.template != a.template {
                        what.push(format!(
                            "template {} instead of {}",
                            a.template.as_deref().unwrap_or("none"),
                            x.template.as_deref().unwrap_or("none")
                        ));
                    }
                    if x.params != a.params || x.experiment != a.experiment {
                        what.push("parameters or experiment changed".to_owned());
                    }
                    out.push(format!(
                        "rule `{}`: action `{}` {}",
                        r.id,
                        a.id,
                        what.join(", ")
                    ));
                }
                Some(_) => {}
            }
        }
        for x in &o.actions {
            if r.actions.iter().all(|a| a.id != x.id) {
                out.push(format!(
                    "rule `{}`: action `{}` is removed: not sent any more",
                    r.id, x.id
                ));
            }
        }
    }
    for o in &was.rules {
        if now.rules.iter().all(|r| r.id != o.id) {
            out.push(format!(
                "rule `{}` is removed: none of its actions is sent any more",
                o.id
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::parsed as set;

    const V1: &str = "journey: trial\nversion: 1\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: subscription.paid\ngoal: paid\nrules:\n  - id: nudge\n    after: start\n    unless: [paid]\n    actions:\n      - id: mail\n        delay: 1d\n        channel: email\n      - id: call\n        delay: 7d\n        channel: contact-center\n";

    fn v2(extra: &str) -> String {
        V1.replace(
            "version: 1\n",
            &format!("version: 2\neffective-from: 2026-12-01T00:00:00Z\n{extra}"),
        )
        .replace(
            "delay: 7d\n        channel: contact-center",
            "delay: 6d\n        channel: sms",
        )
        .replace(
            "  - id: paid\n",
            "  - id: invited\n    event: teammate.invited\n  - id: paid\n",
        )
    }

    #[test]
    fn a_new_version_beside_the_old_one_leaves_instances_in_flight_alone() {
        let text = explain(&set(&[V1]), &set(&[V1, &v2("")])).join("\n");
        assert!(text.contains("version 2 takes over from version 1 for customers entering from 2026-12-01T00:00:00.000Z"), "{text}");
        assert!(
            text.contains("stay on version 1: nothing changes for them"),
            "{text}"
        );
        assert!(
            text.contains("step `invited` is new (completed by `teammate.invited`)"),
            "{text}"
        );
        assert!(
            text.contains(
                "action `call` after 6days instead of 7days, on sms instead of contact-center"
            ),
            "{text}"
        );
        assert!(!text.contains("starts, is cancelled"), "{text}");
        assert!(!text.contains("action `mail`"), "{text}");
    }

    #[test]
    fn a_migrating_version_says_what_changes_for_instances_in_flight() {
        let text = explain(&set(&[V1]), &set(&[&v2("migrate-from: [1]\n")])).join("\n");
        assert!(
            text.contains("instances of version 1 still in flight then move to it"),
            "{text}"
        );
        assert!(text.contains("no command is sent twice"), "{text}");
    }

    #[test]
    fn risky_changes_are_called_out() {
        let in_place = V1.replace("delay: 1d", "delay: 2d");
        let text = explain(&set(&[V1]), &set(&[&in_place])).join("\n");
        assert!(
            text.contains("version 1 changed in place. A running processor refuses this reload"),
            "{text}"
        );
        assert!(
            text.contains("action `mail` after 2days instead of 1day"),
            "{text}"
        );
        let bumped = V1.replace("version: 1", "version: 2");
        let text = explain(&set(&[V1]), &set(&[&bumped])).join("\n");
        assert!(text.contains("with no `effective-from`"), "{text}");
        assert!(text.contains("what was sent goes out again"), "{text}");
        let gone = explain(&set(&[V1]), &set(&[&v2("")])).join("\n");
        assert!(gone.contains("its instances in flight stop"), "{gone}");
        assert!(explain(&set(&[V1]), &set(&[V1])).is_empty());
    }
}
