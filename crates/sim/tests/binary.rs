//! The `shoal-sim` binary runs a scenario end to end and prints its figures.

use std::process::Command;

/// Runs the binary with `args`; it must succeed and print every line of
/// `expected`.
fn run_and_expect(args: &[&str], expected: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal-sim"))
        .args(args)
        .output()
        .expect("shoal-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in expected {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
}

#[test]
fn shoal_sim_converges_kills_nodes_and_prints_every_figure() {
    run_and_expect(
        &[
            "--nodes",
            "20",
            "--replicas",
            "200",
            "--services",
            "2",
            "--kill-percent",
            "10",
            "--heartbeat-ms",
            "300",
            "--timeout-s",
            "120",
        ],
        &[
            "20 nodes READY in",
            "2 services x 100 replicas: 200 RUNNING",
            "resident memory:",
            "killed 2 nodes",
        ],
    );
}

#[test]
fn shoal_sim_with_the_agents_in_a_child_process_measures_the_manager_alone() {
    run_and_expect(
        &[
            "--nodes",
            "20",
            "--replicas",
            "200",
            "--kill-percent",
            "10",
            "--heartbeat-ms",
            "300",
            "--timeout-s",
            "120",
            "--agents-process",
            "--transport",
            "unix",
        ],
        &[
            "20 nodes READY in",
            "1 services x 200 replicas: 200 RUNNING",
            "the manager alone: the agents run in a child process",
            // The child killed the nodes it was told to, and the manager
            // replaced their tasks.
            "killed 2 nodes",
        ],
    );
}

#[test]
fn shoal_sim_refuses_a_child_agents_process_over_tls() {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal-sim"))
        .args(["--agents-process"])
        .output()
        .expect("shoal-sim runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("add --transport unix"), "{stderr}");
}

#[test]
fn shoal_sim_refuses_a_failure_rate_outside_zero_to_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal-sim"))
        .args(["--failure-rate", "1.5"])
        .output()
        .expect("shoal-sim runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--failure-rate: must be between 0.0 and 1.0"),
        "{stderr}"
    );
}

#[test]
fn shoal_sim_converges_over_each_transport() {
    for transport in ["tls", "tcp", "unix"] {
        run_and_expect(
            &[
                "--nodes",
                "10",
                "--replicas",
                "100",
                "--heartbeat-ms",
                "300",
                "--timeout-s",
                "120",
                "--transport",
                transport,
            ],
            &[
                "10 nodes READY in",
                "1 services x 100 replicas: 100 RUNNING",
            ],
        );
    }
}
