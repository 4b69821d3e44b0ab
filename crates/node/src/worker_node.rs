//! A worker: its agent, over mutual TLS to the managers it knows, and a
//! control socket that answers who the node is, lets it leave, and refuses
//! the control API (the cluster's state is on the managers).
//!
//! The managers' addresses come from the join and then from each session,
//! and are kept in the state dir, so a restart needs neither the token nor
//! the address. The worker renews its certificate through the CA at the
//! point [`crate::renewal::renew_in`] draws.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal_agent::Driver;
use shoal_api::ca_client::CaClient;
use shoal_api::RenewNodeCertificateRequest;
use shoal_ca::tls::NodeTlsIdentity;
use shoal_ca::NodeKey;
use tokio::sync::watch;

use crate::certificates::{NodeCertificates, CERTIFICATES_DIR};
use crate::daemon::{
    drained, find_engine, host_driver, serve_control_socket, start_agent, tls_connector,
    DaemonConfig, DaemonError, Next, AGENT_TASKS_DIR,
};
use crate::host::describe_host;
use crate::local_node::{KnownManagers, LocalNodeService, NotAManager};
use crate::state_dir::StateDir;

/// Runs the worker of `state` until a shutdown signal or `shoal leave`.
pub async fn run(
    mut state: StateDir,
    config: &DaemonConfig,
    mut rng: StdRng,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Next, DaemonError> {
    let marker = state
        .marker()
        .cloned()
        .ok_or_else(|| DaemonError::Agent("the state dir has no identity".into()))?;
    let dir = state.path().join(CERTIFICATES_DIR);
    let certificates = NodeCertificates::read(&dir).ok_or_else(|| {
        DaemonError::Agent(format!(
            "{} holds no certificates: this node cannot prove who it is; give it an empty state dir and join again",
            dir.display()
        ))
    })?;
    let ca_der = certificates.ca_der()?;
    // Past its end the certificate opens no connection, and renewal needs
    // one: say so instead of retrying for ever.
    let not_after = certificates.not_after()?;
    if not_after < shoal_api::clock::now_ms() / 1_000 {
        return Err(DaemonError::Expired {
            at: shoal_api::log_time::format_rfc3339(not_after.saturating_mul(1_000_000_000), 0),
        });
    }
    let identity = NodeTlsIdentity::new(&certificates.chain_pem(), &certificates.key_pem)?;
    let addresses = state.managers();
    if addresses.is_empty() {
        return Err(DaemonError::Agent(
            "the state dir names no manager to dial; give it an empty state dir and join again"
                .into(),
        ));
    }
    let known: KnownManagers = Arc::new(Mutex::new(addresses.clone()));
    let (tell_role, mut asked_role) = crate::role_change::role_channel();
    let connector = tls_connector(addresses, &ca_der, Arc::clone(&identity))?
        .on_learned(crate::daemon::keep_learned(&known, &state))
        .on_desired_role(tell_role);

    // The agent stops first, the control socket last: a `leave` is
    // answered only once the node has left.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (server_stop_tx, server_stop_rx) = watch::channel(false);
    let (leave_tx, mut leave_rx) = tokio::sync::mpsc::channel(1);
    let process = shoal_agent::ProcessConfig::new(state.path().join(AGENT_TASKS_DIR));
    let mut description = describe_host();
    description.warnings.extend(process.cgroups.warning());
    let engine = find_engine(&mut description).await;
    let mut agent = start_agent(
        &state,
        &marker.node_id,
        description,
        process,
        engine.clone(),
        connector,
        &stop_rx,
    )?;
    let renewal = tokio::spawn(renew(
        dir,
        ca_der,
        Arc::clone(&identity),
        Arc::clone(&known),
        StdRng::seed_from_u64(rand::Rng::gen(&mut rng)),
        stop_rx.clone(),
    ));

    let socket = config.socket.clone().unwrap_or_else(|| state.socket_path());
    let routes = tonic::service::Routes::new(NotAManager::new(Arc::clone(&known))).add_service(
        shoal_api::local_node_server::LocalNodeServer::new(LocalNodeService::worker(
            marker.clone(),
            Arc::clone(&known),
            leave_tx,
        )),
    );
    let mut control_server = serve_control_socket(&socket, routes, &server_stop_rx)?;
    eprintln!(
        "shoal daemon: worker node {} of cluster {} is running; control socket {}; managers {}",
        marker.node_id,
        marker.cluster_id,
        socket.display(),
        known.lock().unwrap_or_else(|e| e.into_inner()).join(", ")
    );
    enum Ending {
        Stop,
        Promoted(Box<crate::role_change::Promotion>),
        Leave(tokio::sync::oneshot::Sender<Result<(), String>>),
        Agent(Result<shoal_agent::AgentExit, DaemonError>),
        Served(Result<(), DaemonError>),
    }
    let ending = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => Ending::Stop,
        // `node promote`: it goes on as a worker until the CA made it a
        // manager, then stops as a worker.
        promotion = crate::role_change::promoted(&mut asked_role, config, &known, &certificates, &identity) => {
            Ending::Promoted(Box::new(promotion))
        }
        Some(reply) = leave_rx.recv() => Ending::Leave(reply),
        exit = &mut agent => Ending::Agent(exit.map_err(|e| DaemonError::Agent(format!("the agent failed: {e}")))),
        served = &mut control_server => Ending::Served(served.unwrap_or_else(|e| Err(DaemonError::Serve {
            what: "the control API",
            message: e.to_string(),
        }))),
    };
    let _ = stop_tx.send(true);
    if !matches!(ending, Ending::Agent(_)) {
        let _ = agent.await;
    }
    let _ = renewal.await;
    // A server that ended by itself is not waited for again.
    let served_already = matches!(ending, Ending::Served(_));
    let (result, left) = match ending {
        Ending::Stop => (Ok(Next::Stop), None),
        Ending::Promoted(promotion) => (become_manager(&mut state, &marker, *promotion), None),
        Ending::Served(served) => (served.map(|()| Next::Stop), None),
        Ending::Leave(reply) => {
            let left = leave(&mut state, &marker, engine.clone()).await;
            let answer = left.as_ref().map(|_| ()).map_err(|e| e.to_string());
            let _ = reply.send(answer.clone());
            (left.map(|()| Next::Stop), Some(answer))
        }
        Ending::Agent(Ok(shoal_agent::AgentExit::Removed(reason))) => {
            // Its replacements run elsewhere: it must not run them on.
            let left = leave(&mut state, &marker, engine.clone())
                .await
                .and(Err(DaemonError::Removed(reason)));
            (left, None)
        }
        Ending::Agent(Ok(shoal_agent::AgentExit::Stopped)) => (Ok(Next::Stop), None),
        Ending::Agent(Err(e)) => (Err(e), None),
    };
    // A `leave` asked meanwhile (a second one, or during the stop) is
    // answered now, not left to time out with the drain.
    leave_rx.close();
    while let Ok(reply) = leave_rx.try_recv() {
        let answer = left
            .clone()
            .unwrap_or_else(|| Err("the daemon is stopping".to_string()));
        let _ = reply.send(answer);
    }
    let _ = server_stop_tx.send(true);
    if !served_already {
        drained(control_server).await;
    }
    let _ = std::fs::remove_file(&socket);
    result
}

