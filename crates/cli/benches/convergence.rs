//! The convergence loop on one node, through the real daemon and processes:
//! latency from `service create --replicas 1` to RUNNING (p50, p99 over 100
//! services), and 100 replicas of `sleep`: create to 100/100 RUNNING, and
//! `service rm` to every process gone.
//!
//! `cargo bench -p shoal --bench convergence`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_api::control_client::ControlClient;
use shoal_api::{
    object, Annotations, CreateServiceRequest, ListRequest, RemoveRequest, Runtime, ServiceSpec,
    TaskSpec, TaskState, WatchRequest,
};

fn spec(name: &str, replicas: i64) -> ServiceSpec {
    ServiceSpec {
        annotations: Some(Annotations {
            name: name.into(),
            labels: Default::default(),
        }),
        task: Some(TaskSpec {
            runtime: Some(Runtime {
                command: vec!["sleep".into(), "300".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        replicas: Some(replicas),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s");
    let socket = state.join("shoal.sock");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["daemon", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut api = ControlClient::new(shoal_api::transport::connect_unix(&socket));
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.version(shoal_api::VersionRequest {}).await.is_err() {
            assert!(Instant::now() < deadline, "daemon not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut events = api
            .watch(WatchRequest {
                include_existing: false,
            })
            .await
            .unwrap()
            .into_inner();

        // 1. create --replicas 1 → RUNNING, one service at a time.
        let mut latencies = Vec::new();
        for i in 0..100 {
            let start = Instant::now();
            let created = api
                .create_service(CreateServiceRequest {
                    spec: Some(spec(&format!("lat{i}"), 1)),
                })
                .await
                .unwrap();
            let service_id = created.into_inner().service.unwrap().id;
            loop {
                let event = events.message().await.unwrap().unwrap();
                if let Some(object::Kind::Task(t)) = event.object.and_then(|o| o.kind) {
                    if t.service_id == service_id
                        && t.status.map(|s| s.state) == Some(TaskState::Running as i32)
                    {
                        break;
                    }
                }
            }
            latencies.push(start.elapsed());
        }
        latencies.sort();
        println!(
            "service create --replicas 1 to RUNNING (100 services): p50 {:?}, p99 {:?}, max {:?}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().unwrap()
        );
        for i in 0..100 {
            api.remove_service(RemoveRequest {
                reference: format!("lat{i}"),
            })
            .await
            .unwrap();
        }
        let tasks_dir = state.join("tasks");
        wait_for("the latency services' processes to go", || {
            shoal_agent::find_task_processes(&tasks_dir).is_empty()
        })
        .await;

        // 2. 100 replicas of sleep.
        let start = Instant::now();
        api.create_service(CreateServiceRequest {
            spec: Some(spec("hundred", 100)),
        })
        .await
        .unwrap();
        loop {
            let mut pages = api
                .list_services(ListRequest::default())
                .await
                .unwrap()
                .into_inner();
            let mut running = false;
            while let Some(page) = pages.message().await.unwrap() {
                running |= page.services.iter().any(|s| s.running_tasks == 100);
            }
            if running {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "100 replicas never ran"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "100 replicas of sleep: create to 100/100 RUNNING in {:?}",
            start.elapsed()
        );
        assert_eq!(shoal_agent::find_task_processes(&tasks_dir).len(), 100);
        let start = Instant::now();
        api.remove_service(RemoveRequest {
            reference: "hundred".into(),
        })
        .await
        .unwrap();
        wait_for("every process to go", || {
            shoal_agent::find_task_processes(&tasks_dir).is_empty()
        })
        .await;
        println!("service rm to every process gone: {:?}", start.elapsed());
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    for pgid in shoal_agent::find_task_processes(&state.join("tasks")).into_values() {
        shoal_agent::kill_group(pgid);
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
