//! The control API: what `shoal` (the CLI) talks to.
//!
//! Owns: every object's `spec` (and a service's `previous_spec`). Nothing else.
//!
//! Each write reads a consistent view, validates, builds one transaction whose
//! actions carry the versions it read (plus CHECK actions for the objects it
//! relied on, such as a service's networks), and proposes it. The store
//! re-checks those versions when the entry is applied, so two writers never
//! silently overwrite each other and a spec that passed validation cannot be
//! applied against a world that changed under it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal_api::control_server::Control;
use shoal_api::{
    object, store_action, ClusterResponse, CreateNetworkRequest, CreateServiceRequest,
    GetClusterRequest, GetRequest, ListNetworksResponse, ListNodesResponse, ListRequest,
    ListServicesResponse, ListTasksRequest, ListTasksResponse, Network, NetworkResponse,
    NodeResponse, NodeRole, Object, ObjectKind, RemoveRequest, RemoveResponse, Service,
    ServiceMode, ServiceResponse, ServiceSpec, ServiceSummary, StoreAction, Task, TaskResponse,
    TaskState, Transaction, UpdateClusterRequest, UpdateNodeRequest, UpdateServiceRequest,
    VersionRequest, VersionResponse, WatchEvent, WatchRequest,
};
use shoal_raft::Replica;
use shoal_store::{Event, View};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::identity::new_object_id;
use crate::limits::Limits;
use crate::validate::{
    parse_subnet, subnets_overlap, validate_cluster_spec, validate_network_spec,
    validate_node_spec, validate_service_spec, InvalidSpec,
};

/// Events buffered per watch stream before the sender waits for the client.
const WATCH_STREAM_BUFFER: usize = 1_024;

/// What the control API needs to know about the node it runs on.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The node id `self` refers to.
    pub node_id: String,
    /// Where this node's agent keeps task directories (their logs).
    pub tasks_dir: std::path::PathBuf,
}

/// The control API service.
pub struct ControlApi {
    replica: Arc<Replica>,
    config: ControlConfig,
    rng: Mutex<StdRng>,
}

type ApiResult<T> = Result<Response<T>, Status>;

fn action(kind: store_action::Kind, target: impl Into<Object>) -> StoreAction {
    StoreAction {
        kind: kind as i32,
        target: Some(target.into()),
    }
}

impl ControlApi {
    pub fn new(replica: Arc<Replica>, config: ControlConfig) -> ControlApi {
        ControlApi {
            replica,
            config,
            rng: Mutex::new(StdRng::from_entropy()),
        }
    }

    fn new_id(&self) -> String {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        new_object_id(&mut *rng)
    }

