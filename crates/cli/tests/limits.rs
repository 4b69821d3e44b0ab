//! Work is bounded whatever users ask for: a service beyond the cluster's
//! limits is refused naming the limit, nothing is written, and the limits
//! are settings of the cluster spec.

mod harness;

use harness::{replicas, wait_until, Daemon};

#[test]
fn ten_million_replicas_are_refused_naming_the_limit_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let err = d.fails(&[
        "service",
        "create",
        "--name",
        "huge",
        "--replicas",
        "10000000",
        "--",
        "sleep",
        "1000",
    ]);
    assert!(
        err.contains("replicas: must be at most 100000 (the cluster's max_replicas_per_service"),
        "{err}"
    );
    assert_eq!(d.ok(&["service", "ls", "-q"]).trim(), "");

    // The limits are cluster settings, shown with their defaults.
    let cluster: serde_json::Value = serde_json::from_str(&d.ok(&["cluster", "inspect"])).unwrap();
    let o = &cluster["spec"]["orchestration"];
    assert_eq!(o["max_replicas_per_service"], 100_000);
    assert_eq!(o["max_replicas_total"], 1_000_000);
    assert_eq!(o["max_new_tasks_per_pass"], 10_000);

    // The total counts every replicated service, and an update is held to
    // it as a create is.
    d.ok(&["cluster", "update", "--max-replicas-total", "5"]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "a",
        "--replicas",
        "3",
        "--",
        "sleep",
        "1000",
    ]);
    let err = d.fails(&[
        "service",
        "create",
        "--name",
        "b",
        "--replicas",
        "3",
        "--",
        "sleep",
        "1000",
    ]);
    assert!(
        err.contains(
            "replicas: 3 would bring the cluster to 6 replicas, over its max_replicas_total of 5"
        ),
        "{err}"
    );
    let err = d.fails(&["service", "scale", "a=6"]);
    assert!(err.contains("max_replicas_total of 5"), "{err}");
    d.ok(&["service", "scale", "a=5"]);
    let err = d.fails(&["cluster", "update", "--max-new-tasks-per-pass", "1000000"]);
    assert!(
        err.contains("max_new_tasks_per_pass: must be at most 100000"),
        "{err}"
    );
    d.ok(&["service", "rm", "a"]);
}

#[test]
fn a_service_larger_than_one_pass_converges_and_the_api_keeps_answering() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&["cluster", "update", "--max-new-tasks-per-pass", "3"]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "big",
        "--replicas",
        "20",
        "--",
        "sleep",
        "1000",
    ]);
    // Another service created while the first converges is served too.
    d.ok(&[
        "service",
        "create",
        "--name",
        "small",
        "--replicas",
        "1",
        "--",
        "sleep",
        "1000",
    ]);
    wait_until("every replica running", || {
        replicas(&d, "big") == "20/20" && replicas(&d, "small") == "1/1"
    });
    d.ok(&["service", "rm", "big"]);
    d.ok(&["service", "rm", "small"]);
}
