//! `waymark backtest`: what a change to a journey would have done. Two sets of journey
//! definitions (the one deployed, `A`, and a candidate, `B`) run over the same history, each
//! through the engine exactly as `waymark simulate` runs it; the report compares their commands
//! per journey, action and channel, their funnels, the projected cost per channel, and the
//! customers whose commands differ.
//!
//! Pure apart from reading the history: the comparison itself is a fold over the outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::sync::Arc;

use serde::Serialize;

use crate::engine::Engine;
use crate::model::{Channel, JourneyEventType, Output};
use crate::simulate::{SimulateError, SimulateOptions, SimulateReport, simulate_into};

/// What one side's outputs add up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Side {
    /// Commands per (journey, action, channel).
    pub commands: BTreeMap<(String, String, Channel), u64>,
    /// Journey events per (journey, type, step or action).
    pub journey_events: BTreeMap<(String, JourneyEventType, String), u64>,
    /// Per customer, the commands they got: `journey/rule/action@due`.
    #[serde(skip)]
    pub per_customer: BTreeMap<String, BTreeSet<String>>,
    /// Events read, accepted and refused (as `simulate` counts them).
    pub events: u64,
}

impl Side {
    fn add(&mut self, o: &Output) {
        match o {
            Output::Command(c) => {
                *self
                    .commands
                    .entry((c.journey.to_string(), c.action.to_string(), c.channel))
                    .or_default() += 1;
                self.per_customer
                    .entry(c.customer_id.to_string())
                    .or_default()
                    .insert(format!(
                        "{}/{}/{}@{}",
                        c.journey,
                        c.rule,
                        c.action,
                        crate::model::format_millis(c.due_at)
                    ));
            }
            Output::JourneyEvent(e) => {
                let what = e
                    .step
                    .as_deref()
                    .or(e.action.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                *self
                    .journey_events
                    .entry((e.journey.to_string(), e.event_type, what))
                    .or_default() += 1;
            }
        }
    }

    /// Commands on `channel`.
    pub fn on_channel(&self, channel: Channel) -> u64 {
        self.commands
            .iter()
            .filter(|((_, _, c), _)| *c == channel)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Price of one command per channel, for the projected cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Costs(pub BTreeMap<Channel, f64>);

impl Default for Costs {
    /// Placeholder prices (an email is nearly free, an SMS costs cents, a contact-center task
    /// minutes of an agent); pass real ones with `--cost`.
    fn default() -> Self {
        Costs(BTreeMap::from([
            (Channel::Email, 0.001),
            (Channel::Sms, 0.05),
            (Channel::ContactCenter, 4.0),
        ]))
    }
}

impl Costs {
    /// Parses `channel=price` (e.g. `sms=0.04`) into these costs.
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (channel, price) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}` is not channel=price (e.g. sms=0.04)"))?;
        let channel = Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == channel.trim())
            .ok_or_else(|| {
                format!("`{channel}` is not a channel; use email, sms or contact-center")
            })?;
        let price: f64 = price
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| p.is_finite() && *p >= 0.0)
            .ok_or_else(|| format!("`{price}` is not a price (a number, 0 or more)"))?;
        self.0.insert(channel, price);
        Ok(())
    }

    fn of(&self, channel: Channel) -> f64 {
        self.0.get(&channel).copied().unwrap_or(0.0)
    }
}

/// One row of the comparison: a count in A and in B.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delta {
    /// What is counted.
    pub what: String,
    /// In A.
    pub a: u64,
    /// In B.
    pub b: u64,
}

/// The projected cost of one channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelCost {
    /// Channel.
    pub channel: String,
    /// Price of one command.
    pub price: f64,
    /// Commands in A and B.
    pub a: u64,
    /// See `a`.
    pub b: u64,
    /// `a × price`.
    pub cost_a: f64,
    /// `b × price`.
    pub cost_b: f64,
}

/// A customer whose commands differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerDiff {
    /// Customer id.
    pub customer_id: String,
    /// Commands only A sends (`journey/rule/action@due`).
    pub only_a: Vec<String>,
    /// Commands only B sends.
    pub only_b: Vec<String>,
}

/// The backtest's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Events in the history.
    pub events: u64,
    /// Commands per journey/action/channel.
    pub commands: Vec<Delta>,
    /// Journey events per journey/type/step: the funnel.
    pub funnel: Vec<Delta>,
    /// Projected cost per channel.
    pub cost: Vec<ChannelCost>,
    /// Customers whose commands differ.
    pub customers_changed: u64,
    /// Up to 10 of them.
    pub examples: Vec<CustomerDiff>,
}

fn deltas<K: Ord + Clone>(
    a: &BTreeMap<K, u64>,
    b: &BTreeMap<K, u64>,
    name: impl Fn(&K) -> String,
) -> Vec<Delta> {
    let keys: BTreeSet<&K> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .map(|k| Delta {
            what: name(k),
            a: a.get(k).copied().unwrap_or(0),
            b: b.get(k).copied().unwrap_or(0),
        })
        .collect()
}

/// Compares two sides.
pub fn compare(a: &Side, b: &Side, costs: &Costs) -> Report {
    let commands = deltas(&a.commands, &b.commands, |(j, action, ch)| {
        format!("{j} {action} ({ch})")
    });
    let funnel = deltas(&a.journey_events, &b.journey_events, |(j, t, what)| {
        if what.is_empty() {
            format!("{j} {}", t.as_str())
        } else {
            format!("{j} {} {what}", t.as_str())
        }
    })
    .into_iter()
    .filter(|d| !d.what.contains(" command_"))
    .collect();
    let cost = Channel::ALL
        .into_iter()
        .map(|ch| {
            let price = costs.of(ch);
            let (na, nb) = (a.on_channel(ch), b.on_channel(ch));
            ChannelCost {
                channel: ch.as_str().to_owned(),
                price,
                a: na,
                b: nb,
                cost_a: na as f64 * price,
                cost_b: nb as f64 * price,
            }
        })
        .collect();
    let none = BTreeSet::new();
    let customers: BTreeSet<&String> = a.per_customer.keys().chain(b.per_customer.keys()).collect();
    let mut changed = 0;
    let mut examples = Vec::new();
    for c in customers {
        let ca = a.per_customer.get(c).unwrap_or(&none);
        let cb = b.per_customer.get(c).unwrap_or(&none);
        if ca == cb {
            continue;
        }
        changed += 1;
        if examples.len() < 10 {
            examples.push(CustomerDiff {
                customer_id: c.clone(),
                only_a: ca.difference(cb).cloned().collect(),
                only_b: cb.difference(ca).cloned().collect(),
            });
        }
    }
    Report {
        events: a.events,
        commands,
        funnel,
        cost,
        customers_changed: changed,
        examples,
    }
}

/// Runs `engine` over `history` as `simulate` does and folds its outputs into a [`Side`].
pub fn run_side(
    engine: Arc<Engine>,
    history: impl BufRead + Send,
    opts: &SimulateOptions,
) -> Result<(Side, SimulateReport), SimulateError> {
    let mut side = Side::default();
    let report = simulate_into(engine, history, opts, |o| {
        side.add(&o);
        Ok(())
    })?;
    side.events = report.lines;
    Ok((side, report))
}

/// The report as text: tables of commands, funnel and cost with the change, and examples.
pub fn render(r: &Report, a_name: &str, b_name: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let change = |a: f64, b: f64| {
        if a == 0.0 {
            if b == 0.0 {
                "".to_owned()
            } else {
                "new".to_owned()
            }
        } else {
            format!("{:+.1}%", (b - a) / a * 100.0)
        }
    };
    let _ = writeln!(
        s,
        "backtest over {} events: A = {a_name}, B = {b_name}\n",
        r.events
    );
    for (title, rows) in [("commands", &r.commands), ("funnel", &r.funnel)] {
        let _ = writeln!(s, "{title:<58} {:>9} {:>9} {:>9}", "A", "B", "change");
        for d in rows.iter() {
            let _ = writeln!(
                s,
                "  {:<56} {:>9} {:>9} {:>9}",
                d.what,
                d.a,
                d.b,
                change(d.a as f64, d.b as f64)
            );
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "{:<30} {:>8} {:>9} {:>9} {:>12} {:>12} {:>9}",
        "projected cost", "price", "A", "B", "cost A", "cost B", "change"
    );
    let (mut ta, mut tb) = (0.0, 0.0);
    for c in &r.cost {
        ta += c.cost_a;
        tb += c.cost_b;
        let _ = writeln!(
            s,
            "  {:<28} {:>8} {:>9} {:>9} {:>12.2} {:>12.2} {:>9}",
            c.channel,
            c.price,
            c.a,
            c.b,
            c.cost_a,
            c.cost_b,
            change(c.cost_a, c.cost_b)
        );
    }
    let _ = writeln!(
        s,
        "  {:<28} {:>8} {:>9} {:>9} {:>12.2} {:>12.2} {:>9}\n",
        "total",
        "",
        "",
        "",
        ta,
        tb,
        change(ta, tb)
    );
    let _ = writeln!(
        s,
        "customers whose commands change: {}",
        r.customers_changed
    );
    for e in &r.examples {
        let _ = writeln!(s, "  {}", e.customer_id);
        for c in &e.only_a {
            let _ = writeln!(s, "    - only A: {c}");
        }
        for c in &e.only_b {
            let _ = writeln!(s, "    + only B: {c}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::journey::{JourneySet, parse_journey};
    use crate::loadgen::{LoadgenArgs, generate, write_jsonl};

    fn engine(name: &str, text: &str) -> Arc<Engine> {
        Arc::new(Engine::new(JourneySet::new(vec![
            parse_journey(Path::new(name), text).unwrap(),
        ])))
    }

    #[test]
    fn a_candidate_without_the_sales_rep_call_and_with_an_earlier_email_is_compared_on_a_loadgen_trace()
     {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/journeys/b2b-onboarding.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        // B: the email after 15 minutes instead of an hour, and no sales-rep call.
        let call = text.find("      - id: sales-rep-call").unwrap();
        let candidate = text[..call]
            .replace("delay: 1h", "delay: 15m")
            .replace("version: 1", "version: 2");
        let a = engine("a.yaml", &text);
        let b = engine("b.yaml", &candidate);
        let mut history = Vec::new();
        let args = LoadgenArgs {
            customers: 1500,
            ..LoadgenArgs::default()
        };
        write_jsonl(generate(&args).unwrap(), &mut history).unwrap();
        let opts = SimulateOptions {
            allowed_lateness: 300_000,
            until: Some(crate::model::parse_millis("2026-03-01T00:00:00Z").unwrap()),
            max_future_skew: 86_400_000,
            progress_every: None,
            threads: 1,
        };
        let (sa, _) = run_side(a, &history[..], &opts).unwrap();
        let (sb, _) = run_side(b, &history[..], &opts).unwrap();
        let mut costs = Costs::default();
        costs.set("contact-center=5").unwrap();
        let r = compare(&sa, &sb, &costs);

        let row = |what: &str| r.commands.iter().find(|d| d.what == what).unwrap().clone();
        let calls = row("b2b-onboarding sales-rep-call (contact-center)");
        assert!(calls.a > 0);
        assert_eq!(calls.b, 0);
        let emails = row("b2b-onboarding invite-email (email)");
        // An earlier email is cancelled by fewer payment accounts: at least as many go out.
        assert!(emails.b >= emails.a && emails.a > 0, "{emails:?}");
        assert_eq!(
            row("b2b-onboarding assist-task (contact-center)").a,
            row("b2b-onboarding assist-task (contact-center)").b
        );
        // Commands change nothing upstream: the funnel (steps, goal) is the same.
        for d in &r.funnel {
            assert_eq!(d.a, d.b, "{d:?}");
        }
        let cc = r
            .cost
            .iter()
            .find(|c| c.channel == "contact-center")
            .unwrap();
        assert_eq!(cc.price, 5.0);
        assert_eq!(cc.a, sa.on_channel(Channel::ContactCenter));
        assert_eq!(cc.cost_a - cc.cost_b, calls.a as f64 * 5.0);
        // Every customer who got a call in A is a changed customer; examples say what changed.
        assert!(r.customers_changed >= calls.a);
        assert!(
            r.examples
                .iter()
                .all(|e| !e.only_a.is_empty() || !e.only_b.is_empty())
        );
        let text = render(&r, "a.yaml", "b.yaml");
        assert!(text.contains("sales-rep-call"), "{text}");
        assert!(text.contains("-100.0%"), "{text}");
    }

    #[test]
    fn costs_parse_channel_equals_price_and_say_what_is_wrong() {
        let mut c = Costs::default();
        c.set("sms=0.04").unwrap();
        assert_eq!(c.of(Channel::Sms), 0.04);
        assert!(c.set("fax=1").unwrap_err().contains("not a channel"));
        assert!(c.set("sms").unwrap_err().contains("channel=price"));
        assert!(c.set("sms=-1").unwrap_err().contains("not a price"));
    }
}
