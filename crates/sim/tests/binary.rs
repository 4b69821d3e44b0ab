//! The `shoal-sim` binary runs a scenario end to end and prints its figures.

use std::process::Command;

#[test]
fn shoal_sim_converges_kills_nodes_and_prints_every_figure() {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal-sim"))
        .args([
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
        ])
        .output()
        .expect("shoal-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "20 nodes READY in",
        "2 services x 100 replicas: 200 RUNNING",
        "resident memory:",
        "killed 2 nodes",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
}

#[test]
fn shoal_sim_with_the_agents_in_a_child_process_measures_the_manager_alone() {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal-sim"))
        .args([
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
        ])
        .output()
        .expect("shoal-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "20 nodes READY in",
        "1 services x 200 replicas: 200 RUNNING",
        "the manager alone: the agents run in a child process",
        // The child killed the nodes it was told to, and the manager
        // replaced their tasks.
        "killed 2 nodes",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
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
