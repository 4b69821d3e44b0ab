//! The node listener refuses every call it must (DESIGN.md §6), each
//! refusal its own test: no client certificate, another cluster's
//! certificate, an expired one, a worker's on raft or the control API, a
//! removed node's. The calls are made the way a node makes them, with the
//! certificates real nodes were given.

mod harness;

use std::time::{Duration, SystemTime};

use harness::{join, join_args, wait_until, Daemon};
use shoal_api::ca_client::CaClient;
use shoal_api::control_client::ControlClient;
use shoal_api::dispatcher_client::DispatcherClient;
use shoal_api::raft_client::RaftClient;
use shoal_api::{ListRequest, RaftMessage, RenewNodeCertificateRequest, SessionRequest};
use tonic::transport::Channel;

/// A node's certificate files: (ca, chain, key).
fn files(d: &Daemon) -> (String, String, String) {
    let dir = d.state_dir.join("certificates");
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    let (ca, cert, key) = (read("ca.crt"), read("node.crt"), read("node.key"));
    (ca.clone(), format!("{cert}{ca}"), key)
}

/// A channel to `addr` trusting `ca_pem`, showing `identity` if any.
fn channel(addr: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> Channel {
    let ca_der = shoal_ca::certificate_der(ca_pem).unwrap();
    let config = shoal_ca::tls::client_config(&ca_der, identity).unwrap();
    let _in_runtime = runtime().enter();
    shoal_api::mtls::connect(addr, config, shoal_ca::tls::MANAGER_NAME).unwrap()
}

/// One runtime for the test's calls and the channels they go on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

fn renew(ch: Channel) -> Result<shoal_api::NodeCertificateResponse, tonic::Status> {
    let key = shoal_ca::NodeKey::generate("x").unwrap();
    runtime().block_on(async move {
        CaClient::new(ch)
            .renew_node_certificate(RenewNodeCertificateRequest {
                csr_pem: key.request_pem().to_string(),
                advertise_addr: String::new(),
                current_role: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    })
}

/// Whether `status` is the connection failing, not an answer: in TLS 1.3
/// the server checks the client's certificate after the client finished
/// its side, so a refused certificate shows as the connection closing.
fn handshake_refused(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
        && matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        )
}

#[test]
fn a_call_without_a_client_certificate_reaches_only_the_join() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    let (addr, _) = join_args(&manager);
    let (ca, _, _) = files(&manager);
    let anonymous = channel(&addr, &ca, None);
    let refused = runtime()
        .block_on(
            DispatcherClient::new(anonymous.clone()).session(SessionRequest {
                node_id: String::new(),
                description: None,
            }),
        )
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let refused = renew(anonymous.clone()).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let refused = runtime()
        .block_on(ControlClient::new(anonymous).list_nodes(ListRequest::default()))
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
}

#[test]
fn a_workers_certificate_renews_but_reaches_neither_raft_nor_the_control_api() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    let worker = join(&tmp.path().join("w"), &manager);
    let (addr, _) = join_args(&manager);
    let (ca, chain, key) = files(&worker);
    let as_worker = || channel(&addr, &ca, Some((&chain, &key)));

    let renewed = renew(as_worker()).expect("a worker renews its own certificate");
    let (identity, _) = shoal_ca::NodeIdentity::of_certificate_pem(&renewed.cert_pem).unwrap();
    let (mine, _) = shoal_ca::NodeIdentity::of_certificate_pem(
        &std::fs::read_to_string(worker.state_dir.join("certificates/node.crt")).unwrap(),
    )
    .unwrap();
    assert_eq!(identity, mine, "renewal keeps the identity");

    let refused = runtime()
        .block_on(RaftClient::new(as_worker()).vote(RaftMessage::default()))
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("only managers"), "{refused}");
    let refused = runtime()
        .block_on(ControlClient::new(as_worker()).list_nodes(ListRequest::default()))
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");

    // The manager's own certificate reaches both (raft answers it: the
    // message is empty, so it is refused by raft, not by authorization).
    let (_, manager_chain, manager_key) = files(&manager);
    let as_manager = channel(&addr, &ca, Some((&manager_chain, &manager_key)));
    let answered = runtime()
        .block_on(ControlClient::new(as_manager.clone()).list_nodes(ListRequest::default()));
    assert!(answered.is_ok(), "{answered:?}");
    let raft = runtime().block_on(RaftClient::new(as_manager).vote(RaftMessage::default()));
    assert_eq!(raft.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[test]
fn a_certificate_of_another_clusters_ca_fails_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    let worker = join(&tmp.path().join("w"), &manager);
    let (addr, _) = join_args(&manager);
    let (ca, _, _) = files(&manager);
    let (_, own_chain, _) = files(&worker);
    let own_id = shoal_ca::NodeIdentity::of_certificate_pem(&own_chain)
        .unwrap()
        .0;
    // The same identity, signed by another root.
    let other = shoal_ca::RootCa::create(&own_id.cluster_id, SystemTime::now()).unwrap();
    let key = shoal_ca::NodeKey::generate(&own_id.node_id).unwrap();
    let now = SystemTime::now();
    let forged = other
        .issue(
            key.request_pem(),
            &own_id,
            &[],
            now - Duration::from_secs(60),
            now + Duration::from_secs(3_600),
        )
        .unwrap();
    let refused = renew(channel(&addr, &ca, Some((&forged, key.key_pem())))).unwrap_err();
    assert!(handshake_refused(&refused), "{refused:?}");
}

