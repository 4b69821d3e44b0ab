//! The tables and their indexes, and the rules for applying one transaction.
//!
//! Everything here is deterministic: the same batches applied in the same order
//! give the same tables on every manager.

use std::sync::Arc;

use prost::Message;
use shoal_api::{
    object, store_action, watch_event, Batch, Cluster, Meta, Network, Node, Object, ObjectKind,
    Service, SnapshotTask, StoreAction, StoreSnapshot, Task, TaskSpec, Transaction,
};

use crate::error::{LookupError, TxnError};
use crate::key::Key;
use crate::watch::Event;

/// Maps that hash with Fx: every key is an id or name the store indexes,
/// hashed on every write, and SipHash was most of an index update. Nothing
/// reads these maps in iteration order, so the hash cannot leak into what
/// the store returns.
type HashMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;
type HashSet<K> = std::collections::HashSet<K, rustc_hash::FxBuildHasher>;

/// The tables' own maps are persistent (imbl): a copy of [`Tables`] shares
/// every node with the original and costs a handful of pointer copies, and a
/// write copies only the path to what it changes. That is what lets a reader
/// keep a view as long as it likes while commits go on (see [`crate::Store`]).
type Ordered<K, V> = imbl::OrdMap<K, V>;
type OrderedSet<K> = imbl::OrdSet<K>;
type Hashed<K, V> =
    imbl::GenericHashMap<K, V, rustc_hash::FxBuildHasher, imbl::shared_ptr::DefaultSharedPtr>;

/// A table of one named kind: objects by id, and the unique-name index.
/// Objects and names are shared (`Arc`): a write copies the path of nodes
/// to what it changes, and copying a node then copies pointers, never the
/// objects they point to (a network created among 50,000 deep-copied 64
/// networks and their names, the most of a write's cost). Keys are inline
/// ([`Key`]): copying a node copies their bytes, touching nothing else.
#[derive(Debug, Clone)]
struct Table<T: Clone> {
    by_id: Ordered<Key, Arc<T>>,
    /// Lower-cased name → id. Names compare case-insensitively, as DNS does.
    /// Ordered rather than hashed: a B-tree leaf holds its keys and ids
    /// inline, where a hash trie's inner nodes hold 32 pointers each, and
    /// copying those (a reference count touched per pointer, each on its
    /// own cache line) made the name index a third of an apply.
    by_name: Ordered<Key, Key>,
}

impl<T: Clone> Default for Table<T> {
    fn default() -> Self {
        Table {
            by_id: Ordered::new(),
            by_name: Ordered::new(),
        }
    }
}

/// A task as stored: the task without its spec, protobuf-encoded, and the spec
/// shared with every other task made from the same one.
///
/// Why encoded: a decoded `Task` is 664 bytes even with no spec (prost keeps
/// every nested message inline), its encoding about 130. At a million tasks
/// that is the difference between missing and meeting the ≤ 1 KiB per task
/// target; a read pays about a microsecond to decode.
#[derive(Debug, Clone)]
struct StoredTask {
    /// Shared, so copying a node of the persistent table copies no bytes.
    encoded: Arc<[u8]>,
    /// The task's meta, kept decoded: version checks and updates read it on
    /// every write, and must not pay a decode for it.
    meta: Meta,
    spec: Arc<TaskSpec>,
    /// Its keys in the service and node indexes (shared with them): an
    /// update finds what to re-index without decoding the old task.
    service: Option<Key>,
    node: Option<Key>,
    /// Its slot, and whether it is PENDING: its keys in the slot and
    /// pending indexes.
    slot: u64,
    pending: bool,
}

impl StoredTask {
    /// The task without its spec. The bytes were encoded by `insert` (or
    /// checked when a snapshot was loaded), so decoding cannot fail.
    fn bare(&self) -> Task {
        Task::decode(&*self.encoded).unwrap_or_default()
    }

    fn to_task(&self) -> Task {
        let mut t = self.bare();
        t.spec = Some((*self.spec).clone());
        t
    }
}

/// Task ids per node; per service, (slot, id) pairs (slot 0 for tasks
/// without one), so a slot's tasks are a range of their service's set and
/// the slot index costs a number per task, not a second index.
type TaskIndex<M = Key> = Hashed<Key, OrderedSet<M>>;
type ServiceIndex = TaskIndex<(u64, Key)>;

/// Adds `member` under `key` (none for an empty key); returns the index's
/// key.
fn index_under<M: Ord + Clone>(index: &mut TaskIndex<M>, key: &str, member: M) -> Option<Key> {
    if key.is_empty() {
        return None;
    }
    if let Some(set) = index.get_mut(key) {
        set.insert(member);
        return index.get_key_value(key).map(|(k, _)| k.clone());
    }
    let key = Key::from(key);
    index.insert(key.clone(), OrderedSet::unit(member));
    Some(key)
}

