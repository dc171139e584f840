//! The analytics view on the real broker: `waymark analytics serve` reads what `waymark run`
//! committed to journey-events, and its funnel, drill-down and timelines equal what is counted
//! independently from `waymark simulate` on the same loadgen trace; a restart resumes without
//! counting anything twice; the dashboard, rendered by headless Chromium, shows the API's
//! numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use waymark_e2e::*;

const JOURNEY: &str = "b2b-onboarding";

/// What the funnel should say, counted from simulate's output in output order.
#[derive(Debug, Default)]
struct Expected {
    entered: u64,
    goal: u64,
    /// Per step: completed, abandoned, recovered.
    steps: BTreeMap<String, (u64, u64, u64)>,
    /// Per step: customers whose current step it is, window open / stalled.
    at: BTreeMap<String, BTreeSet<String>>,
    stalled: BTreeMap<String, BTreeSet<String>>,
    /// Commands sent, per action.
    sent: BTreeMap<String, u64>,
    journey_events: u64,
    /// Journey events per customer.
    per_customer: BTreeMap<String, u64>,
}

fn expected(simulated: &[Value], steps: &[&str]) -> Expected {
    let mut e = Expected::default();
    #[derive(Default)]
    struct C {
        completed: BTreeSet<String>,
        abandoned: BTreeSet<String>,
        goal: bool,
    }
    let mut customers: BTreeMap<String, C> = BTreeMap::new();
    for v in simulated.iter().filter(|v| v["kind"] == "journey_event") {
        e.journey_events += 1;
        let customer = v["customer_id"].as_str().unwrap().to_owned();
        *e.per_customer.entry(customer.clone()).or_default() += 1;
        let c = customers.entry(customer).or_default();
        let step = v["step"].as_str().unwrap_or_default().to_owned();
        match v["type"].as_str().unwrap() {
            "entered" => e.entered += 1,
            "step_completed" => {
                let row = e.steps.entry(step.clone()).or_default();
                row.0 += 1;
                if c.abandoned.contains(&step) {
                    row.2 += 1;
                }
                c.completed.insert(step);
            }
            "step_abandoned" => {
                e.steps.entry(step.clone()).or_default().1 += 1;
                c.abandoned.insert(step);
            }
            "goal_reached" => {
                e.goal += 1;
                c.goal = true;
            }
            "command_emitted" => {
                *e.sent
                    .entry(v["action"].as_str().unwrap().to_owned())
                    .or_default() += 1
            }
            _ => {}
        }
    }
    for (id, c) in &customers {
        if c.goal {
            continue;
        }
        if let Some(step) = steps.iter().find(|s| !c.completed.contains(**s)) {
            let bucket = if c.abandoned.contains(*step) {
                &mut e.stalled
            } else {
                &mut e.at
            };
            bucket
                .entry(step.to_string())
                .or_default()
                .insert(id.clone());
        }
    }
    e
}

/// Every customer at (or stalled at) a step, through the paged drill-down, `page` at a time.
fn drill_down(addr: &str, step: &str, standing: &str, page: usize) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/journeys/{JOURNEY}/steps/{step}/customers?standing={standing}&limit={page}"
        );
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let body = get_json(addr, &path);
        let customers = body["customers"].as_array().unwrap();
        assert!(customers.len() <= page);
        for c in customers {
            assert!(
                all.insert(c["customer_id"].as_str().unwrap().to_owned()),
                "{c} twice"
            );
        }
        match body["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return all,
        }
    }
}

fn check_funnel(funnel: &Value, e: &Expected, steps: &[&str]) {
    assert_eq!(funnel["entered"], e.entered, "entered");
    assert_eq!(funnel["completed"], e.goal, "completed");
    assert_eq!(funnel["active"], e.entered - e.goal, "active");
    let rows = funnel["steps"].as_array().unwrap();
    assert_eq!(rows.len(), steps.len());
    for (row, step) in rows.iter().zip(steps) {
        assert_eq!(row["step"], *step);
        let (completed, abandoned, recovered) = e.steps.get(*step).copied().unwrap_or_default();
        let n = |m: &BTreeMap<String, BTreeSet<String>>| m.get(*step).map_or(0, |s| s.len());
        assert_eq!(row["completed"], completed, "completed {step}");
        assert_eq!(row["abandoned"], abandoned, "abandoned {step}");
        assert_eq!(row["recovered"], recovered, "recovered {step}");
        assert_eq!(row["at"], n(&e.at), "at {step}");
        assert_eq!(row["stalled"], n(&e.stalled), "stalled at {step}");
    }
    for a in funnel["actions"].as_array().unwrap() {
        let action = a["action"].as_str().unwrap();
        assert_eq!(
            a["sent"],
            e.sent.get(action).copied().unwrap_or(0),
            "sent {action}"
        );
    }
    assert_eq!(
        funnel["actions"].as_array().unwrap().len(),
        e.sent.len(),
        "one row per action sent"
    );
}