#[test]
fn a_removed_nodes_certificate_is_refused_from_the_moment_it_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    // Heartbeats far apart: the removed node learns of it from its session
    // ending at the removal, not at its next heartbeat.
    manager.ok(&["cluster", "update", "--dispatcher-heartbeat", "300s"]);
    let mut worker = join(&tmp.path().join("w"), &manager);
    let (addr, _) = join_args(&manager);
    let (ca, chain, key) = files(&worker);
    let worker_id = shoal_ca::NodeIdentity::of_certificate_pem(&chain)
        .unwrap()
        .0
        .node_id;
    assert!(renew(channel(&addr, &ca, Some((&chain, &key)))).is_ok());
    harness::create_web(&manager, 4);
    let tasks_dir = worker.state_dir.join("tasks");
    wait_until("tasks run on the worker", || {
        !shoal_agent::find_task_processes(&tasks_dir).is_empty()
    });
    manager.ok(&["node", "rm", "--force", &worker_id]);
    // The removal is recorded, until any certificate of the node expires.
    let cluster: serde_json::Value =
        serde_json::from_str(&manager.ok(&["cluster", "inspect"])).unwrap();
    let recorded = cluster["removed_nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        recorded.iter().any(
            |r| r["node_id"] == worker_id.as_str() && r["until_unix"].as_i64().unwrap_or(0) > 0
        ),
        "{cluster}"
    );
    let refused = renew(channel(&addr, &ca, Some((&chain, &key)))).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(shoal_api::is_node_removed(&refused), "{refused}");
    // Its running daemon is refused too, at its next heartbeat: it stops
    // its tasks (their replacements run elsewhere), deletes its identity
    // and exits saying why; it never comes back.
    let status = worker
        .wait_exit(harness::READY_WITHIN)
        .expect("the removed worker's daemon exits");
    assert!(!status.success());
    assert!(
        worker.log_text().contains("removed from the cluster"),
        "{}",
        worker.log_text()
    );
    assert!(shoal_agent::find_task_processes(&tasks_dir).is_empty());
    assert!(!worker.state_dir.join("certificates").exists());
    let marker = std::fs::read_to_string(worker.state_dir.join("shoal-state.json")).unwrap();
    assert!(marker.contains("\"left\""), "{marker}");
    let nodes = manager.ok(&["node", "ls", "-q"]);
    assert!(!nodes.contains(&worker_id[..12]), "{nodes}");
    wait_until("the manager runs all four", || {
        shoal_agent::find_task_processes(&manager.state_dir.join("tasks")).len() == 4
    });
}

#[test]
fn certificates_renew_before_they_expire_while_tasks_run_and_an_expired_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    let err = manager.fails(&["cluster", "update", "--cert-expiry", "10s"]);
    assert!(
        err.contains("cert_expiry") && err.contains("at least 30"),
        "{err}"
    );
    manager.ok(&["cluster", "update", "--cert-expiry", "30s"]);
    let mut worker = join(&tmp.path().join("w"), &manager);
    let (addr, _) = join_args(&manager);
    let (ca, first_chain, first_key) = files(&worker);
    let (_, not_after) = shoal_ca::NodeIdentity::of_certificate_pem(&first_chain).unwrap();
    harness::create_web(&manager, 2);
    let tasks_dir = worker.state_dir.join("tasks");
    let tasks = || shoal_agent::find_task_processes(&tasks_dir);
    wait_until("a task runs on the worker", || !tasks().is_empty());
    let running = tasks();

    // Renewed between 15 and 24 s after it was issued.
    let cert = worker.state_dir.join("certificates/node.crt");
    wait_until("the worker renews its certificate", || {
        std::fs::read_to_string(&cert).is_ok_and(|c| !first_chain.starts_with(&c))
    });
    let (_, renewed_after) =
        shoal_ca::NodeIdentity::of_certificate_pem(&std::fs::read_to_string(&cert).unwrap())
            .unwrap();
    assert!(renewed_after > not_after);
    // Past the first certificate's end: the tasks never stopped, and the
    // worker reconnects with the renewed one.
    wait_until("the first certificate has expired", || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            > not_after + 1
    });
    assert_eq!(tasks(), running);
    let refused = renew(channel(&addr, &ca, Some((&first_chain, &first_key)))).unwrap_err();
    assert!(handshake_refused(&refused), "{refused:?}");
    worker.stop();
    let worker = Daemon::start_with(&worker.state_dir.clone(), &[]);
    let (_, chain, key) = files(&worker);
    assert!(renew(channel(&addr, &ca, Some((&chain, &key)))).is_ok());
    assert_eq!(tasks(), running);
}

