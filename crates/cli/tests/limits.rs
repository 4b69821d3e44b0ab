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
    assert_eq!(o["max_new_tasks_per_pass"], 100_000);

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
    let err = d.fails(&["cluster", "update", "--max-new-tasks-per-pass", "2000000"]);
    assert!(
        err.contains("max_new_tasks_per_pass: must be at most 1000000"),
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

#[test]
fn lists_larger_than_one_message_are_listed_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    // 300 services of 60 KB of labels: 18 MB, more than one 16 MiB message.
    let label = format!("blob={}", "x".repeat(60 << 10));
    for i in 0..300 {
        d.ok(&[
            "service",
            "create",
            "--name",
            &format!("s{i}"),
            "--label",
            &label,
            "--replicas",
            "0",
            "--",
            "sleep",
            "1000",
        ]);
    }
    assert_eq!(d.ok(&["service", "ls", "-q"]).lines().count(), 300);
    assert_eq!(
        d.ok(&["service", "ls", "--format", "json"]).lines().count(),
        300
    );
    // The table: a header and every row.
    assert_eq!(d.ok(&["service", "ls"]).lines().count(), 301);
}

#[test]
fn a_label_of_20_mb_is_refused_naming_the_field_and_the_limit() {
    // 20 MB cannot be one command-line argument (Linux caps one at 128 KiB):
    // the request goes through the API as another client would send it.
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let channel = shoal_api::transport::connect_unix(&d.socket);
        let mut api = shoal_api::control_client::ControlClient::new(channel);
        let spec = shoal_api::ServiceSpec {
            annotations: Some(shoal_api::Annotations {
                name: "fat".into(),
                labels: [("blob".to_string(), "x".repeat(20 << 20))].into(),
            }),
            task: Some(shoal_api::TaskSpec {
                runtime: Some(shoal_api::Runtime {
                    command: vec!["sleep".into(), "1000".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        api.create_service(shoal_api::CreateServiceRequest { spec: Some(spec) })
            .await
            .expect_err("a 20 MB label was accepted")
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "labels: the labels take 20971524 bytes; at most 262144 are allowed"
    );
    assert_eq!(d.ok(&["service", "ls", "-q"]).trim(), "");
}