/// Renders the dashboard in real headless Chromium (`scripts/browser.py` drives it over the
/// DevTools protocol) once its script has loaded the funnel and received a live tick; returns
/// the DOM, and saves a screenshot to `screenshot`.
fn render_dashboard(url: &str, screenshot: &std::path::Path) -> String {
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/browser.py"))
        .arg(url)
        .args([
            "--wait-for",
            "document.body.dataset.loaded === 'true' && Number(document.body.dataset.ticks || 0) >= 1",
            "--screenshot",
        ])
        .arg(screenshot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the dashboard did not render in Chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number in the element carrying `attrs` (e.g. `data-step="login" data-field="at"`).
fn number_in(dom: &str, attrs: &str) -> u64 {
    let at = dom
        .find(attrs)
        .unwrap_or_else(|| panic!("no element with {attrs} in the rendered page:\n{dom}"));
    let text = &dom[at..];
    let text = &text[text.find('>').unwrap() + 1..];
    let text = &text[..text.find('<').unwrap()];
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{attrs} shows {text:?}, not a number"))
}

fn screenshot_path() -> PathBuf {
    let dir = std::env::var_os("WAYMARK_ARTIFACTS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/waymark/artifacts")
        },
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("dashboard.png")
}

#[test]
fn the_view_equals_simulate_survives_a_restart_and_the_dashboard_shows_it() {
    let scenario = Scenario::new("analytics", 3, "").unwrap();
    let events = scenario.loadgen("1500", "11");
    let processor = scenario.start().unwrap();
    let simulated = simulate_file(&events, now_millis()).unwrap();
    scenario
        .await_outputs(simulated.len(), Duration::from_secs(180))
        .unwrap();
    let journeys = waymark::journey::JourneySet::load(&reference_journey()).unwrap();
    let journey = journeys.iter().find(|j| j.name == JOURNEY).unwrap();
    let step_ids: Vec<&str> = journey.steps.iter().map(|s| s.id.as_str()).collect();
    let steps = step_ids.as_slice();
    let e = expected(&simulated, steps);
    assert!(
        e.goal > 0 && !e.stalled.is_empty() && !e.sent.is_empty(),
        "{e:?}"
    );

    let view = scenario.start_analytics("a").unwrap();
    let addr = view.http_addr().to_owned();
    let info = await_view(&addr, e.journey_events, Duration::from_secs(120));
    assert_eq!(info["partitions"], serde_json::json!([0, 1, 2]));
    let funnel = get_json(&addr, &format!("/api/journeys/{JOURNEY}/funnel"));
    check_funnel(&funnel, &e, steps);

    // Drill-down: paging through each step returns exactly the customers standing there.
    for &step in steps {
        for (standing, want) in [("at", &e.at), ("abandoned", &e.stalled)] {
            let got = drill_down(&addr, step, standing, 37);
            assert_eq!(
                &got,
                want.get(step).unwrap_or(&BTreeSet::new()),
                "{standing} {step}"
            );
        }
    }
    // A customer's timeline holds every journey event of theirs, reasons included.
    let (customer, n) = e
        .per_customer
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(c, n)| (c.clone(), *n))
        .unwrap();
    let timeline = get_json(&addr, &format!("/api/customers/{customer}/timeline"));
    let tl = &timeline["journeys"][0];
    assert_eq!(tl["journey"], JOURNEY);
    assert_eq!(tl["events"].as_array().unwrap().len() as u64, n);
    let unknown = http_get(&addr, "/api/customers/nobody-at-all/timeline").unwrap_err();
    assert!(unknown.to_string().contains("404"), "{unknown}");

    // The terminal view of the same funnel.
    let cli = analytics_cli(&addr, &["funnel", JOURNEY]);
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        table.starts_with(&format!("{JOURNEY} v1: {} entered", e.entered)),
        "{table}"
    );

    // The live stream sends ticks with every funnel.
    let tick = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /api/live HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = String::new();
        while !got.contains("\n\n") || !got.contains("data:") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "stream closed: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got
    };
    assert!(
        tick.contains("text/event-stream") && tick.contains("event: tick"),
        "{tick}"
    );
    let data: Value =
        serde_json::from_str(tick.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(data["funnels"][0]["entered"], e.entered);
    assert_eq!(data["journey_events_total"], e.journey_events);

    let metrics = view.metrics().unwrap();
    let applied = format!(
        "waymark_analytics_journey_events_total{{result=\"applied\"}} {}",
        e.journey_events
    );
    assert!(metrics.contains(&applied), "{applied} missing:\n{metrics}");

    // The dashboard in a real browser shows the API's numbers, and a screenshot is kept.
    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    let dom = render_dashboard(&format!("http://{addr}/"), &shot);
    assert_eq!(number_in(&dom, "data-kpi=\"entered\""), e.entered);
    assert_eq!(number_in(&dom, "data-kpi=\"completed\""), e.goal);
    for row in funnel["steps"].as_array().unwrap() {
        let step = row["step"].as_str().unwrap();
        for field in ["completed", "at", "stalled", "abandoned", "recovered"] {
            assert_eq!(
                number_in(
                    &dom,
                    &format!("data-step=\"{step}\" data-field=\"{field}\"")
                ),
                row[field].as_u64().unwrap(),
                "{field} of {step} on the page"
            );
        }
    }
    for a in funnel["actions"].as_array().unwrap() {
        let action = a["action"].as_str().unwrap();
        assert_eq!(
            number_in(
                &dom,
                &format!("data-action=\"{action}\" data-field=\"sent\"")
            ),
            a["sent"].as_u64().unwrap()
        );
    }
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());

    // A restart resumes after what it stored: nothing is counted twice.
    view.stop();
    let view = scenario.start_analytics("a").unwrap();
    let addr = view.http_addr().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = get_json(&addr, "/api/instance");
        if info["caught_up"] == true || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    // Caught up without reading anything again: the totals count what this process read.
    assert_eq!(info["partitions"], serde_json::json!([0, 1, 2]), "{info}");
    assert_eq!(info["journey_events_total"], 0, "{info}");
    let again = get_json(&addr, &format!("/api/journeys/{JOURNEY}/funnel"));
    assert_eq!(again, funnel);
    view.stop();
    processor.stop();
}

