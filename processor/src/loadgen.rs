//! Load generation: realistic, reproducible traffic for the reference onboarding journey.
//!
//! Owns turning [`LoadgenArgs`] into a stream of [`CustomerEvent`]s in *delivery* order: the
//! order a Kafka consumer of `customer-events` would see them, with the imperfections of real
//! upstream systems (events out of order within a bounded disorder, duplicates, steps completed
//! out of order, customers who never log in, repeated logins, completions just before and just
//! after the journey's due times). The same arguments give the same events, byte for byte.
//!
//! It must not do I/O: no Kafka, no files, no clock. Everything it produces leaves through the
//! iterator [`generate`] returns; [`write_jsonl`] only writes to the writer it is handed, and
//! pacing to `--rate` is the caller's job (`waymark loadgen`).
//!
//! # The traffic
//!
//! Customers `c{seed}-{n:06}` arrive spread uniformly over `--arrival-window` from `--start`.
//! A share (`--no-login`) are existing accounts that place orders (and sometimes get a payment
//! account) without ever logging in: they must never enter the journey. Every other customer
//! logs in (`login.created` with `email`, `phone`, `sales_rep`, `tz`) and then walks through the
//! six later steps of `deploy/journeys/b2b-onboarding.yaml` — `payment_account.created`,
//! `financials.provided`, `references.provided`, a first, a second and an additional-line
//! `order.placed` — stopping for good at each step with the probability given by `--drop-off`.
//! The second order keeps the first order's product line 80 % of the time; otherwise it is
//! itself the goal (one event completing two steps) and the customer orders nothing more.
//! With `--repeat-orders N`, a customer who placed a second order keeps ordering: 0 to 2N
//! further orders, in the first order's line until the goal (so they complete no step and a
//! dropped step stays dropped) and in any line after it. By default there are none, and a
//! customer has about 3.8 events; 21 gives about 10, for traces of active customers with long
//! histories.
//!
//! Delays between steps are lognormal with mean `--step-delay`, except for fixed shares aimed
//! at the journey's edges: 13 % of payment accounts come within 55 minutes of login (the +1h
//! email is cancelled), 3 % each land within ±2 minutes of the +1h, +2d, +4d and +7d due
//! times measured from login (a tenth of those exactly on it), and 3 % of every later step
//! lands within ±2 minutes of its 7-day abandonment window's end. `--steps-out-of-order`
//! customers provide financials and/or references before their payment account; `--drop-off`
//! then applies to the position in that customer's order.
//!
//! # Delivery order
//!
//! An event is delivered at its `occurred_at`, or, for an `--out-of-order` share, up to
//! `--max-disorder` later (so the events that happened in the meantime overtake it); a
//! `--duplicates` share is delivered a second time with the same `event_id` and content, no
//! later than `occurred_at + max-disorder`. Hence, for every delivered event,
//! `occurred_at ≥ max(occurred_at delivered before) − max-disorder`: with `--max-disorder`
//! below the processor's allowed lateness (5 minutes by default) no event is ever late.
//!
//! # Memory
//!
//! Customers are generated lazily in arrival order and their events merged through a heap keyed
//! by (delivery time, generation order); a customer is generated only when the next delivery
//! could be one of theirs. The heap therefore holds the pending events of the customers *in
//! flight* (arrived, not yet finished), about 48 bytes each, never the whole trace: memory is
//! O(customers in flight), not O(events). Measured: 1M customers (3.8M events) arriving within
//! one day peak at about 100 MB resident, since most are in flight together; over a 30-day
//! window, 14 MB. [`Traffic::in_flight`] reports the current number of pending events.

use std::borrow::Borrow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{self, Write};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::model::{CustomerEvent, Millis, parse_millis};

/// Default `--start`: a fixed instant, so that default output is reproducible.
const DEFAULT_START: &str = "2026-01-05T00:00:00Z";
/// [`DEFAULT_START`] in milliseconds since the epoch.
const DEFAULT_START_MILLIS: Millis = 1_767_571_200_000;
/// Default `--drop-off`, one probability per step after login.
const DEFAULT_DROP_OFF: [f64; 6] = [0.25, 0.2, 0.15, 0.2, 0.25, 0.35];

/// The processor's default allowed lateness (`allowed-lateness-secs: 300`): disorder must stay
/// below it, or generated events would arrive behind the watermark and count as late.
const ALLOWED_LATENESS: Duration = Duration::from_secs(300);

/// Steps of the reference journey after `login`, in definition order (the `--drop-off` order).
const STEPS_AFTER_LOGIN: [&str; 6] = [
    "payment_account",
    "financials",
    "references",
    "first_order",
    "second_order",
    "additional_product_line",
];

/// Product lines of `order.placed`'s `product_line` attribute.
const PRODUCT_LINES: [&str; 5] = ["office", "paper", "packaging", "janitorial", "safety"];
/// IANA time zones of `login.created`'s `tz` attribute.
const TIME_ZONES: [&str; 6] = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Europe/London",
];
/// Sales reps are `rep-1` … `rep-{SALES_REPS}`.
const SALES_REPS: u8 = 40;

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Due times of the payment-account rule measured from login: the +1h email, the +2d task, the
/// +4d call, and the end of the payment-account step's 7-day abandonment window.
const PAYMENT_ACCOUNT_DUE_MS: [i64; 4] = [HOUR_MS, 2 * DAY_MS, 4 * DAY_MS, 7 * DAY_MS];
/// The journey's `abandon-after`.
const ABANDON_AFTER_MS: i64 = 7 * DAY_MS;
/// Share of payment accounts created between 1 s and [`FAST_PAYMENT_ACCOUNT_MAX_MS`] after
/// login. With half of the +1h boundary share and the lognormal's head, about 15 % of payment
/// accounts come within the first hour.
const FAST_PAYMENT_ACCOUNT: f64 = 0.13;
/// Upper end of a fast payment account's delay.
const FAST_PAYMENT_ACCOUNT_MAX_MS: i64 = 55 * MINUTE_MS;
/// Share of payment accounts near each of [`PAYMENT_ACCOUNT_DUE_MS`].
const NEAR_DUE: f64 = 0.03;
/// Share of every later step completed near the end of its abandonment window.
const NEAR_ABANDONMENT: f64 = 0.03;
/// "Near" a due time: within this many milliseconds either side.
const NEAR_MS: i64 = 2 * MINUTE_MS;
/// Share of near-due completions exactly on the due time.
const EXACTLY_DUE: f64 = 0.1;
/// Shape of the lognormal step delay (σ of the underlying normal).
const DELAY_SIGMA: f64 = 1.0;
/// Lognormal delays are capped at this multiple of their mean.
const DELAY_CAP: f64 = 10.0;
/// Smallest delay between two events of a customer, so their event-time order is strict.
const MIN_DELAY_MS: i64 = SECOND_MS;
/// Share of second orders in the first order's product line.
const SAME_LINE_SECOND_ORDER: f64 = 0.8;
/// Share of no-login customers who also get a payment account.
const NO_LOGIN_PAYMENT_ACCOUNT: f64 = 0.3;
/// Largest `--repeat-orders`: order numbers stay within a `u8` (3 + 2 × 100).
const MAX_REPEAT_ORDERS: u8 = 100;
/// Latest instant an event may occur at: 9999-12-31T23:59:59.999Z.
const MAX_MILLIS: Millis = 253_402_300_799_999;