#[test]
fn a_node_that_joined_but_never_connected_is_marked_down_not_left_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    manager.ok(&["cluster", "update", "--dispatcher-heartbeat", "500ms"]);
    let (addr, token) = join_args(&manager);
    let (ca, _, _) = files(&manager);
    // A join made by hand: the certificate is issued, no agent follows.
    let key = shoal_ca::NodeKey::generate("x").unwrap();
    let joined = runtime()
        .block_on(
            CaClient::new(channel(&addr, &ca, None)).issue_node_certificate(
                shoal_api::IssueNodeCertificateRequest {
                    token,
                    csr_pem: key.request_pem().to_string(),
                    advertise_addr: String::new(),
                },
            ),
        )
        .expect("the join is accepted")
        .into_inner();
    let status = || {
        let nodes: Vec<serde_json::Value> =
            serde_json::from_str(&manager.ok(&["node", "inspect", &joined.node_id])).unwrap();
        nodes[0]["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_until("the node that never connected is Down", || {
        status() == "DOWN"
    });
}

#[test]
fn a_removed_node_with_nothing_to_report_is_told_at_once_not_at_its_next_heartbeat() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    // A heartbeat every 300 s: waiting for one would outlast the bound.
    manager.ok(&["cluster", "update", "--dispatcher-heartbeat", "300s"]);
    let mut worker = join(&tmp.path().join("w"), &manager);
    let (_, chain, _) = files(&worker);
    let worker_id = shoal_ca::NodeIdentity::of_certificate_pem(&chain)
        .unwrap()
        .0
        .node_id;
    wait_until("the idle worker has a session", || {
        harness::node_version(&manager, &worker_id) > 1
    });
    manager.ok(&["node", "rm", "--force", &worker_id]);
    let status = worker
        .wait_exit(harness::READY_WITHIN)
        .expect("the removed worker's daemon exits");
    assert!(!status.success());
    assert!(worker.log_text().contains("removed from the cluster"));
}

#[test]
fn a_join_request_of_any_size_is_refused_past_its_bound_and_the_manager_answers_on() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    let (addr, token) = join_args(&manager);
    let (ca, _, _) = files(&manager);
    // 20 MB of "certificate request", without a certificate: the one call
    // anyone may make is refused at its size, before it is read.
    let refused = runtime()
        .block_on(
            CaClient::new(channel(&addr, &ca, None)).issue_node_certificate(
                shoal_api::IssueNodeCertificateRequest {
                    token,
                    csr_pem: "x".repeat(20 << 20),
                    advertise_addr: String::new(),
                },
            ),
        )
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains("65536"),
        "names the limit: {refused:?}"
    );
    let nodes = manager.ok(&["node", "ls", "-q"]);
    assert_eq!(nodes.lines().count(), 1, "nothing was created: {nodes}");
}

#[test]
fn a_flood_of_join_calls_is_refused_past_the_managers_rate_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    let (addr, token) = join_args(&manager);
    let (ca, _, _) = files(&manager);
    let (digest, _) = token
        .strip_prefix("SWMTKN-1-")
        .unwrap()
        .split_once('-')
        .unwrap();
    // Guessed tokens, as fast as one client sends them (far more than the
    // 200 a second the manager takes past its burst of 500): each counts.
    let guess = format!("SWMTKN-1-{digest}-{}", "0".repeat(32));
    let mut client = CaClient::new(channel(&addr, &ca, None));
    let (denied, exhausted) = runtime().block_on(async {
        let (mut denied, mut exhausted) = (0, None);
        for _ in 0..20_000 {
            let refused = client
                .issue_node_certificate(shoal_api::IssueNodeCertificateRequest {
                    token: guess.clone(),
                    csr_pem: String::new(),
                    advertise_addr: String::new(),
                })
                .await
                .expect_err("a guessed token never joins");
            match refused.code() {
                tonic::Code::PermissionDenied => denied += 1,
                tonic::Code::ResourceExhausted => {
                    exhausted = Some(refused);
                    break;
                }
                _ => panic!("{refused:?}"),
            }
        }
        (denied, exhausted)
    });
    assert!(denied >= 500, "the burst was taken: {denied}");
    let exhausted = exhausted.expect("the rate applied");
    assert!(
        exhausted.message().contains("joins a second"),
        "{exhausted:?}"
    );
    // The manager answers its own users meanwhile.
    manager.ok(&["node", "ls"]);
}