/// Makes this state dir a manager's that joined: its certificate, the
/// managers it knows, and its marker last (a crash before it leaves a
/// worker, promoted again at its next start); its raft log is made when
/// the manager starts, empty, for the leader to fill.
fn become_manager(
    state: &mut StateDir,
    marker: &crate::state_dir::Marker,
    promotion: crate::role_change::Promotion,
) -> Result<Next, DaemonError> {
    let role = promotion.role;
    role.certificates
        .write(&state.path().join(CERTIFICATES_DIR))?;
    state
        .save_managers(&role.managers)
        .map_err(|e| DaemonError::Agent(format!("saving the managers' addresses: {e}")))?;
    state.create(crate::state_dir::Marker {
        role: crate::state_dir::NodeKind::Manager,
        raft_id: role.raft_id,
        joined: true,
        ..marker.clone()
    })?;
    eprintln!(
        "shoal daemon: node {} was promoted: it goes on as a manager (raft id {})",
        marker.node_id, role.raft_id
    );
    Ok(Next::Manager(promotion.listener))
}

/// How long leaving waits for the node's task processes to be gone.
const LEAVE_KILL_WAIT: Duration = Duration::from_secs(30);

/// Stops every task of this node and deletes its identity: what leaving
/// (or being removed) leaves is a state dir that says it left. The tasks
/// are killed until none is found (a runner aborted mid-start may have
/// started one more), within a bound.
async fn leave(
    state: &mut StateDir,
    marker: &crate::state_dir::Marker,
    engine: Option<shoal_agent::Engine>,
) -> Result<(), DaemonError> {
    let driver = host_driver(
        &marker.node_id,
        shoal_agent::ProcessConfig::new(state.path().join(AGENT_TASKS_DIR)),
        engine,
    );
    let deadline = std::time::Instant::now() + LEAVE_KILL_WAIT;
    loop {
        let found = driver.leftovers().await.map_err(DaemonError::Agent)?;
        if found.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(DaemonError::Agent(format!(
                "{} tasks (processes or containers) would not end; the node has not left",
                found.len()
            )));
        }
        for (task_id, handle) in found {
            driver.end(&task_id, &handle).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    state.forget()?;
    eprintln!(
        "shoal daemon: node {} left cluster {}; its tasks are stopped and its identity is deleted",
        marker.node_id, marker.cluster_id
    );
    Ok(())
}

/// Renews the worker's certificate in `dir` through the managers' CA
/// until `stop`.
async fn renew(
    dir: std::path::PathBuf,
    ca_der: Vec<u8>,
    identity: Arc<NodeTlsIdentity>,
    managers: KnownManagers,
    rng: StdRng,
    stop: watch::Receiver<bool>,
) {
    crate::renewal::keep_renewed(&dir, "this node", rng, stop, |current| {
        let (dir, ca_der, identity, managers) = (&dir, &ca_der, &identity, &managers);
        async move {
            let addresses = managers.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut renewed = Err("no manager address is known".to_string());
            for addr in &addresses {
                renewed = renew_once(dir, &current, ca_der, identity, addr).await;
                if renewed.is_ok() {
                    break;
                }
            }
            renewed
        }
    })
    .await
}

/// One renewal through the manager at `addr`: a new key, its certificate
/// written whole, then shown from the next handshake on.
async fn renew_once(
    dir: &Path,
    current: &NodeCertificates,
    ca_der: &[u8],
    identity: &Arc<NodeTlsIdentity>,
    addr: &str,
) -> Result<(), String> {
    let key = NodeKey::generate("renewal").map_err(|e| e.to_string())?;
    let config = shoal_ca::tls::renewable_client_config(ca_der, Arc::clone(identity))
        .map_err(|e| e.to_string())?;
    let channel = shoal_api::mtls::connect(addr, config, shoal_ca::tls::MANAGER_NAME)
        .map_err(|e| e.to_string())?;
    let answer = CaClient::new(channel)
        .renew_node_certificate(RenewNodeCertificateRequest {
            csr_pem: key.request_pem().to_string(),
            advertise_addr: String::new(),
            current_role: String::new(),
        })
        .await
        .map_err(|s| format!("{addr}: {}", s.message()))?
        .into_inner();
    if answer.ca_pem != current.ca_pem {
        return Err(format!("{addr} answered with another CA"));
    }
    let renewed = NodeCertificates {
        ca_pem: answer.ca_pem,
        cert_pem: answer.cert_pem,
        key_pem: key.key_pem().to_string(),
    };
    if !shoal_ca::key_matches_certificate(&renewed.key_pem, &renewed.cert_pem) {
        return Err(format!("{addr} answered with a certificate of another key"));
    }
    renewed.write(dir).map_err(|e| e.to_string())?;
    identity
        .replace(&renewed.chain_pem(), &renewed.key_pem)
        .map_err(|e| e.to_string())
}
