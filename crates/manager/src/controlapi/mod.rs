//! The control API: what `shoal` (the CLI) talks to (DESIGN.md §3).
//!
//! Owns: every object's `spec` (and a service's `previous_spec`). A
//! service update also resets its `update_status`, so the update supervisor
//! starts the new update (or resumes a paused one), and a rollback the user
//! asks for starts as ROLLBACK_STARTED, as SwarmKit's control API does.
//!
//! Each write reads a consistent view, validates, builds one transaction whose
//! actions carry the versions it read (plus CHECK actions for the objects it
//! relied on, such as a service's networks), and proposes it. The store
//! re-checks those versions when the entry is applied, so two writers never
//! silently overwrite each other and a spec that passed validation cannot be
//! applied against a world that changed under it.
//!
//! [`ControlApi`] is the transport-free core: plain requests in, plain
//! answers or an [`ApiError`] out, one file per kind of object. The gRPC
//! server is a thin adapter over it ([`grpc`]); another API (HTTP) would be
//! another adapter, not a copy of the handlers.

mod cluster;
mod error;
pub mod grpc;
mod logs;
mod network;
mod node;
mod pages;
mod service;
mod task;
mod validate;
mod watch;

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use shoal_api::{
    object, store_action, Object, ObjectKind, Service, ServiceMode, ServiceSpec, ServiceSummary,
    StoreAction, Task, TaskState, Transaction,
};
use shoal_raft::Replica;
use shoal_store::View;
use tokio_stream::wrappers::ReceiverStream;

pub use error::ApiError;
pub use pages::Pages;
pub use validate::{
    validate_cluster_spec, validate_network_spec, validate_node_spec, validate_service_spec,
    InvalidSpec, MAX_LABEL_BYTES, MAX_SERVICE_SPEC_BYTES,
};

use crate::identity::new_object_id;

/// Events or lines a stream buffers before its sender waits for the client.
const STREAM_BUFFER: usize = 1_024;

/// A stream of answers (watch events, log lines).
pub type EventStream<T> = ReceiverStream<Result<T, ApiError>>;

/// What the control API needs to know about the node it runs on.
#[derive(Clone)]
pub struct ControlConfig {
    /// The node id `self` refers to.
    pub node_id: String,
    /// Where task logs are asked for: the broker the dispatcher serves.
    pub logs: Arc<crate::LogBroker>,
    /// How a follower reaches the leader's node listener, for what only
    /// the leader answers (task logs come through the agents' sessions,
    /// which the leader holds). `None`: a manager that is always the
    /// leader (a simulator's).
    pub leader_dial: Option<LeaderDial>,
}

/// A channel to the manager at an address, over mutual TLS.
pub type LeaderDial = Arc<dyn Fn(&str) -> Result<tonic::transport::Channel, String> + Send + Sync>;

impl std::fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConfig")
            .field("node_id", &self.node_id)
            .field("leader_dial", &self.leader_dial.is_some())
            .finish_non_exhaustive()
    }
}

/// The control API, free of any transport.
pub struct ControlApi {
    replica: Arc<Replica>,
    config: ControlConfig,
    rng: Mutex<StdRng>,
}

pub(crate) fn action(kind: store_action::Kind, target: impl Into<Object>) -> StoreAction {
    StoreAction {
        kind: kind as i32,
        target: Some(target.into()),
    }
}

impl ControlApi {
    /// The control API over `replica`; object ids come from `ids`.
    pub fn new(replica: Arc<Replica>, config: ControlConfig, ids: StdRng) -> ControlApi {
        ControlApi {
            replica,
            config,
            rng: Mutex::new(ids),
        }
    }

    /// A control client of the leader, when this manager does not lead
    /// and one is known.
    pub(crate) fn leader_control(
        &self,
    ) -> Option<Result<shoal_api::control_client::ControlClient<tonic::transport::Channel>, ApiError>>
    {
        let dial = self.config.leader_dial.as_ref()?;
        if self.replica.is_leader() {
            return None;
        }
        let Some((_, addr)) = self.replica.leader() else {
            return Some(Err(ApiError::Unavailable(
                "no manager leads the cluster now (an election is under way); try again".into(),
            )));
        };
        Some(
            dial(&addr)
                .map(|c| {
                    shoal_api::control_client::ControlClient::new(c)
                        .max_decoding_message_size(16 << 20)
                })
                .map_err(|e| ApiError::Unavailable(format!("the leader at {addr}: {e}"))),
        )
    }

    fn new_id(&self) -> String {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        new_object_id(&mut *rng)
    }

    /// A generator of its own, seeded from this one's, for a stream's ids.
    fn id_source(&self) -> StdRng {
        use rand::{Rng, SeedableRng};
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        StdRng::seed_from_u64(rng.gen())
    }

    /// The store's current view (O(1); never waits for a writer).
    fn view(&self) -> View {
        self.replica.store().view()
    }