/// Generation parameters of `waymark loadgen`: how many customers, how they behave and how
/// imperfectly their events are delivered.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct LoadgenArgs {
    /// Number of customers to generate.
    #[arg(long, default_value_t = 1000)]
    pub customers: u64,
    /// Seed of the random generator: the same arguments give the same events, byte for byte.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Event time (RFC 3339) from which customers arrive; fixed by default for reproducibility.
    #[arg(long, value_name = "TIME", default_value = DEFAULT_START, value_parser = parse_start)]
    pub start: Millis,
    /// How long customers keep arriving after --start (e.g. 1d, 12h); arrivals are uniform.
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = humantime::parse_duration)]
    pub arrival_window: Duration,
    /// Probabilities of NOT completing each step after login, comma-separated, in journey
    /// order: payment_account, financials, references, first_order, second_order,
    /// additional_product_line. A customer who drops a step completes no later one (see
    /// --repeat-orders).
    #[arg(
        long,
        value_name = "P,P,P,P,P,P",
        value_delimiter = ',',
        default_value = "0.25,0.2,0.15,0.2,0.25,0.35"
    )]
    pub drop_off: Vec<f64>,
    /// Mean delay between two steps of a customer (lognormal); fixed shares of completions are
    /// placed within the first hour and around the +1h, +2d, +4d and 7-day due times.
    #[arg(long, value_name = "DURATION", default_value = "18h", value_parser = humantime::parse_duration)]
    pub step_delay: Duration,
    /// Share of events delivered late, after events that happened up to --max-disorder after
    /// them.
    #[arg(long, value_name = "SHARE", default_value_t = 0.05)]
    pub out_of_order: f64,
    /// Largest delivery delay of an out-of-order or duplicate event; must stay below the
    /// processor's allowed lateness (5m) so no event is late.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_disorder: Duration,
    /// Share of events delivered twice with the same event_id and content (the copy at most
    /// --max-disorder after the event occurred).
    #[arg(long, value_name = "SHARE", default_value_t = 0.02)]
    pub duplicates: f64,
    /// Share of logged-in customers who provide financials and/or references before their
    /// payment account.
    #[arg(long, value_name = "SHARE", default_value_t = 0.05)]
    pub steps_out_of_order: f64,
    /// Share of customers who never log in (existing accounts placing orders): they must
    /// never enter the journey.
    #[arg(long, value_name = "SHARE", default_value_t = 0.03)]
    pub no_login: f64,
    /// Share of logged-in customers who create a login a second time, later.
    #[arg(long, value_name = "SHARE", default_value_t = 0.02)]
    pub repeat_login: f64,
    /// Mean number of further orders of each customer who placed a second order: drawn
    /// uniformly from 0 to twice this, spaced by --step-delay, in product lines the customer
    /// already ordered until they reach the goal and in any line after. Active customers with
    /// long histories; 0 (the default) adds none, and 21 gives about 10 events per customer
    /// (at most 100).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=i64::from(MAX_REPEAT_ORDERS))
    )]
    pub repeat_orders: u8,
    /// Events per second when producing to Kafka, sent together in what is due within each
    /// 5 ms; 0 = as fast as possible. Generation itself ignores it.
    #[arg(long, value_name = "EVENTS_PER_SEC", default_value_t = 0.0)]
    pub rate: f64,
}

impl Default for LoadgenArgs {
    fn default() -> Self {
        LoadgenArgs {
            customers: 1000,
            seed: 42,
            start: DEFAULT_START_MILLIS,
            arrival_window: Duration::from_secs(24 * 3600),
            drop_off: DEFAULT_DROP_OFF.to_vec(),
            step_delay: Duration::from_secs(18 * 3600),
            out_of_order: 0.05,
            max_disorder: Duration::from_secs(60),
            duplicates: 0.02,
            steps_out_of_order: 0.05,
            no_login: 0.03,
            repeat_login: 0.02,
            repeat_orders: 0,
            rate: 0.0,
        }
    }
}

impl LoadgenArgs {
    /// Checks every argument; the error names the flag, the value and what to give instead.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let shares = [
            ("out-of-order", self.out_of_order),
            ("duplicates", self.duplicates),
            ("steps-out-of-order", self.steps_out_of_order),
            ("no-login", self.no_login),
            ("repeat-login", self.repeat_login),
        ];
        for (flag, value) in shares {
            check_probability(flag, value)?;
        }
        if self.drop_off.len() != STEPS_AFTER_LOGIN.len() {
            return Err(LoadgenError::DropOffCount {
                got: self.drop_off.len(),
            });
        }
        for &value in &self.drop_off {
            check_probability("drop-off", value)?;
        }
        if self.max_disorder >= ALLOWED_LATENESS {
            return Err(LoadgenError::DisorderTooLarge {
                max_disorder: humantime::format_duration(self.max_disorder).to_string(),
            });
        }
        if self.step_delay.as_millis() == 0 {
            return Err(LoadgenError::StepDelay);
        }
        if self.repeat_orders > MAX_REPEAT_ORDERS {
            return Err(LoadgenError::RepeatOrders {
                value: self.repeat_orders,
            });
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(LoadgenError::Rate { value: self.rate });
        }
        // Latest possible event: last arrival, six steps and the most repeated orders at their
        // longest, a repeated login at its longest, plus delivery disorder. Computed in i128 so
        // that it cannot overflow.
        let step = self.step_delay.as_millis() as i128;
        let longest_step = (step * DELAY_CAP as i128).max((ABANDON_AFTER_MS + NEAR_MS) as i128);
        let horizon = self.start as i128
            + self.arrival_window.as_millis() as i128
            + 6 * longest_step
            + 2 * i128::from(self.repeat_orders) * step * DELAY_CAP as i128
            + MINUTE_MS as i128
            + 2 * step * DELAY_CAP as i128
            + self.max_disorder.as_millis() as i128;
        if horizon > MAX_MILLIS as i128 {
            return Err(LoadgenError::OutOfRange);
        }
        Ok(())
    }
}

fn check_probability(flag: &'static str, value: f64) -> Result<(), LoadgenError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(LoadgenError::Probability { flag, value })
    }
}

/// Parses `--start` (RFC 3339, any offset) into milliseconds since the epoch.
fn parse_start(s: &str) -> Result<Millis, String> {
    parse_millis(s).map_err(|e| {
        format!("`{s}` is not an RFC 3339 timestamp ({e}); write e.g. {DEFAULT_START}")
    })
}

