//! A store the tests write directly, and the objects they write: shared by
//! the tests of the pure decisions.
#![allow(dead_code)]

use shoal_api::{
    node_spec, node_status, restart_policy, store_action, Annotations, Batch, Node,
    NodeDescription, NodeSpec, NodeStatus, Resources, RestartPolicy, Runtime, Service, ServiceSpec,
    StoreAction, Task, TaskSpec, TaskState, TaskStatus, Transaction,
};
use shoal_manager::orchestrator;
use shoal_store::Store;

/// A store the test writes directly, one transaction per call.
pub struct World {
    pub store: Store,
    pub version: u64,
    pub ids: u64,
}

impl World {
    pub fn new() -> World {
        World {
            store: Store::new(),
            version: 0,
            ids: 0,
        }
    }

    pub fn apply(&mut self, actions: Vec<StoreAction>, now_ms: i64) {
        self.version += 1;
        let results = self.store.apply(
            self.version,
            Batch {
                transactions: vec![Transaction {
                    leader_term: 0,
                    actions,
                    timestamp_ms: now_ms,
                }],
            },
        );
        assert_eq!(results, vec![Ok(())]);
    }

    pub fn create(&mut self, object: impl Into<shoal_api::Object>, now_ms: i64) {
        let action = StoreAction {
            kind: store_action::Kind::Create as i32,
            target: Some(object.into()),
        };
        self.apply(vec![action], now_ms);
    }

    pub fn orchestrate(&mut self, now_ms: i64) -> orchestrator::Decision {
        let ids = &mut self.ids;
        let decision = orchestrator::decide(
            &self.store.view(),
            now_ms,
            &mut || {
                *ids += 1;
                format!("task{ids:03}")
            },
            &Default::default(),
        );
        for txn in &decision.transactions {
            self.apply(txn.clone(), now_ms);
        }
        decision
    }

    pub fn tasks(&self) -> Vec<Task> {
        self.store.view().tasks().collect()
    }

    /// Tasks that occupy their slot (desired RUNNING or READY).
    pub fn live(&self) -> Vec<Task> {
        self.tasks()
            .into_iter()
            .filter(|t| {
                t.desired_state == TaskState::Running as i32
                    || t.desired_state == TaskState::Ready as i32
            })
            .collect()
    }

    pub fn set_state(&mut self, task_id: &str, state: TaskState, now_ms: i64) {
        let mut t = self.store.view().task(task_id).unwrap();
        t.status = Some(TaskStatus {
            state: state as i32,
            timestamp_ms: now_ms,
            ..Default::default()
        });
        let action = StoreAction {
            kind: store_action::Kind::Update as i32,
            target: Some(t.into()),
        };
        self.apply(vec![action], now_ms);
    }

    /// A user's update, as the control API makes it: the previous spec
    /// kept, and the update status reset when what tasks run changed or the
    /// update was paused.
    pub fn update_service(&mut self, f: impl FnOnce(&mut ServiceSpec)) {
        let mut s = self.store.view().service("svc").unwrap().clone();
        let old = s.spec.clone().unwrap();
        f(s.spec.as_mut().unwrap());
        let new = s.spec.clone().unwrap();
        let paused = s.update_status.as_ref().is_some_and(|u| u.paused());
        if !old.runs_same_tasks(&new) || paused {
            s.update_status = None;
        }
        if old != new {
            s.previous_spec = Some(old);
        }
        let action = StoreAction {
            kind: store_action::Kind::Update as i32,
            target: Some(s.into()),
        };
        self.apply(vec![action], 0);
    }
}

pub fn service(replicas: i64, restart: RestartPolicy) -> Service {
    Service {
        id: "svc".into(),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: "web".into(),
                labels: Default::default(),
            }),
            task: Some(TaskSpec {
                runtime: Some(Runtime {
                    command: vec!["sleep".into(), "100".into()],
                    ..Default::default()
                }),
                restart: Some(restart),
                ..Default::default()
            }),
            replicas: Some(replicas),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn any_restart() -> RestartPolicy {
    RestartPolicy {
        condition: restart_policy::Condition::Any as i32,
        ..Default::default()
    }
}

pub fn node(
    id: &str,
    memory: i64,
    availability: node_spec::Availability,
    labels: &[(&str, &str)],
) -> Node {
    Node {
        id: id.into(),
        spec: Some(NodeSpec {
            annotations: Some(Annotations {
                name: String::new(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            availability: availability as i32,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: id.into(),
            resources: Some(Resources {
                pids: 0,
                nano_cpus: 2_000_000_000,
                memory_bytes: memory,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: node_status::State::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort();
    v
}

pub fn slots(tasks: &[Task]) -> Vec<u64> {
    sorted(tasks.iter().map(|t| t.slot).collect())
}