    /// The store's view, for a handler: taking it may wait behind a writer
    /// that waits for a long reader (a reconciler's pass), so the wait runs
    /// off the worker's queue and other requests (heartbeats) go on.
    fn view(&self) -> View<'_> {
        shoal_raft::long_work(|| self.replica.store().view())
    }

    async fn commit(&self, actions: Vec<StoreAction>) -> Result<u64, ApiError> {
        Ok(self
            .replica
            .propose(Transaction {
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
        view: &View<'_>,
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

    fn name_taken(&self, view: &View<'_>, kind: ObjectKind, name: &str) -> Result<(), ApiError> {
        let owner = match kind {
            ObjectKind::Service => view.service_by_name(name).map(|s| s.id.clone()),
            ObjectKind::Network => view.network_by_name(name).map(|n| n.id.clone()),
            _ => None,
        };
        match owner {
            Some(id) => Err(ApiError::Propose(shoal_raft::ProposeError::Txn(
                shoal_store::TxnError::NameInUse {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    id,
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

    fn summarize(view: &View<'_>, service: &Service) -> ServiceSummary {
        let tasks: Vec<Task> = view.tasks_of_service(&service.id).collect();
        let running = tasks
            .iter()
            .filter(|t| {
                t.desired_state == TaskState::Running as i32
                    && t.status.as_ref().map(|s| s.state) == Some(TaskState::Running as i32)
            })
            .count() as u64;
        let spec = service.spec.clone().unwrap_or_default();
        let desired = match ServiceMode::try_from(spec.mode) {
            Ok(ServiceMode::Replicated | ServiceMode::ReplicatedJob) => {
                spec.replicas.unwrap_or(1).max(0) as u64
            }
            _ => tasks
                .iter()
                .filter(|t| t.desired_state == TaskState::Running as i32)
                .count() as u64,
        };
        ServiceSummary {
            service: Some(service.clone()),
            running_tasks: running,
            desired_tasks: desired,
        }
    }
}

fn matches_prefixes(prefixes: &[String], id: &str, name: Option<&str>) -> bool {
    prefixes.is_empty()
        || prefixes
            .iter()
            .any(|p| id.starts_with(p.as_str()) || name.is_some_and(|n| n.starts_with(p.as_str())))
}

/// A list answer: a stream of pages.
type PageStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Encoded bytes of one page of a list at most (unless one object alone is
/// larger): well under the 16 MiB a message may carry.
const MAX_PAGE_BYTES: usize = 4 << 20;

/// Cuts `items` into pages of at most [`MAX_PAGE_BYTES`] (at least one item
/// each; one empty page for an empty list, so a client always gets an
/// answer) and streams them.
fn pages<T, R>(items: Vec<T>, wrap: fn(Vec<T>) -> R) -> Response<PageStream<R>>
where
    T: prost::Message,
    R: Send + 'static,
{
    let mut out: Vec<Result<R, Status>> = Vec::new();
    let mut page = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = item.encoded_len();
        if !page.is_empty() && bytes + size > MAX_PAGE_BYTES {
            out.push(Ok(wrap(std::mem::take(&mut page))));
            bytes = 0;
        }
        bytes += size;
        page.push(item);
    }
    if !page.is_empty() || out.is_empty() {
        out.push(Ok(wrap(page)));
    }
    Response::new(Box::pin(tokio_stream::iter(out)))
}

/// Fills in what a user may leave out.
fn with_service_defaults(mut spec: ServiceSpec) -> ServiceSpec {
    let replicated = matches!(
        ServiceMode::try_from(spec.mode),
        Ok(ServiceMode::Replicated | ServiceMode::ReplicatedJob)
    );
    if replicated && spec.replicas.is_none() {
        spec.replicas = Some(1);
    }
    spec
}

#[tonic::async_trait]
impl Control for ControlApi {
    async fn create_service(
        &self,
        request: Request<CreateServiceRequest>,
    ) -> ApiResult<ServiceResponse> {
        let spec = request.into_inner().spec.unwrap_or_default();
        validate_service_spec(&spec).map_err(ApiError::from)?;
        let mut spec = with_service_defaults(spec);
        let id = self.new_id();
        let actions = {
            let view = self.view();
            let name = spec
                .annotations
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            self.name_taken(&view, ObjectKind::Service, &name)?;
            Limits::of(view.cluster())
                .check_service(&view, &spec, None)
                .map_err(ApiError::from)?;
            let mut actions = self.resolve_networks(&view, &mut spec)?;
            let service = Service {
                id: id.clone(),
                spec: Some(spec),
                ..Default::default()
            };
            actions.push(action(store_action::Kind::Create, service));
            actions
        };
        self.commit(actions).await?;
        Ok(Response::new(ServiceResponse {
            service: Some(self.read_service(&id)?),
        }))
    }

    async fn get_service(&self, request: Request<GetRequest>) -> ApiResult<ServiceResponse> {
        let service = self.service(&request.into_inner().reference)?;
        Ok(Response::new(ServiceResponse {
            service: Some(service),
        }))
    }

    async fn update_service(
        &self,
        request: Request<UpdateServiceRequest>,
    ) -> ApiResult<ServiceResponse> {
        let req = request.into_inner();
        let spec = req.spec.unwrap_or_default();
        validate_service_spec(&spec).map_err(ApiError::from)?;
        let mut spec = with_service_defaults(spec);
        let actions = {
            let view = self.view();
            let current = view.service(&req.service_id).cloned().ok_or_else(|| {
                ApiError::Lookup(shoal_store::LookupError::NotFound {
                    kind: "service".into(),
                    reference: req.service_id.clone(),
                })
            })?;
            let old_spec = current.spec.clone().unwrap_or_default();
            if old_spec.mode != spec.mode {
                let name = |m: i32| {
                    ServiceMode::try_from(m)
                        .map(|m| m.as_str_name().to_ascii_lowercase())
                        .unwrap_or_default()
                };
                return Err(ApiError::from(InvalidSpec {
                    field: "mode".into(),
                    rule: format!(
                        "a service's mode cannot change ({} to {}); remove the service and create it again",
                        name(old_spec.mode),
                        name(spec.mode)
                    ),
                })
                .into());
            }
            Limits::of(view.cluster())
                .check_service(&view, &spec, Some(&current.id))
                .map_err(ApiError::from)?;
            let mut actions = self.resolve_networks(&view, &mut spec)?;
            let mut service = current.clone();
            if old_spec != spec {
                service.previous_spec = Some(old_spec);
            }
            service.spec = Some(spec);
            // The version the client read, not the one we see now: a change
            // in between must fail as a conflict.
            if let Some(meta) = service.meta.as_mut() {
                meta.version = req.version;
            }
            actions.push(action(store_action::Kind::Update, service));
            actions
        };
        self.commit(actions).await?;
        Ok(Response::new(ServiceResponse {
            service: Some(self.read_service(&req.service_id)?),
        }))
    }

    async fn remove_service(&self, request: Request<RemoveRequest>) -> ApiResult<RemoveResponse> {
        let service = self.service(&request.into_inner().reference)?;
        let id = service.id.clone();
        self.commit(vec![action(store_action::Kind::Remove, service)])
            .await?;
        Ok(Response::new(RemoveResponse { id }))
    }

    type ListServicesStream = PageStream<ListServicesResponse>;

    async fn list_services(
        &self,
        request: Request<ListRequest>,
    ) -> ApiResult<Self::ListServicesStream> {
        let prefixes = request.into_inner().name_prefixes;
        let view = self.view();
        let services = view
            .services()
            .filter(|s| {
                let name = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .map(|a| a.name.as_str());
                matches_prefixes(&prefixes, &s.id, name)
            })
            .map(|s| Self::summarize(&view, s))
            .collect();
        Ok(pages(services, |services| ListServicesResponse {
            services,
        }))
    }

    async fn get_task(&self, request: Request<GetRequest>) -> ApiResult<TaskResponse> {
        match self
            .lookup(ObjectKind::Task, &request.into_inner().reference)?
            .kind
        {
            Some(object::Kind::Task(task)) => Ok(Response::new(TaskResponse { task: Some(*task) })),
            _ => Err(ApiError::Internal("lookup returned another kind".into()).into()),
        }
    }

    type ListTasksStream = PageStream<ListTasksResponse>;

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> ApiResult<Self::ListTasksStream> {
        let req = request.into_inner();
        let service_id = if req.service.is_empty() {
            None
        } else {
            Some(
                self.lookup(ObjectKind::Service, &req.service)?
                    .id()
                    .to_string(),
            )
        };
        let node_id = if req.node.is_empty() {
            None
        } else {
            Some(self.lookup(ObjectKind::Node, &req.node)?.id().to_string())
        };
        let view = self.view();
        let candidates: Vec<Task> = match (&service_id, &node_id) {
            (Some(s), _) => view.tasks_of_service(s).collect(),
            (None, Some(n)) => view.tasks_of_node(n).collect(),
            (None, None) => view.tasks().collect(),
        };
        let tasks = candidates
            .into_iter()
            .filter(|t| node_id.as_ref().is_none_or(|n| &t.node_id == n))
            .filter(|t| {
                req.desired_states.is_empty() || req.desired_states.contains(&t.desired_state)
            })
            .collect();
        Ok(pages(tasks, |tasks| ListTasksResponse { tasks }))
    }

    async fn get_node(&self, request: Request<GetRequest>) -> ApiResult<NodeResponse> {
        match self
            .lookup(ObjectKind::Node, &request.into_inner().reference)?
            .kind
        {
            Some(object::Kind::Node(node)) => Ok(Response::new(NodeResponse { node: Some(*node) })),
            _ => Err(ApiError::Internal("lookup returned another kind".into()).into()),
        }
    }

    type ListNodesStream = PageStream<ListNodesResponse>;

    async fn list_nodes(&self, request: Request<ListRequest>) -> ApiResult<Self::ListNodesStream> {
        let prefixes = request.into_inner().name_prefixes;
        let nodes = self
            .view()
            .nodes()
            .filter(|n| matches_prefixes(&prefixes, &n.id, n.name()))
            .cloned()
            .collect();
        Ok(pages(nodes, |nodes| ListNodesResponse { nodes }))
    }

    async fn update_node(&self, request: Request<UpdateNodeRequest>) -> ApiResult<NodeResponse> {
        let req = request.into_inner();
        let spec = req.spec.unwrap_or_default();
        validate_node_spec(&spec).map_err(ApiError::from)?;
        let node = {
            let view = self.view();
            let mut node = view.node(&req.node_id).cloned().ok_or_else(|| {
                ApiError::Lookup(shoal_store::LookupError::NotFound {
                    kind: "node".into(),
                    reference: req.node_id.clone(),
                })
            })?;
            let managers = view
                .nodes()
                .filter(|n| n.role == NodeRole::Manager as i32)
                .count();
            if node.role == NodeRole::Manager as i32
                && spec.desired_role == NodeRole::Worker as i32
                && managers <= 1
            {
                return Err(ApiError::Refused(format!(
                    "node {} is the last manager of the cluster and cannot be demoted",
                    node.id
                ))
                .into());
            }
            node.spec = Some(spec);
            if let Some(meta) = node.meta.as_mut() {
                meta.version = req.version;
            }
            node
        };
        let id = node.id.clone();
        self.commit(vec![action(store_action::Kind::Update, node)])
            .await?;
        let node = self.view().node(&id).cloned();
        Ok(Response::new(NodeResponse { node }))
    }

    async fn remove_node(
        &self,
        request: Request<shoal_api::RemoveNodeRequest>,
    ) -> ApiResult<RemoveResponse> {
        let req = request.into_inner();
        let node = match self.lookup(ObjectKind::Node, &req.reference)?.kind {
            Some(object::Kind::Node(n)) => n,
            _ => return Err(ApiError::Internal("lookup returned another kind".into()).into()),
        };
        if node.id == self.config.node_id {
            return Err(ApiError::Refused(format!(
                "node {} is the one this manager runs on and cannot be removed",
                node.id
            ))
            .into());
        }
        let down = node.status.as_ref().map(|s| s.state)
            == Some(shoal_api::node_status::State::Down as i32);
        if !down && !req.force {
            return Err(ApiError::Refused(format!(
                "node {} is not down: drain it first, or use --force to remove a live node",
                req.reference
            ))
            .into());
        }
        let id = node.id.clone();
        self.commit(vec![action(store_action::Kind::Remove, node)])
            .await?;
        Ok(Response::new(RemoveResponse { id }))
    }

    async fn create_network(
        &self,
        request: Request<CreateNetworkRequest>,
    ) -> ApiResult<NetworkResponse> {
        let mut spec = request.into_inner().spec.unwrap_or_default();
        if spec.driver.is_empty() {
            spec.driver = "overlay".into();
        }
        validate_network_spec(&spec).map_err(ApiError::from)?;
        let id = self.new_id();
        let mut actions = Vec::new();
        {
            let view = self.view();
            let name = spec
                .annotations
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            self.name_taken(&view, ObjectKind::Network, &name)?;
            if let Ok(mine) = parse_subnet(&spec.subnet) {
                for other in view.networks() {
                    let other_spec = other.spec.clone().unwrap_or_default();
                    if let Ok(theirs) = parse_subnet(&other_spec.subnet) {
                        if subnets_overlap(mine, theirs) {
                            let other_name =
                                other_spec.annotations.map(|a| a.name).unwrap_or_default();
                            return Err(ApiError::from(InvalidSpec {
                                field: "subnet".into(),
                                rule: format!(
                                    "{} overlaps {} of network {other_name}",
                                    spec.subnet, other_spec.subnet
                                ),
                            })
                            .into());
                        }
                        // Pin the networks we compared against.
                        actions.push(action(store_action::Kind::Check, other.clone()));
                    }
                }
            }
        }
        let network = Network {
            id: id.clone(),
            spec: Some(spec),
            ..Default::default()
        };
        actions.push(action(store_action::Kind::Create, network));
        self.commit(actions).await?;
        let network = self.view().network(&id).cloned();
        Ok(Response::new(NetworkResponse { network }))
    }

    async fn get_network(&self, request: Request<GetRequest>) -> ApiResult<NetworkResponse> {
        match self
            .lookup(ObjectKind::Network, &request.into_inner().reference)?
            .kind
        {
            Some(object::Kind::Network(n)) => {
                Ok(Response::new(NetworkResponse { network: Some(*n) }))
            }
            _ => Err(ApiError::Internal("lookup returned another kind".into()).into()),
        }
    }

    type ListNetworksStream = PageStream<ListNetworksResponse>;

    async fn list_networks(
        &self,
        request: Request<ListRequest>,
    ) -> ApiResult<Self::ListNetworksStream> {
        let prefixes = request.into_inner().name_prefixes;
        let networks = self
            .view()
            .networks()
            .filter(|n| {
                let name = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .map(|a| a.name.as_str());
                matches_prefixes(&prefixes, &n.id, name)
            })
            .cloned()
            .collect();
        Ok(pages(networks, |networks| ListNetworksResponse {
            networks,
        }))
    }

    async fn remove_network(&self, request: Request<RemoveRequest>) -> ApiResult<RemoveResponse> {
        let reference = request.into_inner().reference;
        let network = self.lookup(ObjectKind::Network, &reference)?;
        let id = network.id().to_string();
        {
            let view = self.view();
            let users: Vec<String> = view
                .services()
                .filter(|s| {
                    s.spec
                        .as_ref()
                        .and_then(|s| s.task.as_ref())
                        .is_some_and(|t| t.networks.iter().any(|n| n.target == id))
                })
                .filter_map(|s| {
                    s.spec
                        .as_ref()?
                        .annotations
                        .as_ref()
                        .map(|a| a.name.clone())
                })
                .collect();
            if !users.is_empty() {
                return Err(ApiError::Refused(format!(
                    "network {reference} is in use by service {}",
                    users.join(", ")
                ))
                .into());
            }
        }
        self.commit(vec![action(store_action::Kind::Remove, network)])
            .await?;
        Ok(Response::new(RemoveResponse { id }))
    }

    async fn get_cluster(
        &self,
        _request: Request<GetClusterRequest>,
    ) -> ApiResult<ClusterResponse> {
        let cluster = self.view().cluster().cloned();
        if cluster.is_none() {
            return Err(Status::unavailable("the cluster is still being created"));
        }
        Ok(Response::new(ClusterResponse { cluster }))
    }

    async fn update_cluster(
        &self,
        request: Request<UpdateClusterRequest>,
    ) -> ApiResult<ClusterResponse> {
        let req = request.into_inner();
        let spec = req.spec.unwrap_or_default();
        validate_cluster_spec(&spec).map_err(ApiError::from)?;
        let mut cluster = self
            .view()
            .cluster()
            .cloned()
            .ok_or_else(|| ApiError::Refused("the cluster is still being created".into()))?;
        if cluster.id != req.cluster_id {
            return Err(ApiError::Lookup(shoal_store::LookupError::NotFound {
                kind: "cluster".into(),
                reference: req.cluster_id,
            })
            .into());
        }
        // The cluster keeps its name: it is not the user's to change.
        let mut spec = spec;
        spec.annotations = cluster.spec.as_ref().and_then(|s| s.annotations.clone());
        cluster.spec = Some(spec);
        if let Some(meta) = cluster.meta.as_mut() {
            meta.version = req.version;
        }
        self.commit(vec![action(store_action::Kind::Update, cluster)])
            .await?;
        Ok(Response::new(ClusterResponse {
            cluster: self.view().cluster().cloned(),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchRequest>) -> ApiResult<Self::WatchStream> {
        let include_existing = request.into_inner().include_existing;
        let store = Arc::clone(self.replica.store());
        let (initial, mut stream) = if include_existing {
            let (objects, version, stream) = store.view_and_watch();
            let mut initial: Vec<WatchEvent> = objects
                .into_iter()
                .map(|object| {
                    let created = object.meta().map_or(0, |m| m.created_at_ms);
                    Event::Change {
                        action: shoal_api::watch_event::Action::Create,
                        version: object.version(),
                        object,
                        timestamp_ms: created,
                    }
                    .to_proto()
                })
                .collect();
            initial.push(Event::Commit { version }.to_proto());
            (initial, stream)
        } else {
            (Vec::new(), store.watch())
        };
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_STREAM_BUFFER);
        tokio::spawn(async move {
            for event in initial {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    // Shutdown first: the client went away.
                    _ = tx.closed() => return,
                    next = stream.next() => next,
                };
                let item = next
                    .map(|e| e.to_proto())
                    .map_err(|e| Status::aborted(e.to_string()));
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type LogsStream = Pin<Box<dyn Stream<Item = Result<shoal_api::LogLine, Status>> + Send>>;

    async fn logs(&self, request: Request<shoal_api::LogsRequest>) -> ApiResult<Self::LogsStream> {
        let req = request.into_inner();
        let selector = match (req.service.is_empty(), req.task.is_empty()) {
            (false, true) => crate::logs::Selector::Service(self.service(&req.service)?.id),
            (true, false) => crate::logs::Selector::Task(
                self.lookup(ObjectKind::Task, &req.task)?.id().to_string(),
            ),
            _ => {
                return Err(ApiError::from(InvalidSpec {
                    field: "logs".into(),
                    rule: "name one service or one task".into(),
                })
                .into())
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_STREAM_BUFFER);
        tokio::spawn(crate::logs::stream(
            Arc::clone(self.replica.store()),
            self.config.tasks_dir.clone(),
            self.config.node_id.clone(),
            selector,
            crate::logs::Reading {
                follow: req.follow,
                tail: req.tail,
            },
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn version(&self, _request: Request<VersionRequest>) -> ApiResult<VersionResponse> {
        let cluster_id = self
            .view()
            .cluster()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        Ok(Response::new(VersionResponse {
            version: shoal_api::VERSION.to_string(),
            node_id: self.config.node_id.clone(),
            cluster_id,
        }))
    }
}