/// Why traffic could not be generated or written.
#[derive(Debug, Error)]
pub enum LoadgenError {
    /// A share or probability flag lies outside [0, 1] (or is not a number).
    #[error(
        "--{flag} is {value}: it is a probability and must lie between 0 and 1 (e.g. 0.05 for 5%)"
    )]
    Probability {
        /// The flag, without its dashes.
        flag: &'static str,
        /// The value given.
        value: f64,
    },
    /// `--drop-off` does not have one value per step after login.
    #[error(
        "--drop-off has {got} values: give exactly 6 comma-separated probabilities, one per step \
         after login (payment_account, financials, references, first_order, second_order, \
         additional_product_line), e.g. --drop-off 0.25,0.2,0.15,0.2,0.25,0.35"
    )]
    DropOffCount {
        /// How many values were given.
        got: usize,
    },
    /// `--max-disorder` is not below the allowed lateness, so events could be late.
    #[error(
        "--max-disorder {max_disorder} is not below the processor's allowed lateness of 5m: \
         events that far out of order would arrive behind the watermark and be counted as late \
         instead of exercising on-time out-of-order handling; give less than 5m (default 60s)"
    )]
    DisorderTooLarge {
        /// The value given, as a human-readable duration.
        max_disorder: String,
    },
    /// `--step-delay` is zero.
    #[error("--step-delay must be more than 0 (e.g. 18h)")]
    StepDelay,
    /// `--repeat-orders` is above [`MAX_REPEAT_ORDERS`].
    #[error(
        "--repeat-orders is {value}: give a mean of at most 100 further orders per customer \
         (21 gives about 10 events per customer)"
    )]
    RepeatOrders {
        /// The value given.
        value: u8,
    },
    /// `--rate` is negative or not a number.
    #[error("--rate is {value}: give events per second, 0 or more (0 = as fast as possible)")]
    Rate {
        /// The value given.
        value: f64,
    },
    /// The trace would run past the year 9999, which RFC 3339 cannot express.
    #[error(
        "the trace would run past the year 9999: choose an earlier --start or a shorter \
         --arrival-window or --step-delay"
    )]
    OutOfRange,
    /// Writing the JSON lines failed.
    #[error(
        "writing generated event #{line} as a JSON line failed; check that the output has space \
         and that its reader is still running"
    )]
    Write {
        /// 1-based number of the event that could not be written.
        line: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
}

/// Validates `args` and returns the generated events in delivery order.
///
/// Nothing is generated until the iterator is advanced; memory stays proportional to the
/// customers in flight (see the module documentation).
pub fn generate(args: &LoadgenArgs) -> Result<Traffic, LoadgenError> {
    args.validate()?;
    Ok(Traffic::new(args))
}

/// Writes `events` as JSON lines in the contract's JSON form (one [`CustomerEvent`] per line),
/// flushes `w` and returns how many lines it wrote.
pub fn write_jsonl<I>(events: I, w: &mut impl Write) -> Result<u64, LoadgenError>
where
    I: IntoIterator,
    I::Item: Borrow<CustomerEvent>,
{
    let mut written = 0u64;
    for ev in events {
        let line = written + 1;
        serde_json::to_writer(&mut *w, ev.borrow())
            .map_err(io::Error::from)
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|source| LoadgenError::Write { line, source })?;
        written = line;
    }
    w.flush().map_err(|source| LoadgenError::Write {
        line: written,
        source,
    })?;
    Ok(written)
}

/// What a generated event is; its attributes are built only when it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `login.created` with the customer's profile.
    Login { phone: u16, rep: u8, tz: u8 },
    /// `payment_account.created`.
    PaymentAccount,
    /// `financials.provided`.
    Financials,
    /// `references.provided`.
    References,
    /// `order.placed`: `order_id` `o{customer}-{n}` (journey customers) or `o{customer}-x{n}`
    /// (customers who never log in), and a product line index.
    Order { n: u8, no_login: bool, line: u8 },
}

/// Orders of the first three steps after login for `--steps-out-of-order` customers: the
/// payment account always after financials or references.
const SHUFFLED_CREDIT_STEPS: [[Kind; 3]; 4] = [
    [Kind::Financials, Kind::PaymentAccount, Kind::References],
    [Kind::Financials, Kind::References, Kind::PaymentAccount],
    [Kind::References, Kind::PaymentAccount, Kind::Financials],
    [Kind::References, Kind::Financials, Kind::PaymentAccount],
];
/// The first three steps after login in journey order.
const CREDIT_STEPS: [Kind; 3] = [Kind::PaymentAccount, Kind::Financials, Kind::References];

/// One generated, not yet delivered event: compact (48 bytes), so that many customers can be
/// in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When it is delivered; the heap's primary key.
    deliver_at: Millis,
    /// Generation order; breaks ties of `deliver_at` deterministically.
    seq: u64,
    /// Event time.
    occurred_at: Millis,
    /// Customer number `n` of `c{seed}-{n:06}`.
    customer: u64,
    /// Event number `k` of `e{seed}-{k}`.
    event_no: u64,
    /// What happened.
    kind: Kind,
}

impl Pending {
    fn key(&self) -> (Millis, u64) {
        (self.deliver_at, self.seq)
    }
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// The validated arguments, in the units generation uses.
#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    start: Millis,
    window_ms: f64,
    drop_off: [f64; 6],
    step_delay_ms: f64,
    out_of_order: f64,
    max_disorder_ms: i64,
    duplicates: f64,
    steps_out_of_order: f64,
    no_login: f64,
    repeat_login: f64,
    repeat_orders: u8,
}

/// The generated events of [`generate`], in delivery order.
///
/// Customers are generated lazily, so the iterator can be stopped at any point; it ends after
/// the last event of the last customer.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// The one random generator; consumed only while generating customers, in arrival order.
    rng: ChaCha8Rng,
    /// What to generate.
    plan: Plan,
    /// Customers still to generate after the one arriving at `next_arrival`.
    remaining: u64,
    /// Position of the last drawn arrival within the window, in [0, 1].
    arrival_fraction: f64,
    /// Arrival of the next customer to generate, if any.
    next_arrival: Option<Millis>,
    /// Number of the next customer to generate.
    next_customer: u64,
    /// Number of the next event id.
    next_event_no: u64,
    /// Next generation-order number of a pending event.
    next_seq: u64,
    /// Events generated but not yet delivered, earliest delivery first.
    pending: BinaryHeap<Reverse<Pending>>,
    /// Reused buffer for one customer's timeline.
    timeline: Vec<(Millis, Kind)>,
}

impl Traffic {
    fn new(args: &LoadgenArgs) -> Traffic {
        let mut drop_off = [0.0; 6];
        drop_off.copy_from_slice(&args.drop_off);
        let plan = Plan {
            seed: args.seed,
            start: args.start,
            window_ms: args.arrival_window.as_millis() as f64,
            drop_off,
            step_delay_ms: args.step_delay.as_millis() as f64,
            out_of_order: args.out_of_order,
            max_disorder_ms: args.max_disorder.as_millis() as i64,
            duplicates: args.duplicates,
            steps_out_of_order: args.steps_out_of_order,
            no_login: args.no_login,
            repeat_login: args.repeat_login,
            repeat_orders: args.repeat_orders,
        };
        let mut traffic = Traffic {
            rng: ChaCha8Rng::seed_from_u64(args.seed),
            plan,
            remaining: args.customers,
            arrival_fraction: 0.0,
            next_arrival: None,
            next_customer: 1,
            next_event_no: 1,
            next_seq: 0,
            pending: BinaryHeap::new(),
            timeline: Vec::new(),
        };
        traffic.next_arrival = traffic.draw_arrival();
        traffic
    }