    async fn commit(&self, actions: Vec<StoreAction>) -> Result<u64, ApiError> {
        Ok(self
            .replica
            .propose(Transaction {
                leader_term: 0,
                actions,
                timestamp_ms: 0,
            })
            .await?)
    }

    fn lookup(&self, kind: ObjectKind, reference: &str) -> Result<Object, ApiError> {
        let reference = if kind == ObjectKind::Node && reference == "self" {
            self.config.node_id.as_str()
        } else {
            reference
        };
        Ok(self.view().lookup(kind, reference)?)
    }

    fn service(&self, reference: &str) -> Result<Service, ApiError> {
        match self.lookup(ObjectKind::Service, reference)?.kind {
            Some(object::Kind::Service(s)) => Ok(*s),
            _ => Err(ApiError::Internal("lookup returned another kind".into())),
        }
    }

    /// Resolves the spec's network references (names or ids) to ids, and
    /// returns CHECK actions pinning each network's version.
    fn resolve_networks(
        &self,
        view: &View,
        spec: &mut ServiceSpec,
    ) -> Result<Vec<StoreAction>, ApiError> {
        let mut checks = Vec::new();
        let Some(task) = spec.task.as_mut() else {
            return Ok(checks);
        };
        for (i, attachment) in task.networks.iter_mut().enumerate() {
            let network = match view.lookup(ObjectKind::Network, &attachment.target) {
                Ok(Object {
                    kind: Some(object::Kind::Network(n)),
                }) => n,
                _ => {
                    return Err(InvalidSpec {
                        field: format!("network[{i}]"),
                        rule: format!("network {:?} does not exist", attachment.target),
                    }
                    .into())
                }
            };
            attachment.target = network.id.clone();
            checks.push(action(store_action::Kind::Check, network));
        }
        Ok(checks)
    }

    fn name_taken(&self, view: &View, kind: ObjectKind, name: &str) -> Result<(), ApiError> {
        let owner = match kind {
            ObjectKind::Service | ObjectKind::Network => view.name_owner(kind, name),
            _ => None,
        };
        match owner {
            Some(id) => Err(ApiError::Propose(shoal_raft::ProposeError::Txn(
                shoal_store::TxnError::NameInUse {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    id: id.to_string(),
                },
            ))),
            None => Ok(()),
        }
    }

    fn read_service(&self, id: &str) -> Result<Service, ApiError> {
        self.view()
            .service(id)
            .cloned()
            .ok_or_else(|| ApiError::Internal(format!("service {id} vanished after its write")))
    }

    fn summarize(view: &shoal_store::Tables, service: &Service) -> ServiceSummary {
        let tasks: Vec<Task> = view.tasks_of_service(&service.id).collect();
        let running = tasks
            .iter()
            .filter(|t| {
                t.desired_state == TaskState::Running as i32
                    && t.status.as_ref().map(|s| s.state) == Some(TaskState::Running as i32)
            })
            .count() as u64;
        let spec = service.spec.clone().unwrap_or_default();
        // A job's runs of its current spec that completed (a run of an
        // older spec does not count once `--force` asked for new ones).
        let completed = tasks
            .iter()
            .filter(|t| t.desired_state == TaskState::Complete as i32)
            .filter(|t| service.runs_current(t, t.spec.as_ref().unwrap_or(&Default::default())))
            .count() as u64;
        let job = spec.mode == ServiceMode::ReplicatedJob as i32;
        let desired = match spec.replicas_wanted() {
            // A job runs at most max_concurrent at once.
            Some(total) if job && spec.max_concurrent > 0 => spec.max_concurrent.min(total),
            Some(total) => total,
            None => tasks
                .iter()
                .filter(|t| t.desired_state == TaskState::Running as i32)
                .count() as u64,
        };
        ServiceSummary {
            service: Some(service.clone()),
            running_tasks: running,
            desired_tasks: desired,
            completed_tasks: completed,
        }
    }
}

pub(crate) fn matches_prefixes(prefixes: &[String], id: &str, name: Option<&str>) -> bool {
    prefixes.is_empty()
        || prefixes
            .iter()
            .any(|p| id.starts_with(p.as_str()) || name.is_some_and(|n| n.starts_with(p.as_str())))
}

/// The cluster as the control API shows it: without its CA's key.
pub(crate) fn without_secrets(mut cluster: shoal_api::Cluster) -> shoal_api::Cluster {
    if let Some(ca) = cluster.root_ca.as_mut() {
        ca.key_pem.clear();
    }
    // With the key, a nonce gives the token: neither is shown.
    cluster.join_tokens = None;
    cluster
}

/// Fills in what a user may leave out.
pub(crate) fn with_service_defaults(mut spec: ServiceSpec) -> ServiceSpec {
    if spec.is_replicated() && spec.replicas.is_none() {
        spec.replicas = Some(1);
    }
    spec
}
