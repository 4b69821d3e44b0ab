//! Acknowledged writes survive `kill -9` of the daemon; concurrent updates
//! from the same read conflict instead of overwriting each other. Both go
//! through the gRPC control API directly, as any client would.

mod harness;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::Daemon;
use shoal_api::control_client::ControlClient;
use shoal_api::{
    Annotations, CreateServiceRequest, GetRequest, Runtime, ServiceSpec, TaskSpec,
    UpdateServiceRequest,
};
use tonic::transport::Channel;

fn client(socket: &Path) -> ControlClient<Channel> {
    ControlClient::new(shoal_api::transport::connect_unix(socket))
}

fn spec(name: &str, replicas: i64) -> ServiceSpec {
    ServiceSpec {
        annotations: Some(Annotations {
            name: name.into(),
            labels: Default::default(),
        }),
        task: Some(TaskSpec {
            runtime: Some(Runtime {
                command: vec!["sleep".into(), "1".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        replicas: Some(replicas),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_updates_from_the_same_read_conflict_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let mut api = client(&d.socket);
    let created = api
        .create_service(CreateServiceRequest {
            spec: Some(spec("web", 1)),
        })
        .await
        .unwrap()
        .into_inner();
    let read = created.service.unwrap();
    let version = read.meta.as_ref().unwrap().version;
    let update = |replicas| UpdateServiceRequest {
        service_id: read.id.clone(),
        version,
        spec: Some(spec("web", replicas)),
        rollback: false,
    };
    let first = api.update_service(update(2)).await;
    let second = api.update_service(update(3)).await;
    assert!(first.is_ok(), "{first:?}");
    let err = second.expect_err("the second writer read a stale version");
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(
        err.message().contains("changed by someone else"),
        "{}",
        err.message()
    );
    let now = api
        .get_service(GetRequest {
            reference: "web".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(
        now.spec.unwrap().replicas,
        Some(2),
        "the first update stands"
    );
}

/// What a writer knows about one service it wrote.
#[derive(Debug, Clone, Default)]
struct Written {
    acked_version: u64,
    acked_replicas: i64,
    /// A later write was sent and not answered before the kill.
    in_flight: bool,
}

/// Small seeded generator: the kill moments replay exactly from the seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9_with_writes_in_flight() {
    const ROUNDS: usize = 5;
    const WRITERS: usize = 8;
    let seed = 0x5eed_u64;
    eprintln!("seed {seed:#x}");
    let mut rng = Lcg(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s1");
    let written: Arc<Mutex<HashMap<String, Written>>> = Arc::default();
    let mut unanswered_creates: Vec<String> = Vec::new();

    for round in 0..ROUNDS {
        let mut d = Daemon::start(&dir);
        // Phase 1: everything acknowledged before must be there, exactly.
        let acknowledged = written.lock().unwrap().clone();
        check(&d.socket, &acknowledged, &unanswered_creates).await;

        // Phase 2: writers create and update services until the kill.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        let pending: Arc<Mutex<Vec<String>>> = Arc::default();
        for w in 0..WRITERS {
            let socket = d.socket.clone();
            let written = Arc::clone(&written);
            let stop = Arc::clone(&stop);
            let pending = Arc::clone(&pending);
            tasks.push(tokio::spawn(async move {
                let mut api = client(&socket);
                let mut n = 0i64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let name = format!("r{round}-w{w}-{n}");
                    pending.lock().unwrap().push(name.clone());
                    let Ok(created) = api
                        .create_service(CreateServiceRequest {
                            spec: Some(spec(&name, n)),
                        })
                        .await
                    else {
                        return;
                    };
                    pending.lock().unwrap().retain(|p| p != &name);
                    let service = created.into_inner().service.unwrap();
                    let version = service.meta.as_ref().unwrap().version;
                    written.lock().unwrap().insert(
                        name.clone(),
                        Written {
                            acked_version: version,
                            acked_replicas: n,
                            in_flight: false,
                        },
                    );
                    // Then update it, so updates are in flight at the kill too.
                    written.lock().unwrap().get_mut(&name).unwrap().in_flight = true;
                    let update = UpdateServiceRequest {
                        service_id: service.id,
                        version,
                        spec: Some(spec(&name, n + 1000)),
                        rollback: false,
                    };
                    let Ok(updated) = api.update_service(update).await else {
                        return;
                    };
                    let v = updated.into_inner().service.unwrap().meta.unwrap().version;
                    *written.lock().unwrap().get_mut(&name).unwrap() = Written {
                        acked_version: v,
                        acked_replicas: n + 1000,
                        in_flight: false,
                    };
                    n += 1;
                }
            }));
        }
        // Phase 3: kill -9 at a seeded moment while the writers run.
        let wait_ms = 150 + rng.next() % 600;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let acked_before_kill = written.lock().unwrap().len();
        d.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        unanswered_creates.extend(pending.lock().unwrap().drain(..));
        eprintln!("round {round}: killed after {wait_ms} ms with {acked_before_kill} services acknowledged");
    }
    let d = Daemon::start(&dir);
    let acknowledged = written.lock().unwrap().clone();
    check(&d.socket, &acknowledged, &unanswered_creates).await;
    assert!(
        written.lock().unwrap().len() > ROUNDS,
        "the writers wrote too little to test anything"
    );
}

/// Every acknowledged service is present with its acknowledged version and
/// content (or a later one, where a later write was in flight); a service
/// whose create was never answered is absent or whole.
async fn check(socket: &Path, written: &HashMap<String, Written>, unanswered: &[String]) {
    let mut api = client(socket);
    for (name, w) in written {
        let got = api
            .get_service(GetRequest {
                reference: name.clone(),
            })
            .await;
        let service = got
            .unwrap_or_else(|e| panic!("acknowledged service {name} lost: {e}"))
            .into_inner()
            .service
            .unwrap();
        let version = service.meta.as_ref().unwrap().version;
        let replicas = service.spec.as_ref().unwrap().replicas.unwrap();
        if w.in_flight {
            assert!(
                version >= w.acked_version,
                "{name}: version went back from {} to {version}",
                w.acked_version
            );
            assert!(
                replicas == w.acked_replicas || replicas == w.acked_replicas + 1000,
                "{name}: replicas {replicas}"
            );
        } else {
            assert_eq!(
                version, w.acked_version,
                "{name}: acknowledged version changed: {service:?}"
            );
            assert_eq!(
                replicas, w.acked_replicas,
                "{name}: acknowledged content changed"
            );
        }
    }
    for name in unanswered {
        if let Ok(found) = api
            .get_service(GetRequest {
                reference: name.clone(),
            })
            .await
        {
            let service = found.into_inner().service.unwrap();
            assert_eq!(
                service.spec.unwrap().task.unwrap().runtime.unwrap().command,
                vec!["sleep", "1"],
                "{name} is half there"
            );
        }
    }
}