    /// Events generated but not yet delivered: the memory the iterator holds, proportional to
    /// the customers in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Draws the next arrival: the next of `customers` sorted uniform points in the window,
    /// generated in ascending order without storing them (`1 − U^(1/remaining)` is the gap to
    /// the minimum of the remaining points).
    fn draw_arrival(&mut self) -> Option<Millis> {
        if self.remaining == 0 {
            return None;
        }
        let u = 1.0 - self.rng.random::<f64>();
        let gap = -(u.ln() / self.remaining as f64).exp_m1();
        self.arrival_fraction += (1.0 - self.arrival_fraction) * gap;
        self.remaining -= 1;
        let offset = (self.arrival_fraction.min(1.0) * self.plan.window_ms).floor() as i64;
        let at = self.plan.start + offset;
        // Never earlier than the previous arrival, whatever rounding did.
        Some(self.next_arrival.map_or(at, |prev| at.max(prev)))
    }

    /// Generates the customer arriving at `arrival` and queues their events.
    fn spawn_customer(&mut self, arrival: Millis) {
        let customer = self.next_customer;
        self.next_customer += 1;
        let mut timeline = std::mem::take(&mut self.timeline);
        timeline.clear();
        if self.rng.random_bool(self.plan.no_login) {
            no_login_timeline(&mut self.rng, &self.plan, arrival, &mut timeline);
        } else {
            journey_timeline(&mut self.rng, &self.plan, arrival, &mut timeline);
        }
        timeline.sort_by_key(|&(at, _)| at);
        let max_disorder = self.plan.max_disorder_ms;
        for &(occurred_at, kind) in &timeline {
            let event_no = self.next_event_no;
            self.next_event_no += 1;
            let delayed = max_disorder > 0 && self.rng.random_bool(self.plan.out_of_order);
            let deliver_at = if delayed {
                occurred_at + self.rng.random_range(1..=max_disorder)
            } else {
                occurred_at
            };
            let event = Pending {
                deliver_at,
                seq: 0,
                occurred_at,
                customer,
                event_no,
                kind,
            };
            self.push(event);
            if self.rng.random_bool(self.plan.duplicates) {
                let again = self
                    .rng
                    .random_range(deliver_at..=occurred_at + max_disorder);
                self.push(Pending {
                    deliver_at: again,
                    ..event
                });
            }
        }
        self.timeline = timeline;
        self.next_arrival = self.draw_arrival();
    }

    fn push(&mut self, mut event: Pending) {
        event.seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(Reverse(event));
    }

    /// Builds the contract record of a pending event.
    fn materialize(&self, p: &Pending) -> CustomerEvent {
        let seed = self.plan.seed;
        let customer_id = format!("c{seed}-{:06}", p.customer);
        let mut attributes = BTreeMap::new();
        let event_type = match p.kind {
            Kind::Login { phone, rep, tz } => {
                attributes.insert("email".to_owned(), format!("{customer_id}@example.com"));
                attributes.insert("phone".to_owned(), format!("+1612555{phone:04}"));
                attributes.insert("sales_rep".to_owned(), format!("rep-{rep}"));
                attributes.insert("tz".to_owned(), TIME_ZONES[usize::from(tz)].to_owned());
                "login.created"
            }
            Kind::PaymentAccount => "payment_account.created",
            Kind::Financials => "financials.provided",
            Kind::References => "references.provided",
            Kind::Order { n, no_login, line } => {
                let x = if no_login { "x" } else { "" };
                attributes.insert("order_id".to_owned(), format!("o{customer_id}-{x}{n}"));
                attributes.insert(
                    "product_line".to_owned(),
                    PRODUCT_LINES[usize::from(line)].to_owned(),
                );
                "order.placed"
            }
        };
        CustomerEvent {
            event_id: format!("e{seed}-{}", p.event_no),
            customer_id,
            event_type: event_type.to_owned(),
            occurred_at: p.occurred_at,
            attributes,
        }
    }
}

impl Iterator for Traffic {
    type Item = CustomerEvent;

