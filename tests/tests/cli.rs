//! The command line without a broker: invalid journey and config files stop start-up with a
//! message naming file, line and field; `--help` teaches.

use std::process::Command;

use waymark_e2e::*;

fn waymark(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(waymark_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn journeys_check_accepts_the_reference_journey() {
    let (ok, stdout, _) = waymark(&["journeys", "check", reference_journey().to_str().unwrap()]);
    assert!(ok);
    assert!(
        stdout.contains("b2b-onboarding v1") && stdout.contains("7 steps"),
        "{stdout}"
    );
}

#[test]
fn an_invalid_journey_stops_run_before_it_connects_and_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(reference_journey())
        .unwrap()
        .replace("after: login", "after: logn");
    std::fs::write(&bad, text).unwrap();
    let (ok, _, stderr) = waymark(&["journeys", "check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("bad.yaml:")
            && stderr.contains("rules[0].after")
            && stderr.contains("unknown step `logn`"),
        "{stderr}"
    );
    // `run` refuses the same file at start-up (no broker is listening on port 1).
    let (ok, _, stderr) = waymark(&[
        "run",
        "--brokers",
        "127.0.0.1:1",
        "--journeys",
        bad.to_str().unwrap(),
        "--state-dir",
        dir.path().join("s").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("rules[0].after"), "{stderr}");
}

#[test]
fn an_unknown_config_key_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("waymark.yaml");
    std::fs::write(
        &cfg,
        "kafka:\n  brokers: 127.0.0.1:1\ncommit-interval: 100\n",
    )
    .unwrap();
    let (ok, _, stderr) = waymark(&["--config", cfg.to_str().unwrap(), "run"]);
    assert!(!ok);
    assert!(
        stderr.contains("waymark.yaml:3:") && stderr.contains("commit-interval"),
        "{stderr}"
    );
}

#[test]
fn help_lists_every_command() {
    let (ok, stdout, _) = waymark(&["--help"]);
    assert!(ok);
    for cmd in [
        "run", "simulate", "journeys", "produce", "tail", "loadgen", "topics", "state",
    ] {
        assert!(stdout.contains(cmd), "--help lacks {cmd}:\n{stdout}");
    }
}

/// The subcommands a `--help` text lists under "Commands:" (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line starts at two spaces; wrapped descriptions are indented further.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_commands_help_is_plain_text_for_the_terminal() {
    // Doc comments become `--help` text: rustdoc's link syntax must not leak into it.
    let mut pending = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (ok, stdout, stderr) = waymark(&args);
        assert!(ok, "waymark {} failed: {stderr}", args.join(" "));
        for (n, line) in stdout.lines().enumerate() {
            assert!(
                !line.contains("[`") && !line.contains("`]"),
                "waymark {} line {}: rustdoc link syntax in the help text: {line}",
                args.join(" "),
                n + 1
            );
        }
        seen += 1;
        for sub in subcommands(&stdout) {
            let mut next = path.clone();
            next.push(sub);
            pending.push(next);
        }
    }
    // The top level, its 12 commands and their subcommands.
    assert!(seen > 15, "walked only {seen} help texts");
}

/// `simulate` of the reference journey over the golden trace, up to its `until`.
fn golden_simulate_args() -> Vec<String> {
    let golden = golden_dir();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("expected.json")).unwrap())
            .unwrap();
    [
        "simulate",
        "--journeys",
        reference_journey().to_str().unwrap(),
        "--events",
        golden.join("events.jsonl").to_str().unwrap(),
        "--until",
        expected["until"].as_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn simulate_is_deterministic_byte_for_byte() {
    let args = golden_simulate_args();
    let run = || Command::new(waymark_bin()).args(&args).output().unwrap();
    let (a, b) = (run(), run());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(
        a.stdout.len() > 100_000,
        "golden output should be substantial"
    );
    assert!(
        a.stdout == b.stdout,
        "two runs of simulate on the same input differ"
    );
}

/// A long `simulate` says how far it got on stderr, and saying so changes nothing in the
/// output. `--progress-every 1ns` logs at every chunk of 1,024 lines: the golden trace has two.
#[test]
fn simulate_logs_progress_without_changing_its_output() {
    let simulate = golden_simulate_args();
    let run = |every: &str| {
        let mut args = vec!["--log-level", "info"];
        args.extend(simulate.iter().map(String::as_str));
        args.extend(["--progress-every", every]);
        waymark(&args)
    };
    let (ok, logged, stderr) = run("1ns");
    assert!(ok, "{stderr}");
    let second = stderr
        .lines()
        .find(|l| l.contains("Reading events.") && l.contains("lines=1024"))
        .unwrap_or_else(|| panic!("no progress line after the first 1,024 lines:\n{stderr}"));
    assert!(second.contains("watermark=2026-"), "{second}");
    assert!(second.contains("events_per_sec="), "{second}");
    let (ok, quiet, stderr) = run("0s");
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("Reading events."),
        "0s must not log progress:\n{stderr}"
    );
    assert!(stderr.contains("simulate: 1449 events"), "{stderr}");
    assert!(logged == quiet, "progress lines changed the output");
}

/// `waymark backtest` on a loadgen trace: a candidate that sends the invite after 15 minutes
/// and never calls reports the calls gone, at least as many invites, the same funnel, and the
/// contact-center cost saved at the price given; `--json` carries the same numbers.
#[test]
fn backtest_reports_what_a_candidate_journey_would_have_done_on_a_loadgen_trace() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let (ok, _, stderr) = waymark(&[
        "loadgen",
        "--customers",
        "800",
        "--output",
        trace.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(reference_journey()).unwrap();
    let call = text.find("      - id: sales-rep-call").unwrap();
    let candidate = dir.path().join("candidate.yaml");
    std::fs::write(
        &candidate,
        text[..call]
            .replace("delay: 1h", "delay: 15m")
            .replace("version: 1", "version: 2"),
    )
    .unwrap();
    let reference = reference_journey();
    let args = [
        "backtest",
        "--journey",
        reference.to_str().unwrap(),
        "--against",
        candidate.to_str().unwrap(),
        "--events",
        trace.to_str().unwrap(),
        "--until",
        "2026-03-01T00:00:00Z",
        "--cost",
        "contact-center=5",
    ];
    let (ok, table, stderr) = waymark(&args);
    assert!(ok, "{stderr}");
    let row = |what: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no row `{what}` in\n{table}"));
        line[what.len() + 2..]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let calls = row("b2b-onboarding sales-rep-call (contact-center)");
    assert_eq!(calls[1], "0", "{table}");
    assert_eq!(calls[2], "-100.0%", "{table}");
    let invites = row("b2b-onboarding invite-email (email)");
    let (a, b): (u64, u64) = (invites[0].parse().unwrap(), invites[1].parse().unwrap());
    assert!(b >= a && a > 0, "{table}");
    assert!(
        table.contains("customers whose commands change:"),
        "{table}"
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (ok, json, stderr) = waymark(&json_args);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    for step in report["funnel"].as_array().unwrap() {
        assert_eq!(step["a"], step["b"], "{step}");
    }
    let cc = report["cost"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "contact-center")
        .unwrap();
    let saved = cc["cost_a"].as_f64().unwrap() - cc["cost_b"].as_f64().unwrap();
    assert_eq!(saved, calls[0].parse::<f64>().unwrap() * 5.0);
}