fn unindex<M: Ord + Clone>(index: &mut TaskIndex<M>, key: Option<&Key>, member: &M) {
    let Some(key) = key else { return };
    if let Some(set) = index.get_mut(key) {
        set.remove(member);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// Moves a member from `old` to `new` in `index`, unless neither the key
/// nor the member changed.
fn reindex<M: Ord + Clone>(
    index: &mut TaskIndex<M>,
    old: Option<Key>,
    old_member: &M,
    new: &str,
    new_member: M,
) -> Option<Key> {
    if old.as_deref().unwrap_or("") == new && *old_member == new_member {
        return old;
    }
    unindex(index, old.as_ref(), old_member);
    index_under(index, new, new_member)
}

fn is_pending(task: &Task) -> bool {
    task.status.as_ref().map_or(0, |s| s.state) == shoal_api::TaskState::Pending as i32
}

#[derive(Debug, Default, Clone)]
struct TaskTable {
    by_id: Ordered<Key, StoredTask>,
    by_service: ServiceIndex,
    by_node: TaskIndex,
    /// The ids of the tasks observed PENDING: what the scheduler places.
    pending: OrderedSet<Key>,
    /// The last spec seen per service: a new task whose spec equals it shares it.
    spec_cache: Hashed<String, Arc<TaskSpec>>,
}

impl TaskTable {
    /// Writes a task committed at `version`, at `now_ms`, and returns a copy
    /// of it as written when `copy` (for the watch). Its meta is made here:
    /// created when first written, updated now. The stored task is found
    /// once: this is the largest table, searched by string compares, and an
    /// update changes it in place.
    fn write(&mut self, mut task: Task, version: u64, now_ms: i64, copy: bool) -> Option<Task> {
        let key = task.id.as_str();
        let existing = self.by_id.get_key_value_mut(key);
        task.meta = Some(Meta {
            version,
            created_at_ms: existing
                .as_ref()
                .map_or(now_ms, |(_, stored)| stored.meta.created_at_ms),
            updated_at_ms: now_ms,
        });
        let written = copy.then(|| task.clone());
        // A task's spec never changes once it is made: an update that
        // carries none keeps the stored one, so writers that change only
        // state need not copy (and the store need not compare) the spec.
        let spec = match (task.spec.take(), &existing) {
            (None, Some((_, stored))) => Arc::clone(&stored.spec),
            (spec, _) => share_spec(
                &mut self.spec_cache,
                &task.service_id,
                spec.unwrap_or_default(),
            ),
        };
        match existing {
            Some((id, stored)) => {
                stored.service = reindex(
                    &mut self.by_service,
                    stored.service.take(),
                    &(stored.slot, id.clone()),
                    &task.service_id,
                    (task.slot, id.clone()),
                );
                stored.node = reindex(
                    &mut self.by_node,
                    stored.node.take(),
                    id,
                    &task.node_id,
                    id.clone(),
                );
                stored.slot = task.slot;
                let pending = is_pending(&task);
                if pending != stored.pending {
                    stored.pending = pending;
                    if pending {
                        self.pending.insert(id.clone());
                    } else {
                        self.pending.remove(&**id);
                    }
                }
                stored.encoded = task.encode_to_vec().into();
                stored.meta = task.meta.unwrap_or_default();
                stored.spec = spec;
            }
            None => self.insert_new(task, spec),
        }
        written
    }

    /// Stores and indexes a task (without its spec) that is not in the
    /// table yet.
    fn insert_new(&mut self, task: Task, spec: Arc<TaskSpec>) {
        debug_assert!(task.spec.is_none());
        let id = Key::from(task.id.as_str());
        let stored = StoredTask {
            encoded: task.encode_to_vec().into(),
            meta: task.meta.unwrap_or_default(),
            service: index_under(
                &mut self.by_service,
                &task.service_id,
                (task.slot, id.clone()),
            ),
            node: index_under(&mut self.by_node, &task.node_id, id.clone()),
            slot: task.slot,
            pending: is_pending(&task),
            spec,
        };
        if stored.pending {
            self.pending.insert(id.clone());
        }
        self.by_id.insert(id, stored);
    }

    fn remove(&mut self, id: &str) -> Option<StoredTask> {
        let (key, old) = self.by_id.remove_with_key(id)?;
        if old.pending {
            self.pending.remove(id);
        }
        unindex(
            &mut self.by_service,
            old.service.as_ref(),
            &(old.slot, key.clone()),
        );
        unindex(&mut self.by_node, old.node.as_ref(), &key);
        Some(old)
    }
}

/// The spec a new task of `service_id` keeps: the last one seen for that
/// service when it is equal, so the tasks made from one spec share it.
fn share_spec(
    cache: &mut Hashed<String, Arc<TaskSpec>>,
    service_id: &str,
    spec: TaskSpec,
) -> Arc<TaskSpec> {
    match cache.get(service_id) {
        Some(cached) if **cached == spec => Arc::clone(cached),
        _ => {
            let spec = Arc::new(spec);
            cache.insert(service_id.to_string(), Arc::clone(&spec));
            spec
        }
    }
}

/// Every table of the store, at one version.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    version: u64,
    clusters: Table<Cluster>,
    nodes: Table<Node>,
    services: Table<Service>,
    networks: Table<Network>,
    tasks: TaskTable,
}

/// The unique name of a named kind, read in place (no copy of the object).
trait Named {
    fn unique_name(&self) -> Option<&str>;
}

fn annotated(annotations: Option<&shoal_api::Annotations>) -> Option<&str> {
    annotations
        .map(|a| a.name.as_str())
        .filter(|n| !n.is_empty())
}

impl Named for Cluster {
    fn unique_name(&self) -> Option<&str> {
        annotated(self.spec.as_ref()?.annotations.as_ref())
    }
}
impl Named for Service {
    fn unique_name(&self) -> Option<&str> {
        annotated(self.spec.as_ref()?.annotations.as_ref())
    }
}
impl Named for Network {
    fn unique_name(&self) -> Option<&str> {
        annotated(self.spec.as_ref()?.annotations.as_ref())
    }
}
impl Named for Node {
    /// Only a name the user gave: hostnames repeat (two daemons on one
    /// host, cloned machines), and a node is still found by its hostname
    /// when only one has it ([`Tables::lookup`]).
    fn unique_name(&self) -> Option<&str> {
        annotated(self.spec.as_ref()?.annotations.as_ref())
    }
}

/// The name `object` must hold alone among its kind, if any.
fn unique_name_of(object: &Object) -> Option<&str> {
    match &object.kind {
        Some(shoal_api::object::Kind::Node(n)) => n.unique_name(),
        _ => object.name(),
    }
}

/// The ids of the networks a service's tasks attach to.
fn service_networks(service: &Service) -> impl Iterator<Item = &str> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .into_iter()
        .flat_map(|t| t.networks.iter())
        .map(|n| n.target.as_str())
}

fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl Tables {
    /// The raft index of the last entry applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.clusters.by_id.values().next().map(|c| &**c)
    }
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.by_id.get(id).map(|o| &**o)
    }
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.by_id.get(id).map(|o| &**o)
    }
    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.by_id.get(id).map(|o| &**o)
    }
    /// The task with its spec filled in.
    pub fn task(&self, id: &str) -> Option<Task> {
        self.tasks.by_id.get(id).map(StoredTask::to_task)
    }
    /// The task without its spec: for writers that change only its state
    /// (the store keeps the spec of a task updated without one).
    pub fn task_without_spec(&self, id: &str) -> Option<Task> {
        self.tasks.by_id.get(id).map(StoredTask::bare)
    }
    /// The task without its spec, with the spec it shares with the other
    /// tasks made from the same one.
    pub fn task_sharing_spec(&self, id: &str) -> Option<(Task, &Arc<TaskSpec>)> {
        self.tasks.by_id.get(id).map(|t| (t.bare(), &t.spec))
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.by_id.values().map(|o| &**o)
    }
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.by_id.values().map(|o| &**o)
    }
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.by_id.values().map(|o| &**o)
    }
    pub fn task_count(&self) -> usize {
        self.tasks.by_id.len()
    }
    /// Every task, spec filled in, in id order.
    pub fn tasks(&self) -> impl Iterator<Item = Task> + '_ {
        self.tasks.by_id.values().map(StoredTask::to_task)
    }
    /// Every task without its spec, with the spec it shares with the other
    /// tasks made from the same one, in id order: for passes over every task
    /// that must not pay for a copy of each spec.
    pub fn tasks_sharing_specs(&self) -> impl Iterator<Item = (Task, &Arc<TaskSpec>)> + '_ {
        self.tasks.by_id.values().map(|t| (t.bare(), &t.spec))
    }
    /// The tasks of one service without their specs, through the service
    /// index (an update written without a spec keeps the stored one).
    pub fn tasks_of_service_sharing_specs<'a>(
        &'a self,
        service_id: &str,
    ) -> impl Iterator<Item = (Task, &'a Arc<TaskSpec>)> + 'a {
        self.tasks
            .by_service
            .get(service_id)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.tasks.by_id.get(id).map(|t| (t.bare(), &t.spec)))
    }
    /// The tasks of one service, in slot order, through the service index.
    pub fn tasks_of_service<'a>(&'a self, service_id: &str) -> impl Iterator<Item = Task> + 'a {
        self.task_ids_of_service(service_id)
            .filter_map(|id| self.tasks.by_id.get(id).map(StoredTask::to_task))
    }
    /// The tasks assigned to one node, through the node index.
    pub fn tasks_of_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = Task> + 'a {
        self.tasks
            .by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.by_id.get(id).map(StoredTask::to_task))
    }
    /// Every task's id, in id order, without decoding any.
    pub fn task_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.tasks.by_id.keys().map(|id| &**id)
    }
    /// The ids of one service's tasks, in slot order, through the service
    /// index.
    pub fn task_ids_of_service<'a>(
        &'a self,
        service_id: &str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.tasks
            .by_service
            .get(service_id)
            .into_iter()
            .flatten()
            .map(|(_, id)| &**id)
    }
    /// The ids of the tasks of one service's slot (replicated services),
    /// in id order: a range of the service index.
    pub fn task_ids_in_slot<'a>(
        &'a self,
        service_id: &str,
        slot: u64,
    ) -> impl Iterator<Item = &'a str> + 'a {
        let from = (slot, Key::from(""));
        self.tasks
            .by_service
            .get(service_id)
            .filter(|_| slot > 0)
            .into_iter()
            .flat_map(move |set| set.range(from.clone()..))
            .take_while(move |(n, _)| *n == slot)
            .map(|(_, id)| &**id)
    }
    /// The ids of the tasks observed PENDING, in id order, through the
    /// pending index.
    pub fn pending_task_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.tasks.pending.iter().map(|id| &**id)
    }
    /// The ids and versions of the tasks assigned to one node, without
    /// decoding any: for a reader that only wants what changed.
    pub fn task_versions_of_node<'a>(
        &'a self,
        node_id: &str,
    ) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.tasks
            .by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let t = self.tasks.by_id.get(id)?;
                Some((&**id, t.meta.version))
            })
    }
    /// A service whose name is `name` (case-insensitive).
    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        let id = self.services.by_name.get(name_key(name).as_str())?;
        self.services.by_id.get(&**id).map(|o| o.as_ref())
    }
    /// A network whose name is `name` (case-insensitive).
    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        let id = self.networks.by_name.get(name_key(name).as_str())?;
        self.networks.by_id.get(&**id).map(|o| o.as_ref())
    }

    /// Resolves a reference the way docker does: a full id, else an exact name,
    /// else a unique id prefix.
    pub fn lookup(&self, kind: ObjectKind, reference: &str) -> Result<Object, LookupError> {
        let not_found = || LookupError::NotFound {
            kind: kind.to_string(),
            reference: reference.to_string(),
        };
        if reference.is_empty() {
            return Err(not_found());
        }
        if kind == ObjectKind::Task {
            if let Some(t) = self.task(reference) {
                return Ok(t.into());
            }
            let ids = prefix_matches(
                self.tasks
                    .by_id
                    .range::<_, str>((
                        std::ops::Bound::Included(reference),
                        std::ops::Bound::Unbounded,
                    ))
                    .map(|(k, _)| &**k),
                reference,
            );
            return match ids.as_slice() {
                [id] => self.task(id).map(Into::into).ok_or_else(not_found),
                [] => Err(not_found()),
                many => Err(ambiguous(kind, reference, many)),
            };
        }
        fn resolve<T: Clone + Into<Object>>(
            table: &Table<T>,
            kind: ObjectKind,
            reference: &str,
        ) -> Result<Option<Object>, LookupError> {
            if let Some(o) = table.by_id.get(reference) {
                return Ok(Some((**o).clone().into()));
            }
            if let Some(o) = table
                .by_name
                .get(name_key(reference).as_str())
                .and_then(|id| table.by_id.get(&**id))
            {
                return Ok(Some((**o).clone().into()));
            }
            let ids = prefix_matches(
                table
                    .by_id
                    .range::<_, str>((
                        std::ops::Bound::Included(reference),
                        std::ops::Bound::Unbounded,
                    ))
                    .map(|(k, _)| k.as_str()),
                reference,
            );
            match ids.as_slice() {
                [id] => Ok(table.by_id.get(id.as_str()).map(|o| (**o).clone().into())),
                [] => Ok(None),
                many => Err(ambiguous(kind, reference, many)),
            }
        }
        let found = match kind {
            ObjectKind::Cluster => resolve(&self.clusters, kind, reference)?,
            ObjectKind::Node => {
                // Docker's order: an id, a name, a hostname one node alone
                // has (linear: a lookup by hostname is a user's command,
                // not a loop's), and only then an id prefix.
                let exact = self.nodes.by_id.get(reference).or_else(|| {
                    self.nodes
                        .by_name
                        .get(name_key(reference).as_str())
                        .and_then(|id| self.nodes.by_id.get(&**id))
                });
                match exact {
                    Some(node) => Some((**node).clone().into()),
                    None => {
                        let key = name_key(reference);
                        let ids: Vec<String> = self
                            .nodes
                            .by_id
                            .values()
                            .filter(|n| n.name().map(name_key).as_deref() == Some(key.as_str()))
                            .map(|n| n.id.clone())
                            .collect();
                        match ids.as_slice() {
                            [id] => self
                                .nodes
                                .by_id
                                .get(id.as_str())
                                .map(|n| (**n).clone().into()),
                            [] => resolve(&self.nodes, kind, reference)?,
                            many => return Err(ambiguous(kind, reference, many)),
                        }
                    }
                }
            }
            ObjectKind::Service => resolve(&self.services, kind, reference)?,
            ObjectKind::Network => resolve(&self.networks, kind, reference)?,
            ObjectKind::Task => None,
        };
        found.ok_or_else(not_found)
    }

    /// Every object, as watch CREATE events would list them.
    pub fn objects(&self) -> Vec<Object> {
        let mut out: Vec<Object> = Vec::new();
        out.extend(
            self.clusters
                .by_id
                .values()
                .map(|o| Object::from((**o).clone())),
        );
        out.extend(
            self.nodes
                .by_id
                .values()
                .map(|o| Object::from((**o).clone())),
        );
        out.extend(
            self.networks
                .by_id
                .values()
                .map(|o| Object::from((**o).clone())),
        );
        out.extend(
            self.services
                .by_id
                .values()
                .map(|o| Object::from((**o).clone())),
        );
        out.extend(self.tasks().map(Object::from));
        out
    }

    /// The current meta of an object, if it exists (read in place).
    fn current_meta(&self, kind: ObjectKind, id: &str) -> Option<Meta> {
        let meta = match kind {
            ObjectKind::Cluster => self.clusters.by_id.get(id)?.meta,
            ObjectKind::Node => self.nodes.by_id.get(id)?.meta,
            ObjectKind::Service => self.services.by_id.get(id)?.meta,
            ObjectKind::Network => self.networks.by_id.get(id)?.meta,
            ObjectKind::Task => Some(self.tasks.by_id.get(id)?.meta),
        };
        Some(meta.unwrap_or_default())
    }

    /// The id of the object of `kind` whose unique name is `name` (any
    /// case), if any: one search of the name index.
    pub fn name_owner(&self, kind: ObjectKind, name: &str) -> Option<&Key> {
        let key = name_key(name);
        match kind {
            ObjectKind::Cluster => self.clusters.by_name.get(key.as_str()),
            ObjectKind::Node => self.nodes.by_name.get(key.as_str()),
            ObjectKind::Service => self.services.by_name.get(key.as_str()),
            ObjectKind::Network => self.networks.by_name.get(key.as_str()),
            ObjectKind::Task => None,
        }
    }

    /// The version and lower-cased unique name of an object, if it exists:
    /// one search of its table (a write's check is mostly searches).
    fn stored_version_and_name(&self, kind: ObjectKind, id: &str) -> Option<(u64, Option<String>)> {
        fn of<T: Named>(o: &T, meta: Option<Meta>) -> (u64, Option<String>) {
            (meta.map_or(0, |m| m.version), o.unique_name().map(name_key))
        }
        Some(match kind {
            ObjectKind::Cluster => self.clusters.by_id.get(id).map(|o| of(&**o, o.meta))?,
            ObjectKind::Node => self.nodes.by_id.get(id).map(|o| of(&**o, o.meta))?,
            ObjectKind::Service => self.services.by_id.get(id).map(|o| of(&**o, o.meta))?,
            ObjectKind::Network => self.networks.by_id.get(id).map(|o| of(&**o, o.meta))?,
            ObjectKind::Task => (self.tasks.by_id.get(id)?.meta.version, None),
        })
    }

    /// Checks every action of `txn` against the tables as they are, without
    /// changing anything.
    fn check(&self, txn: &Transaction) -> Result<(), TxnError> {
        // Names taken and released earlier in the same transaction.
        let mut claimed: HashSet<(ObjectKind, String)> = HashSet::default();
        let mut released: HashSet<(ObjectKind, String)> = HashSet::default();
        let mut touched: HashSet<(ObjectKind, &str)> = HashSet::default();
        touched.reserve(txn.actions.len());
        for action in &txn.actions {
            let target = action
                .target
                .as_ref()
                .ok_or_else(|| TxnError::Invalid("action without a target".into()))?;
            let kind = target
                .kind()
                .ok_or_else(|| TxnError::Invalid("target object has no kind".into()))?;
            let id = target.id();
            if id.is_empty() {
                return Err(TxnError::Invalid(format!("{kind} without an id")));
            }
            let action_kind = store_action::Kind::try_from(action.kind)
                .map_err(|_| TxnError::Invalid(format!("unknown action {}", action.kind)))?;
            if action_kind != store_action::Kind::Check && !touched.insert((kind, id)) {
                return Err(TxnError::Invalid(format!(
                    "{kind} {id} is changed twice in one transaction"
                )));
            }
            let (current, old_name) = match self.stored_version_and_name(kind, id) {
                Some((version, name)) => (Some(version), name),
                None => (None, None),
            };
            let expected = target.version();
            match action_kind {
                store_action::Kind::Create => {
                    if current.is_some() {
                        return Err(TxnError::AlreadyExists {
                            kind: kind.to_string(),
                            id: id.to_string(),
                        });
                    }
                }
                store_action::Kind::Update
                | store_action::Kind::Remove
                | store_action::Kind::Check => {
                    let actual = current.ok_or_else(|| TxnError::NotFound {
                        kind: kind.to_string(),
                        id: id.to_string(),
                    })?;
                    if actual != expected {
                        return Err(TxnError::Conflict {
                            kind: kind.to_string(),
                            id: id.to_string(),
                            expected,
                            actual,
                        });
                    }
                }
            }
            match action_kind {
                store_action::Kind::Create | store_action::Kind::Update => {
                    if let Some(name) = unique_name_of(target).map(name_key) {
                        if old_name.as_deref() != Some(name.as_str()) {
                            let taken_here = claimed.contains(&(kind, name.clone()));
                            let owner = self
                                .name_owner(kind, &name)
                                .filter(|_| !released.contains(&(kind, name.clone())));
                            if let Some(owner) = owner.filter(|o| &***o != id) {
                                return Err(TxnError::NameInUse {
                                    kind: kind.to_string(),
                                    name: unique_name_of(target).unwrap_or_default().to_string(),
                                    id: owner.to_string(),
                                });
                            }
                            if taken_here {
                                return Err(TxnError::NameInUse {
                                    kind: kind.to_string(),
                                    name: unique_name_of(target).unwrap_or_default().to_string(),
                                    id: id.to_string(),
                                });
                            }
                            claimed.insert((kind, name));
                            if let Some(old) = old_name {
                                released.insert((kind, old));
                            }
                        }
                    }
                }
                store_action::Kind::Remove => {
                    if let Some(old) = old_name {
                        released.insert((kind, old));
                    }
                }
                store_action::Kind::Check => {}
            }
        }
        self.check_references(txn)?;
        self.check_replica_limits(txn)
    }

    /// The cluster's replica limits, checked when the entry is applied: two
    /// requests that each fit when they were checked before proposing
    /// cannot together pass one. Only a write that asks for more than the
    /// limits allow and more than there was is refused, so a cluster whose
    /// limits were lowered below what it runs can still scale down.
    fn check_replica_limits(&self, txn: &Transaction) -> Result<(), TxnError> {
        use shoal_api::limits::{replicas_of, Limits};
        let mut written: HashMap<&str, Option<u64>> = HashMap::default();
        for action in &txn.actions {
            let Some(Object {
                kind: Some(object::Kind::Service(service)),
            }) = action.target.as_ref()
            else {
                continue;
            };
            let replicas = match store_action::Kind::try_from(action.kind) {
                Ok(store_action::Kind::Create | store_action::Kind::Update) => {
                    Some(service.spec.as_ref().map_or(0, replicas_of))
                }
                Ok(store_action::Kind::Remove) => None,
                _ => continue,
            };
            written.insert(service.id.as_str(), replicas);
        }
        if written.is_empty() {
            return Ok(());
        }
        let limits = Limits::of(self.cluster());
        let had = |id: &str| {
            self.services
                .by_id
                .get(id)
                .and_then(|s| s.spec.as_ref())
                .map_or(0, replicas_of)
        };
        for (id, replicas) in &written {
            let Some(asked) = replicas else { continue };
            if *asked > limits.max_replicas_per_service && *asked > had(id) {
                return Err(TxnError::OverLimit {
                    field: "replicas".into(),
                    rule: format!(
                        "must be at most {} (the cluster's max_replicas_per_service), got {asked}",
                        limits.max_replicas_per_service
                    ),
                });
            }
        }
        let before: u64 = self
            .services
            .by_id
            .values()
            .filter_map(|s| s.spec.as_ref())
            .map(replicas_of)
            .sum();
        let after = written.iter().fold(before, |total, (id, replicas)| {
            total
                .saturating_sub(had(id))
                .saturating_add(replicas.unwrap_or(0))
        });
        if after > limits.max_replicas_total && after > before {
            return Err(TxnError::OverLimit {
                field: "replicas".into(),
                rule: format!(
                    "this would bring the cluster to {after} replicas, over its max_replicas_total of {}",
                    limits.max_replicas_total
                ),
            });
        }
        Ok(())
    }

    /// References between objects, checked in log order when the entry is
    /// applied (DESIGN.md §3): a service may only name networks that exist,
    /// and a network may only go when no service names it. Checking them
    /// only before proposing would let a `network rm` and a `service create`
    /// that each saw the other's old world both commit.
    fn check_references(&self, txn: &Transaction) -> Result<(), TxnError> {
        let kind_of = |a: &StoreAction| store_action::Kind::try_from(a.kind).ok();
        let removed = |kind: ObjectKind| -> HashSet<&str> {
            txn.actions
                .iter()
                .filter(|a| kind_of(a) == Some(store_action::Kind::Remove))
                .filter_map(|a| a.target.as_ref())
                .filter(|t| t.kind() == Some(kind))
                .map(|t| t.id())
                .collect()
        };
        let removed_networks = removed(ObjectKind::Network);
        let created_networks: HashSet<&str> = txn
            .actions
            .iter()
            .filter(|a| kind_of(a) == Some(store_action::Kind::Create))
            .filter_map(|a| a.target.as_ref())
            .filter(|t| t.kind() == Some(ObjectKind::Network))
            .map(|t| t.id())
            .collect();
        let mut written_services: HashSet<&str> = removed(ObjectKind::Service);
        for action in &txn.actions {
            let writes = matches!(
                kind_of(action),
                Some(store_action::Kind::Create | store_action::Kind::Update)
            );
            let Some(Object {
                kind: Some(object::Kind::Service(service)),
            }) = action.target.as_ref()
            else {
                continue;
            };
            if !writes {
                continue;
            }
            written_services.insert(service.id.as_str());
            for network in service_networks(service) {
                let exists = (self.networks.by_id.contains_key(network)
                    || created_networks.contains(network))
                    && !removed_networks.contains(network);
                if !exists {
                    return Err(TxnError::MissingReference {
                        kind: "service".into(),
                        id: service.id.clone(),
                        target_kind: "network".into(),
                        target: network.to_string(),
                    });
                }
            }
        }
        if removed_networks.is_empty() {
            return Ok(());
        }
        for service in self.services.by_id.values() {
            if written_services.contains(service.id.as_str()) {
                continue;
            }
            if let Some(network) = service_networks(service).find(|n| removed_networks.contains(n))
            {
                return Err(TxnError::InUse {
                    kind: "network".into(),
                    id: network.to_string(),
                    by_kind: "service".into(),
                    by: service.unique_name().unwrap_or(&service.id).to_string(),
                });
            }
        }
        Ok(())
    }

    /// Applies one committed entry at raft index `version`. Returns one result
    /// per transaction, and appends the changes to `events` when given (only
    /// when someone watches: building events costs a copy of each object).
    pub fn apply_batch(
        &mut self,
        version: u64,
        batch: Batch,
        mut events: Option<&mut Vec<Event>>,
    ) -> Vec<Result<(), TxnError>> {
        debug_assert!(version > self.version, "entries are applied in log order");
        let mut results = Vec::with_capacity(batch.transactions.len());
        for txn in batch.transactions {
            let outcome = self.check(&txn);
            if outcome.is_ok() {
                for action in txn.actions {
                    let event =
                        self.apply_action(version, txn.timestamp_ms, action, events.is_some());
                    if let (Some(events), Some(event)) = (events.as_deref_mut(), event) {
                        events.push(event);
                    }
                }
            }
            results.push(outcome);
        }
        self.version = version;
        if let Some(events) = events {
            events.push(Event::Commit { version });
        }
        results
    }

    /// Moves the version forward for an entry that carries no transaction
    /// (raft's blank and membership entries), so versions stay raft indexes.
    pub fn advance_to(&mut self, version: u64) {
        self.version = self.version.max(version);
    }

    /// Applies one action that `check` accepted.
    fn apply_action(
        &mut self,
        version: u64,
        now_ms: i64,
        action: StoreAction,
        want_event: bool,
    ) -> Option<Event> {
        let target = action.target?;
        let kind = target.kind()?;
        let id = target.id().to_string();
        let action_kind = store_action::Kind::try_from(action.kind).ok()?;
        let change = if action_kind == store_action::Kind::Create {
            watch_event::Action::Create
        } else {
            watch_event::Action::Update
        };
        let created_at = match action_kind {
            store_action::Kind::Check => return None,
            store_action::Kind::Remove => {
                let removed = self.remove(kind, &id)?;
                return want_event.then_some(Event::Change {
                    action: watch_event::Action::Remove,
                    object: removed,
                    version,
                    timestamp_ms: now_ms,
                });
            }
            _ if kind == ObjectKind::Task => {
                let Some(object::Kind::Task(task)) = target.kind else {
                    return None;
                };
                let written = self.tasks.write(*task, version, now_ms, want_event)?;
                return Some(Event::Change {
                    action: change,
                    object: written.into(),
                    version,
                    timestamp_ms: now_ms,
                });
            }
            store_action::Kind::Create => now_ms,
            store_action::Kind::Update => self
                .current_meta(kind, &id)
                .map_or(now_ms, |m| m.created_at_ms),
        };
        let mut target = target;
        if let Some(meta) = target.meta_mut() {
            *meta = Meta {
                version,
                created_at_ms: created_at,
                updated_at_ms: now_ms,
            };
        }
        if let Some(object::Kind::Service(service)) = &mut target.kind {
            // Only what a task runs counts: scaling is not a new version.
            let spec_changed = match self.services.by_id.get(id.as_str()) {
                Some(old) => !old.runs_same_tasks(service),
                None => true,
            };
            if spec_changed {
                service.spec_version = version;
            } else if let Some(old) = self.services.by_id.get(id.as_str()) {
                service.spec_version = old.spec_version;
            }
        }
        let event_object = want_event.then(|| target.clone());
        self.insert(target);
        event_object.map(|object| Event::Change {
            action: change,
            object,
            version,
            timestamp_ms: now_ms,
        })
    }

    fn insert(&mut self, object: Object) {
        fn put<T: Named + Clone>(table: &mut Table<T>, id: String, name: Option<String>, o: T) {
            // One search for the object: the one replaced comes back.
            let id = Key::from(id);
            let old = table.by_id.insert(id.clone(), Arc::new(o));
            let old_name = old.as_ref().and_then(|o| o.unique_name()).map(name_key);
            let name = name.map(|n| name_key(&n));
            if old_name != name {
                if let Some(old_name) = old_name {
                    table.by_name.remove(old_name.as_str());
                }
                if let Some(name) = name {
                    table.by_name.insert(Key::from(name), id);
                }
            }
        }
        let id = object.id().to_string();
        let name = unique_name_of(&object).map(str::to_string);
        match object.kind {
            Some(object::Kind::Cluster(o)) => put(&mut self.clusters, id, name, *o),
            Some(object::Kind::Node(o)) => put(&mut self.nodes, id, name, *o),
            Some(object::Kind::Service(o)) => put(&mut self.services, id, name, *o),
            Some(object::Kind::Network(o)) => put(&mut self.networks, id, name, *o),
            // Tasks have their own paths: `TaskTable::write` when applied
            // (their meta is made there, with one search of the table) and
            // `insert_new` when restored.
            Some(object::Kind::Task(_)) => {
                debug_assert!(false, "tasks are not written through Tables::insert")
            }
            None => {}
        }
    }

    fn remove(&mut self, kind: ObjectKind, id: &str) -> Option<Object> {
        fn take<T: Clone + Into<Object>>(table: &mut Table<T>, id: &str) -> Option<Object> {
            let o: Object = Arc::unwrap_or_clone(table.by_id.remove(id)?).into();
            if let Some(name) = unique_name_of(&o) {
                table.by_name.remove(name_key(name).as_str());
            }
            Some(o)
        }
        match kind {
            ObjectKind::Cluster => take(&mut self.clusters, id),
            ObjectKind::Node => take(&mut self.nodes, id),
            ObjectKind::Service => {
                let removed = take(&mut self.services, id);
                self.tasks.spec_cache.remove(id);
                removed
            }
            ObjectKind::Network => take(&mut self.networks, id),
            ObjectKind::Task => self.tasks.remove(id).map(|t| t.to_task().into()),
        }
    }

    /// The whole store as one message. Tasks refer to a shared spec list.
    pub fn to_snapshot(&self) -> StoreSnapshot {
        let mut spec_index: HashMap<*const TaskSpec, u32> = HashMap::default();
        let mut task_specs = Vec::new();
        let mut tasks = Vec::with_capacity(self.tasks.by_id.len());
        for stored in self.tasks.by_id.values() {
            let index = *spec_index
                .entry(Arc::as_ptr(&stored.spec))
                .or_insert_with(|| {
                    task_specs.push((*stored.spec).clone());
                    (task_specs.len() - 1) as u32
                });
            tasks.push(SnapshotTask {
                task: stored.encoded.to_vec(),
                spec_index: index,
            });
        }
        StoreSnapshot {
            version: self.version,
            clusters: self
                .clusters
                .by_id
                .values()
                .map(|o| (**o).clone())
                .collect(),
            nodes: self.nodes.by_id.values().map(|o| (**o).clone()).collect(),
            services: self
                .services
                .by_id
                .values()
                .map(|o| (**o).clone())
                .collect(),
            networks: self
                .networks
                .by_id
                .values()
                .map(|o| (**o).clone())
                .collect(),
            task_specs,
            tasks,
        }
    }

    /// Rebuilds tables from a snapshot.
    pub fn from_snapshot(snapshot: StoreSnapshot) -> Result<Tables, TxnError> {
        let mut tables = Tables {
            version: snapshot.version,
            ..Tables::default()
        };
        for o in snapshot.clusters {
            tables.insert(o.into());
        }
        for o in snapshot.nodes {
            tables.insert(o.into());
        }
        for o in snapshot.networks {
            tables.insert(o.into());
        }
        for o in snapshot.services {
            tables.insert(o.into());
        }
        let specs: Vec<Arc<TaskSpec>> = snapshot.task_specs.into_iter().map(Arc::new).collect();
        for t in snapshot.tasks {
            let mut task = Task::decode(t.task.as_slice()).map_err(|e| {
                TxnError::Invalid(format!("snapshot holds a task that does not decode: {e}"))
            })?;
            let spec = specs.get(t.spec_index as usize).cloned().ok_or_else(|| {
                TxnError::Invalid(format!(
                    "snapshot task {} refers to spec {} of {}",
                    task.id,
                    t.spec_index,
                    specs.len()
                ))
            })?;
            task.spec = None;
            tables
                .tasks
                .spec_cache
                .insert(task.service_id.clone(), Arc::clone(&spec));
            tables.tasks.insert_new(task, spec);
        }
        Ok(tables)
    }

    /// Checks that every index agrees with its table. Used by tests and
    /// debug builds; cost is linear in the store's size.
    pub fn check_invariants(&self) -> Result<(), String> {
        fn names<T: Clone + Into<Object>>(table: &Table<T>, kind: &str) -> Result<(), String> {
            let mut expected = Ordered::new();
            for (id, o) in &table.by_id {
                let o: Object = (**o).clone().into();
                if o.id() != id.as_str() {
                    return Err(format!("{kind} keyed {id} has id {}", o.id()));
                }
                if let Some(name) = unique_name_of(&o) {
                    if expected
                        .insert(Key::from(name_key(name)), id.clone())
                        .is_some()
                    {
                        return Err(format!("{kind} name {name} used twice"));
                    }
                }
            }
            if expected != table.by_name {
                return Err(format!("{kind} name index disagrees with the table"));
            }
            Ok(())
        }
        names(&self.clusters, "cluster")?;
        names(&self.nodes, "node")?;
        names(&self.services, "service")?;
        names(&self.networks, "network")?;
        let mut by_service: ServiceIndex = Hashed::default();
        let mut by_node: TaskIndex = Hashed::default();
        let mut pending = OrderedSet::new();
        for (id, stored) in &self.tasks.by_id {
            let t = Task::decode(&*stored.encoded).map_err(|e| format!("task {id}: {e}"))?;
            if t.spec.is_some() {
                return Err(format!("task {id} keeps its own spec copy"));
            }
            if t.meta.unwrap_or_default() != stored.meta {
                return Err(format!(
                    "task {id}: stored meta disagrees with the encoded task"
                ));
            }
            if stored.service.as_deref().unwrap_or("") != t.service_id
                || stored.node.as_deref().unwrap_or("") != t.node_id
            {
                return Err(format!(
                    "task {id}: stored index keys disagree with the task"
                ));
            }
            if stored.slot != t.slot || stored.pending != is_pending(&t) {
                return Err(format!(
                    "task {id}: stored slot or state disagrees with the task"
                ));
            }
            index_under(&mut by_service, &t.service_id, (t.slot, id.clone()));
            index_under(&mut by_node, &t.node_id, id.clone());
            if is_pending(&t) {
                pending.insert(id.clone());
            }
        }
        if pending != self.tasks.pending {
            return Err("task pending index disagrees with the table".into());
        }
        if by_service != self.tasks.by_service {
            return Err("task service index disagrees with the table".into());
        }
        if by_node != self.tasks.by_node {
            return Err("task node index disagrees with the table".into());
        }
        Ok(())
    }
}

fn prefix_matches<'a>(ids: impl Iterator<Item = &'a str>, prefix: &str) -> Vec<String> {
    ids.take_while(|id| id.starts_with(prefix))
        .take(4)
        .map(str::to_string)
        .collect()
}

fn ambiguous(kind: ObjectKind, reference: &str, ids: &[String]) -> LookupError {
    LookupError::Ambiguous {
        kind: kind.to_string(),
        reference: reference.to_string(),
        matches: ids.join(", "),
    }
}