/// Two instances share journey-events' partitions like two processors share customer-events':
/// each serves the funnel of the partitions it owns, and together they count everything once.
#[test]
fn two_instances_split_the_partitions_and_their_funnels_add_up() {
    let scenario = Scenario::new("analytics-two", 4, "").unwrap();
    let events = scenario.loadgen("600", "5");
    let processor = scenario.start().unwrap();
    let simulated = simulate_file(&events, now_millis()).unwrap();
    scenario
        .await_outputs(simulated.len(), Duration::from_secs(120))
        .unwrap();
    processor.stop();
    let journeys = waymark::journey::JourneySet::load(&reference_journey()).unwrap();
    let journey = journeys.iter().find(|j| j.name == JOURNEY).unwrap();
    let steps: Vec<&str> = journey.steps.iter().map(|s| s.id.as_str()).collect();
    let e = expected(&simulated, &steps);

    let a = scenario.start_analytics("a").unwrap();
    let b = scenario.start_analytics("b").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (ia, ib) = loop {
        let ia = get_json(a.http_addr(), "/api/instance");
        let ib = get_json(b.http_addr(), "/api/instance");
        let owned = |i: &Value| i["partitions"].as_array().map_or(0, |p| p.len());
        let split = owned(&ia) > 0 && owned(&ib) > 0 && owned(&ia) + owned(&ib) == 4;
        if split && ia["caught_up"] == true && ib["caught_up"] == true {
            let read = ia["journey_events_total"].as_u64().unwrap()
                + ib["journey_events_total"].as_u64().unwrap();
            // b's join moved partitions a had read: their events were read twice in all,
            // but each partition's view is on one instance only.
            if read >= e.journey_events {
                break (ia, ib);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the two views did not split the partitions: {ia} {ib}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let mut partitions: Vec<u64> = [&ia, &ib]
        .iter()
        .flat_map(|i| {
            i["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap())
        })
        .collect();
    partitions.sort();
    assert_eq!(partitions, [0, 1, 2, 3]);
    let fa = get_json(a.http_addr(), &format!("/api/journeys/{JOURNEY}/funnel"));
    let fb = get_json(b.http_addr(), &format!("/api/journeys/{JOURNEY}/funnel"));
    let sum = |k: &str| fa[k].as_u64().unwrap() + fb[k].as_u64().unwrap();
    assert_eq!(sum("entered"), e.entered);
    assert_eq!(sum("completed"), e.goal);
    assert!(
        fa["entered"].as_u64().unwrap() < e.entered,
        "a serves a share only"
    );
    for (i, step) in steps.iter().enumerate() {
        let n = |f: &Value, k: &str| f["steps"][i][k].as_u64().unwrap();
        let (completed, abandoned, _) = e.steps.get(*step).copied().unwrap_or_default();
        assert_eq!(
            n(&fa, "completed") + n(&fb, "completed"),
            completed,
            "{step}"
        );
        assert_eq!(
            n(&fa, "abandoned") + n(&fb, "abandoned"),
            abandoned,
            "{step}"
        );
        let stalled = e.stalled.get(*step).map_or(0, |s| s.len() as u64);
        assert_eq!(n(&fa, "stalled") + n(&fb, "stalled"), stalled, "{step}");
    }
    a.stop();
    b.stop();
}