    fn next(&mut self) -> Option<CustomerEvent> {
        loop {
            let next_delivery = self.pending.peek().map(|Reverse(p)| p.deliver_at);
            match (self.next_arrival, next_delivery) {
                // Every event of a customer is delivered at or after their arrival: generate
                // everyone who arrives before the next delivery first.
                (Some(arrival), Some(due)) if arrival <= due => self.spawn_customer(arrival),
                (Some(arrival), None) => self.spawn_customer(arrival),
                (_, Some(_)) => {
                    let Reverse(event) = self.pending.pop()?;
                    return Some(self.materialize(&event));
                }
                (None, None) => return None,
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.pending.len(), None)
    }
}

/// A customer who logs in and walks through the journey until they drop off or reach the goal.
fn journey_timeline(
    rng: &mut ChaCha8Rng,
    plan: &Plan,
    arrival: Millis,
    out: &mut Vec<(Millis, Kind)>,
) {
    let login = Kind::Login {
        phone: rng.random_range(0..10_000),
        rep: rng.random_range(1..=SALES_REPS),
        tz: rng.random_range(0..TIME_ZONES.len() as u8),
    };
    out.push((arrival, login));
    let credit_steps = if rng.random_bool(plan.steps_out_of_order) {
        SHUFFLED_CREDIT_STEPS[rng.random_range(0..SHUFFLED_CREDIT_STEPS.len())]
    } else {
        CREDIT_STEPS
    };
    let mut at = arrival;
    let mut first_line = 0;
    let mut orders = 0u8;
    let mut goal_reached = false;
    for (slot, &drop_off) in plan.drop_off.iter().enumerate() {
        if rng.random_bool(drop_off) {
            break;
        }
        let kind = match slot {
            0..=2 => credit_steps[slot],
            3 => {
                first_line = rng.random_range(0..PRODUCT_LINES.len() as u8);
                Kind::Order {
                    n: 1,
                    no_login: false,
                    line: first_line,
                }
            }
            4 => {
                let line = if rng.random_bool(SAME_LINE_SECOND_ORDER) {
                    first_line
                } else {
                    // A new product line: this order completes the second-order step and the
                    // goal at once.
                    goal_reached = true;
                    other_line(rng, first_line)
                };
                Kind::Order {
                    n: 2,
                    no_login: false,
                    line,
                }
            }
            _ => {
                goal_reached = true;
                Kind::Order {
                    n: 3,
                    no_login: false,
                    line: other_line(rng, first_line),
                }
            }
        };
        let delay = if slot == 0 && kind == Kind::PaymentAccount {
            payment_account_delay(rng, plan)
        } else {
            step_delay(rng, plan)
        };
        at += delay;
        out.push((at, kind));
        if let Kind::Order { n, .. } = kind {
            orders = n;
        }
        if goal_reached {
            break;
        }
    }
    if orders >= 2 && plan.repeat_orders > 0 {
        repeat_orders(rng, plan, (at, orders), first_line, goal_reached, out);
    }
    if rng.random_bool(plan.repeat_login) {
        let again = arrival + MINUTE_MS + lognormal_ms(rng, 2.0 * plan.step_delay_ms);
        out.push((again, login));
    }
}

/// The `--repeat-orders` of a customer whose last order, number `orders`, was at `at`: before
/// the goal only in `first_line` (a customer's orders before the goal are all in the first
/// order's line, so these complete no step), after it in any line.
fn repeat_orders(
    rng: &mut ChaCha8Rng,
    plan: &Plan,
    (mut at, orders): (Millis, u8),
    first_line: u8,
    goal_reached: bool,
    out: &mut Vec<(Millis, Kind)>,
) {
    let count = rng.random_range(0..=2 * plan.repeat_orders);
    for n in orders + 1..=orders + count {
        at += lognormal_ms(rng, plan.step_delay_ms);
        let line = if goal_reached {
            rng.random_range(0..PRODUCT_LINES.len() as u8)
        } else {
            first_line
        };
        out.push((
            at,
            Kind::Order {
                n,
                no_login: false,
                line,
            },
        ));
    }
}

/// An existing account that never logs in: a payment account now and then, and one or two
/// orders. It must never enter the journey.
fn no_login_timeline(
    rng: &mut ChaCha8Rng,
    plan: &Plan,
    arrival: Millis,
    out: &mut Vec<(Millis, Kind)>,
) {
    let mut at = arrival;
    if rng.random_bool(NO_LOGIN_PAYMENT_ACCOUNT) {
        out.push((at, Kind::PaymentAccount));
        at += lognormal_ms(rng, plan.step_delay_ms);
    }
    let orders = rng.random_range(1..=2u8);
    for n in 1..=orders {
        if n > 1 {
            at += lognormal_ms(rng, plan.step_delay_ms);
        }
        let line = rng.random_range(0..PRODUCT_LINES.len() as u8);
        out.push((
            at,
            Kind::Order {
                n,
                no_login: true,
                line,
            },
        ));
    }
}

/// A product line other than `not`, uniformly.
fn other_line(rng: &mut ChaCha8Rng, not: u8) -> u8 {
    let line = rng.random_range(0..PRODUCT_LINES.len() as u8 - 1);
    if line >= not { line + 1 } else { line }
}

/// Delay from login to the payment account when it is the first step completed.
fn payment_account_delay(rng: &mut ChaCha8Rng, plan: &Plan) -> i64 {
    let u: f64 = rng.random();
    if u < FAST_PAYMENT_ACCOUNT {
        return rng.random_range(MIN_DELAY_MS..=FAST_PAYMENT_ACCOUNT_MAX_MS);
    }
    let band = ((u - FAST_PAYMENT_ACCOUNT) / NEAR_DUE) as usize;
    match PAYMENT_ACCOUNT_DUE_MS.get(band) {
        Some(&due) => near(rng, due),
        None => lognormal_ms(rng, plan.step_delay_ms),
    }
}

/// Delay from one step to the next.
fn step_delay(rng: &mut ChaCha8Rng, plan: &Plan) -> i64 {
    if rng.random_bool(NEAR_ABANDONMENT) {
        near(rng, ABANDON_AFTER_MS)
    } else {
        lognormal_ms(rng, plan.step_delay_ms)
    }
}

/// A delay just before, just after or exactly at `due`.
fn near(rng: &mut ChaCha8Rng, due: i64) -> i64 {
    if rng.random_bool(EXACTLY_DUE) {
        return due;
    }
    let by = rng.random_range(1..=NEAR_MS);
    if rng.random_bool(0.5) {
        due - by
    } else {
        due + by
    }
}

/// A lognormal delay with the given mean (σ = [`DELAY_SIGMA`]), capped at [`DELAY_CAP`] times
/// the mean and at least [`MIN_DELAY_MS`].
fn lognormal_ms(rng: &mut ChaCha8Rng, mean_ms: f64) -> i64 {
    // Box–Muller: u1 in (0, 1] keeps the logarithm finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let mu = mean_ms.ln() - DELAY_SIGMA * DELAY_SIGMA / 2.0;
    let ms = (mu + DELAY_SIGMA * z).exp().min(DELAY_CAP * mean_ms);
    (ms as i64).max(MIN_DELAY_MS)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn args(customers: u64) -> LoadgenArgs {
        LoadgenArgs {
            customers,
            ..LoadgenArgs::default()
        }
    }

    fn events(args: &LoadgenArgs) -> Vec<CustomerEvent> {
        generate(args).expect("valid arguments").collect()
    }

    fn jsonl(args: &LoadgenArgs) -> Vec<u8> {
        let mut out = Vec::new();
        write_jsonl(generate(args).unwrap(), &mut out).unwrap();
        out
    }

    /// One customer's distinct events in event-time order, and the funnel read from them.
    #[derive(Debug, Default)]
    struct Customer {
        events: Vec<CustomerEvent>,
    }

    impl Customer {
        fn first(&self, event_type: &str) -> Option<Millis> {
            self.events
                .iter()
                .find(|e| e.event_type == event_type)
                .map(|e| e.occurred_at)
        }

        fn count(&self, event_type: &str) -> usize {
            self.events
                .iter()
                .filter(|e| e.event_type == event_type)
                .count()
        }

        fn orders(&self) -> Vec<&CustomerEvent> {
            self.events
                .iter()
                .filter(|e| e.event_type == "order.placed")
                .collect()
        }

        /// The goal: the first order whose product line no earlier order had (never the first).
        fn goal(&self) -> Option<Millis> {
            let orders = self.orders();
            (1..orders.len())
                .find(|&i| {
                    let line = &orders[i].attributes["product_line"];
                    orders[..i]
                        .iter()
                        .all(|o| &o.attributes["product_line"] != line)
                })
                .map(|i| orders[i].occurred_at)
        }

        /// Financials or references before (or without) the payment account.
        fn steps_out_of_order(&self) -> bool {
            let credit = [
                self.first("financials.provided"),
                self.first("references.provided"),
            ]
            .into_iter()
            .flatten()
            .min();
            match (credit, self.first("payment_account.created")) {
                (Some(credit), Some(pa)) => credit < pa,
                (Some(_), None) => true,
                (None, _) => false,
            }
        }
    }

    fn by_customer(events: &[CustomerEvent]) -> BTreeMap<String, Customer> {
        let mut seen = HashSet::new();
        let mut customers: BTreeMap<String, Customer> = BTreeMap::new();
        for ev in events {
            if seen.insert(ev.event_id.clone()) {
                customers
                    .entry(ev.customer_id.clone())
                    .or_default()
                    .events
                    .push(ev.clone());
            }
        }
        for c in customers.values_mut() {
            c.events.sort_by_key(|e| e.occurred_at);
        }
        customers
    }

    fn assert_near(what: &str, got: f64, want: f64, tolerance: f64) {
        assert!(
            (got - want).abs() <= tolerance,
            "{what}: got {got:.4}, want {want} ± {tolerance}"
        );
    }

    #[test]
    fn command_line_defaults_match_default() {
        let cli = Cli::try_parse_from(["loadgen"]).unwrap();
        assert_eq!(cli.args, LoadgenArgs::default());
        assert_eq!(parse_millis(DEFAULT_START).unwrap(), DEFAULT_START_MILLIS);
        cli.args.validate().unwrap();
    }

    #[test]
    fn command_line_flags_parse() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "--customers",
            "7",
            "--seed",
            "9",
            "--start",
            "2026-03-02T11:00:00+01:00",
            "--arrival-window",
            "2h",
            "--drop-off",
            "0,0.1,0.2,0.3,0.4,1",
            "--step-delay",
            "90m",
            "--out-of-order",
            "0.5",
            "--max-disorder",
            "4m 59s",
            "--duplicates",
            "0.1",
            "--steps-out-of-order",
            "0.2",
            "--no-login",
            "0.3",
            "--repeat-login",
            "0.4",
            "--repeat-orders",
            "20",
            "--rate",
            "1500.5",
        ])
        .unwrap();
        let a = cli.args;
        assert_eq!((a.customers, a.seed), (7, 9));
        assert_eq!(a.start, parse_millis("2026-03-02T10:00:00Z").unwrap());
        assert_eq!(a.arrival_window, Duration::from_secs(7200));
        assert_eq!(a.drop_off, vec![0.0, 0.1, 0.2, 0.3, 0.4, 1.0]);
        assert_eq!(a.step_delay, Duration::from_secs(5400));
        assert_eq!(a.max_disorder, Duration::from_secs(299));
        assert_eq!(a.repeat_orders, 20);
        assert_eq!(
            (
                a.out_of_order,
                a.duplicates,
                a.steps_out_of_order,
                a.no_login,
                a.repeat_login,
                a.rate
            ),
            (0.5, 0.1, 0.2, 0.3, 0.4, 1500.5)
        );
        a.validate().unwrap();
        let err = Cli::try_parse_from(["loadgen", "--start", "yesterday"]).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        let err = Cli::try_parse_from(["loadgen", "--repeat-orders", "101"]).unwrap_err();
        assert!(err.to_string().contains("101 is not in 0..=100"), "{err}");
    }

    #[test]
    fn invalid_arguments_name_the_flag_and_the_fix() {
        let cases: Vec<(LoadgenArgs, &str)> = vec![
            (
                LoadgenArgs {
                    duplicates: 1.5,
                    ..LoadgenArgs::default()
                },
                "--duplicates is 1.5",
            ),
            (
                LoadgenArgs {
                    no_login: f64::NAN,
                    ..LoadgenArgs::default()
                },
                "--no-login is NaN",
            ),
            (
                LoadgenArgs {
                    drop_off: vec![0.1, -0.2, 0.1, 0.1, 0.1, 0.1],
                    ..LoadgenArgs::default()
                },
                "--drop-off is -0.2",
            ),
            (
                LoadgenArgs {
                    drop_off: vec![0.1; 5],
                    ..LoadgenArgs::default()
                },
                "--drop-off has 5 values: give exactly 6",
            ),
            (
                LoadgenArgs {
                    max_disorder: Duration::from_secs(300),
                    ..LoadgenArgs::default()
                },
                "--max-disorder 5m is not below the processor's allowed lateness",
            ),
            (
                LoadgenArgs {
                    step_delay: Duration::ZERO,
                    ..LoadgenArgs::default()
                },
                "--step-delay must be more than 0",
            ),
            (
                LoadgenArgs {
                    rate: -1.0,
                    ..LoadgenArgs::default()
                },
                "--rate is -1",
            ),
            (
                LoadgenArgs {
                    repeat_orders: 101,
                    ..LoadgenArgs::default()
                },
                "--repeat-orders is 101: give a mean of at most 100",
            ),
            (
                LoadgenArgs {
                    start: parse_millis("9999-12-01T00:00:00Z").unwrap(),
                    ..LoadgenArgs::default()
                },
                "past the year 9999",
            ),
        ];
        for (args, want) in cases {
            let err = generate(&args).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn same_arguments_give_the_same_bytes_and_another_seed_differs() {
        let a = args(2_000);
        let first = jsonl(&a);
        assert!(!first.is_empty());
        assert_eq!(first, jsonl(&a));
        let other = jsonl(&LoadgenArgs { seed: 43, ..a });
        assert_ne!(first, other);
        let text = String::from_utf8(other).unwrap();
        assert!(text.contains(r#""customer_id":"c43-000001""#));
        assert!(text.contains(r#""event_id":"e43-1""#));
    }

    #[test]
    fn every_event_round_trips_through_json_and_follows_the_contract() {
        let generated = events(&args(3_000));
        let out = jsonl(&args(3_000));
        let text = String::from_utf8(out).unwrap();
        let parsed: Vec<CustomerEvent> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect();
        assert_eq!(parsed, generated);
        let window_end = DEFAULT_START_MILLIS + DAY_MS;
        for ev in &parsed {
            let n = ev.customer_id.strip_prefix("c42-").expect("customer id");
            assert!(n.len() >= 6 && n.parse::<u64>().is_ok(), "{ev:?}");
            assert!(ev.event_id.starts_with("e42-"), "{ev:?}");
            assert!(ev.occurred_at >= DEFAULT_START_MILLIS, "{ev:?}");
            let keys: Vec<&str> = ev.attributes.keys().map(String::as_str).collect();
            match ev.event_type.as_str() {
                "login.created" => {
                    assert_eq!(keys, ["email", "phone", "sales_rep", "tz"]);
                    let a = &ev.attributes;
                    assert_eq!(a["email"], format!("{}@example.com", ev.customer_id));
                    let digits = a["phone"].strip_prefix("+1612555").expect("E.164 phone");
                    assert!(digits.len() == 4 && digits.parse::<u16>().is_ok(), "{ev:?}");
                    let rep: u8 = a["sales_rep"]
                        .strip_prefix("rep-")
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!((1..=SALES_REPS).contains(&rep), "{ev:?}");
                    assert!(TIME_ZONES.contains(&a["tz"].as_str()), "{ev:?}");
                }
                "payment_account.created" | "financials.provided" | "references.provided" => {
                    assert!(keys.is_empty(), "{ev:?}");
                }
                "order.placed" => {
                    assert_eq!(keys, ["order_id", "product_line"]);
                    let prefix = format!("o{}-", ev.customer_id);
                    assert!(ev.attributes["order_id"].starts_with(&prefix), "{ev:?}");
                    let line = ev.attributes["product_line"].as_str();
                    assert!(PRODUCT_LINES.contains(&line), "{ev:?}");
                }
                other => panic!("unexpected event type {other}"),
            }
        }
        // Logged-in customers log in first; everyone arrives within the window.
        for (id, c) in by_customer(&parsed) {
            let first = &c.events[0];
            assert!(
                first.occurred_at <= window_end,
                "{id} arrives after the window"
            );
            if c.count("login.created") > 0 {
                assert_eq!(first.event_type, "login.created", "{id}: {:?}", c.events);
            }
            let order_ids: HashSet<&str> = c
                .orders()
                .iter()
                .map(|o| o.attributes["order_id"].as_str())
                .collect();
            assert_eq!(order_ids.len(), c.count("order.placed"), "{id}");
        }
    }

    #[test]
    fn event_ids_are_unique_except_duplicates_with_identical_content() {
        let all = events(&args(5_000));
        let mut by_id: HashMap<&str, &CustomerEvent> = HashMap::new();
        let mut duplicates = 0;
        for ev in &all {
            if let Some(earlier) = by_id.insert(&ev.event_id, ev) {
                assert_eq!(earlier, ev, "a duplicate must repeat the event exactly");
                duplicates += 1;
            }
        }
        assert!(duplicates > 0, "the default trace has duplicates");
        // Event numbers are dense: 1..=distinct.
        let mut numbers: Vec<u64> = by_id
            .keys()
            .map(|id| id.strip_prefix("e42-").unwrap().parse().unwrap())
            .collect();
        numbers.sort_unstable();
        assert!(numbers.iter().copied().eq(1..=numbers.len() as u64));
        // A duplicated event is delivered exactly twice.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for ev in &all {
            *counts.entry(&ev.event_id).or_default() += 1;
        }
        assert!(counts.values().all(|&n| n <= 2));
    }

    #[test]
    fn disorder_stays_within_max_disorder() {
        for max_disorder in [
            Duration::ZERO,
            Duration::from_secs(60),
            Duration::from_secs(299),
        ] {
            let a = LoadgenArgs {
                customers: 5_000,
                max_disorder,
                out_of_order: 0.2,
                duplicates: 0.1,
                ..LoadgenArgs::default()
            };
            let bound = max_disorder.as_millis() as i64;
            let mut max_seen = Millis::MIN;
            let mut behind = 0;
            for ev in generate(&a).unwrap() {
                assert!(
                    ev.occurred_at >= max_seen.saturating_sub(bound),
                    "{ev:?} is {} ms behind, more than {bound} ms",
                    max_seen - ev.occurred_at
                );
                if ev.occurred_at < max_seen {
                    behind += 1;
                }
                max_seen = max_seen.max(ev.occurred_at);
            }
            if bound == 0 {
                assert_eq!(behind, 0, "no disorder without --max-disorder");
            } else {
                assert!(behind > 100, "only {behind} events out of order");
            }
        }
    }

    #[test]
    fn shares_follow_the_configuration_on_20k_customers() {
        let all = events(&args(20_000));
        let customers = by_customer(&all);
        assert_eq!(customers.len(), 20_000);
        let distinct = customers.values().map(|c| c.events.len()).sum::<usize>();

        // Duplicates: a share of distinct events.
        let duplicates = all.len() - distinct;
        assert_near(
            "duplicates",
            duplicates as f64 / distinct as f64,
            0.02,
            0.004,
        );

        // Out of order: first deliveries behind an event that occurred later. Only an event
        // overtaken by one that occurred within its delay shows, so a little below 5 %.
        let mut seen = HashSet::new();
        let mut max_seen = Millis::MIN;
        let mut behind = 0;
        for ev in &all {
            if seen.insert(&ev.event_id) {
                if ev.occurred_at < max_seen {
                    behind += 1;
                }
                max_seen = max_seen.max(ev.occurred_at);
            }
        }
        let behind = behind as f64 / distinct as f64;
        assert!(
            (0.025..=0.055).contains(&behind),
            "out of order: {behind:.4}"
        );

        // No login, repeated login.
        let logged_in: Vec<&Customer> = customers
            .values()
            .filter(|c| c.count("login.created") > 0)
            .collect();
        let no_login = 1.0 - logged_in.len() as f64 / customers.len() as f64;
        assert_near("no-login", no_login, 0.03, 0.006);
        let repeated = logged_in
            .iter()
            .filter(|c| c.count("login.created") == 2)
            .count();
        assert!(logged_in.iter().all(|c| c.count("login.created") <= 2));
        assert_near(
            "repeat-login",
            repeated as f64 / logged_in.len() as f64,
            0.02,
            0.005,
        );

        // Steps out of order: visible once the first shuffled step is completed (75 %).
        let shuffled = logged_in.iter().filter(|c| c.steps_out_of_order()).count();
        assert_near(
            "steps-out-of-order",
            shuffled as f64 / logged_in.len() as f64,
            0.05 * 0.75,
            0.008,
        );

        // Drop-off per step, on customers who kept the journey's order.
        let in_order: Vec<&&Customer> = logged_in
            .iter()
            .filter(|c| !c.steps_out_of_order())
            .collect();
        let reached = |has: &dyn Fn(&Customer) -> bool| in_order.iter().filter(|c| has(c)).count();
        let funnel = [
            in_order.len(),
            reached(&|c| c.first("payment_account.created").is_some()),
            reached(&|c| c.first("financials.provided").is_some()),
            reached(&|c| c.first("references.provided").is_some()),
            reached(&|c| !c.orders().is_empty()),
            reached(&|c| c.orders().len() >= 2),
            reached(&|c| c.goal().is_some()),
        ];
        // The second order is itself the goal 20 % of the time.
        let goal_given_second = (1.0 - SAME_LINE_SECOND_ORDER) + SAME_LINE_SECOND_ORDER * 0.65;
        let want = [0.75, 0.8, 0.85, 0.8, 0.75, goal_given_second];
        for (step, want) in want.into_iter().enumerate() {
            let got = funnel[step + 1] as f64 / funnel[step] as f64;
            assert_near(STEPS_AFTER_LOGIN[step], got, want, 0.03);
        }

        // Second orders mostly keep the first order's product line.
        let seconds: Vec<bool> = in_order
            .iter()
            .filter_map(|c| {
                let o = c.orders();
                (o.len() >= 2)
                    .then(|| o[0].attributes["product_line"] == o[1].attributes["product_line"])
            })
            .collect();
        let same = seconds.iter().filter(|&&s| s).count() as f64 / seconds.len() as f64;
        assert_near("second order in the same line", same, 0.8, 0.03);

        // Customers who never log in still do things, just never a login.
        let silent: Vec<&Customer> = customers
            .values()
            .filter(|c| c.count("login.created") == 0)
            .collect();
        assert!(silent.iter().all(|c| !c.orders().is_empty()));
        assert!(silent.iter().all(|c| {
            c.orders()
                .iter()
                .all(|o| o.attributes["order_id"].contains("-x"))
        }));
    }

    #[test]
    fn repeat_orders_follow_a_second_order_and_complete_no_step() {
        let a = LoadgenArgs {
            repeat_orders: 10,
            ..args(20_000)
        };
        let customers = by_customer(&events(&a));
        let journey: Vec<&Customer> = customers
            .values()
            .filter(|c| c.count("login.created") > 0)
            .collect();
        // Further orders only after a second one: the funnel up to it is the default's.
        let ordered = journey.iter().filter(|c| !c.orders().is_empty()).count();
        let active: Vec<&&Customer> = journey.iter().filter(|c| c.orders().len() >= 2).collect();
        assert_near(
            "second order",
            active.len() as f64 / ordered as f64,
            0.75,
            0.03,
        );
        let mut extras = Vec::new();
        let mut goals = 0;
        for c in &active {
            let orders = c.orders();
            let numbers: Vec<u32> = orders
                .iter()
                .map(|o| {
                    o.attributes["order_id"]
                        .rsplit('-')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            assert!(
                numbers.iter().enumerate().all(|(i, &n)| n == i as u32 + 1),
                "orders numbered in time order: {numbers:?}"
            );
            // The onboarding orders end with the goal, or with the second order when the goal
            // was dropped; every order before the goal is in the first order's line.
            let onboarding = match c.goal() {
                Some(at) => {
                    goals += 1;
                    orders.iter().position(|o| o.occurred_at == at).unwrap() + 1
                }
                None => 2,
            };
            let first_line = &orders[0].attributes["product_line"];
            assert!(
                orders[..onboarding - 1]
                    .iter()
                    .all(|o| &o.attributes["product_line"] == first_line)
            );
            assert!(onboarding <= 3, "the goal is the second or third order");
            extras.push(orders.len() - onboarding);
        }
        // The goal is reached as often as without further orders: they complete nothing.
        let goal_given_second = (1.0 - SAME_LINE_SECOND_ORDER) + SAME_LINE_SECOND_ORDER * 0.65;
        assert_near(
            "goal after a second order",
            goals as f64 / active.len() as f64,
            goal_given_second,
            0.03,
        );
        let mean = extras.iter().sum::<usize>() as f64 / extras.len() as f64;
        assert_near("further orders per active customer", mean, 10.0, 0.4);
        assert_eq!(extras.iter().max(), Some(&20), "0 to 2N further orders");
        assert_eq!(extras.iter().min(), Some(&0));
    }

    #[test]
    fn no_login_customers_have_no_login_and_everyone_else_starts_with_one() {
        let a = LoadgenArgs {
            customers: 4_000,
            no_login: 0.5,
            ..LoadgenArgs::default()
        };
        let customers = by_customer(&events(&a));
        let mut silent = 0;
        for (id, c) in &customers {
            let logins = c.count("login.created");
            if c.events[0].event_type == "login.created" {
                assert!((1..=2).contains(&logins), "{id}");
            } else {
                assert_eq!(logins, 0, "{id}: {:?}", c.events);
                silent += 1;
            }
        }
        assert_near("no-login", silent as f64 / 4_000.0, 0.5, 0.04);
        let none = LoadgenArgs {
            no_login: 0.0,
            ..a.clone()
        };
        assert!(
            by_customer(&events(&none))
                .values()
                .all(|c| c.count("login.created") > 0)
        );
    }

    #[test]
    fn payment_accounts_cluster_around_the_journeys_due_times() {
        let customers = by_customer(&events(&args(20_000)));
        let mut delays = Vec::new();
        let mut after_payment_account = Vec::new();
        for c in customers.values().filter(|c| !c.steps_out_of_order()) {
            let (Some(login), Some(pa)) =
                (c.first("login.created"), c.first("payment_account.created"))
            else {
                continue;
            };
            delays.push(pa - login);
            if let Some(fin) = c.first("financials.provided") {
                after_payment_account.push(fin - pa);
            }
        }
        let within_hour = delays.iter().filter(|&&d| d < HOUR_MS).count() as f64;
        assert_near(
            "within the first hour",
            within_hour / delays.len() as f64,
            0.15,
            0.02,
        );
        let around = |delays: &[i64], due: i64| {
            let before = delays
                .iter()
                .filter(|&&d| (due - NEAR_MS..due).contains(&d))
                .count();
            let at = delays.iter().filter(|&&d| d == due).count();
            let after = delays
                .iter()
                .filter(|&&d| (due + 1..=due + NEAR_MS).contains(&d))
                .count();
            (before, at, after)
        };
        for due in PAYMENT_ACCOUNT_DUE_MS {
            let (before, at, after) = around(&delays, due);
            assert!(
                before > 100 && after > 100 && at > 5,
                "{due}: {before}/{at}/{after}"
            );
        }
        let (before, at, after) = around(&after_payment_account, ABANDON_AFTER_MS);
        assert!(
            before > 100 && after > 100 && at > 5,
            "7d: {before}/{at}/{after}"
        );
    }

    #[test]
    fn in_flight_events_stay_proportional_to_customers_in_flight() {
        // Arrivals over a year: only the last couple of weeks' customers can be in flight.
        let a = LoadgenArgs {
            customers: 20_000,
            arrival_window: Duration::from_secs(365 * 86_400),
            ..LoadgenArgs::default()
        };
        let mut traffic = generate(&a).unwrap();
        let (mut total, mut peak) = (0usize, 0usize);
        while traffic.next().is_some() {
            total += 1;
            peak = peak.max(traffic.in_flight());
        }
        assert!(total > 60_000, "{total}");
        assert!(peak * 20 < total, "peak {peak} of {total} events in flight");
        assert_eq!(traffic.in_flight(), 0);
    }

    #[test]
    fn zero_customers_yield_nothing_and_extreme_shares_work() {
        assert_eq!(generate(&args(0)).unwrap().count(), 0);
        let mut out = Vec::new();
        assert_eq!(
            write_jsonl(generate(&args(0)).unwrap(), &mut out).unwrap(),
            0
        );
        assert!(out.is_empty());
        // Everybody completes everything, every event duplicated and out of order.
        let a = LoadgenArgs {
            customers: 300,
            drop_off: vec![0.0; 6],
            out_of_order: 1.0,
            duplicates: 1.0,
            no_login: 0.0,
            repeat_login: 0.0,
            steps_out_of_order: 0.0,
            ..LoadgenArgs::default()
        };
        let all = events(&a);
        let customers = by_customer(&all);
        assert_eq!(
            all.len(),
            2 * customers.values().map(|c| c.events.len()).sum::<usize>()
        );
        assert!(customers.values().all(|c| c.goal().is_some()));
        // Everybody drops right after login.
        let a = LoadgenArgs {
            drop_off: vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            ..a
        };
        assert!(events(&a).iter().all(|e| e.event_type == "login.created"));
    }

    #[test]
    fn write_errors_name_the_failing_line() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = write_jsonl(generate(&args(3)).unwrap(), &mut Full).unwrap_err();
        assert!(
            matches!(err, LoadgenError::Write { line: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("event #1"), "{err}");
    }
}
