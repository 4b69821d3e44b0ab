//! A new manager joining a cluster that holds many tasks: the time from
//! its daemon's start (`--join` with the manager token) until it answers
//! with the store (its snapshot installed and the log after it applied),
//! and until it votes (`node ls` on the founder shows it Reachable).
//!
//! The tasks are real task objects of replicated services whose
//! constraint no node meets, so they stay PENDING and nothing runs.
//!
//! `cargo bench -p shoal --bench manager_join` (TASKS=1000000 by default,
//! in services of at most 100,000 replicas each).

mod peers;

use std::time::{Duration, Instant};

use peers::{env_or, wait_for, Manager};

const PER_SERVICE: u64 = 100_000;

/// The tasks of `service` as `service ps -q` on `manager` lists them.
fn tasks_of(manager: &Manager, service: &str) -> u64 {
    manager
        .cli(&["service", "ps", service, "-q"])
        .map_or(0, |out| out.lines().count() as u64)
}

fn main() {
    let tasks: u64 = env_or("TASKS", 1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let first = Manager::spawn(&tmp.path().join("m1"), &[]);
    let made = Instant::now();
    let mut left = tasks;
    let mut services = Vec::new();
    while left > 0 {
        let replicas = left.min(PER_SERVICE);
        left -= replicas;
        let name = format!("pending{}", services.len());
        first
            .cli(&[
                "service",
                "create",
                "--detach",
                "--name",
                &name,
                "--replicas",
                &replicas.to_string(),
                "--constraint",
                "node.labels.bench==nowhere",
                "--",
                "sleep",
                "1",
            ])
            .expect("the service is created");
        services.push((name, replicas));
    }
    for (name, replicas) in &services {
        wait_for(
            "the service's tasks are in the store",
            Duration::from_secs(1_800),
            || {
                std::thread::sleep(Duration::from_secs(1));
                tasks_of(&first, name) == *replicas
            },
        );
    }
    println!(
        "{tasks} pending tasks in the store after {:.1} s",
        made.elapsed().as_secs_f64()
    );

    let (addr, token) = peers::manager_join_args(&first);
    let started = Instant::now();
    let second = Manager::spawn_within(
        &tmp.path().join("m2"),
        &["--join", &addr, "--token", &token],
        Duration::from_secs(1_800),
    );
    let answering = started.elapsed();
    let id = second.node_id();
    wait_for("the new manager votes", Duration::from_secs(1_800), || {
        first
            .statuses()
            .iter()
            .any(|(m, s)| id.starts_with(m.as_str()) && s == "Reachable")
    });
    let voting = started.elapsed();
    println!(
        "a manager joining {tasks} tasks: answers with the store after {:.1} s, votes after {:.1} s",
        answering.as_secs_f64(),
        voting.as_secs_f64()
    );
    let snapshot = std::fs::metadata(tmp.path().join("m2").join("raft").join("snapshot"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "the snapshot it received: {:.1} MB",
        snapshot as f64 / 1_000_000.0
    );
}
