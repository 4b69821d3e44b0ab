//! The allocator: network attachments, virtual IPs and published ports
//! (DESIGN.md §3). Network addresses and ingress ports are not allocated yet
//! (a later issue); today the allocator gives each new task the ports its
//! service publishes in host mode (the scheduler keeps two tasks that publish
//! one host port off the same node) and moves it NEW → PENDING.
//!
//! Owns: task `networks`, service and task `endpoint`; the NEW → PENDING move.

use std::collections::BTreeSet;

use shoal_api::{
    object, port_config, store_action, Endpoint, StoreAction, Task, TaskState, TaskStatus,
};
use shoal_store::{Event, Tables};

use crate::reconciler::{Pass, Reconciler};

/// One action per task that is NEW and still wanted.
pub fn decide(view: &Tables, now_ms: i64) -> Vec<StoreAction> {
    Allocator::default().allocate(view, now_ms, true)
}

fn wanted_new(t: &Task) -> bool {
    t.status.as_ref().map_or(0, |s| s.state) == TaskState::New as i32
        && t.desired_state <= TaskState::Running as i32
}

/// The allocator between passes: the tasks that were NEW when last changed.
#[derive(Debug, Default)]
pub struct Allocator {
    new: BTreeSet<String>,
}

impl Allocator {
    fn allocate(&mut self, view: &Tables, now_ms: i64, full: bool) -> Vec<StoreAction> {
        let prepare = |mut t: Task| {
            // No spec: the store keeps the task's own.
            t.endpoint = host_ports(view, &t);
            pending(t, now_ms)
        };
        let new = std::mem::take(&mut self.new);
        if full {
            return view
                .tasks_sharing_specs()
                .map(|(t, _)| t)
                .filter(wanted_new)
                .map(prepare)
                .collect();
        }
        new.iter()
            .filter_map(|id| view.task_without_spec(id))
            .filter(wanted_new)
            .map(prepare)
            .collect()
    }
}

impl Reconciler for Allocator {
    fn observe(&mut self, _: &Tables, event: &Event) {
        if let Event::Change { object, .. } = event {
            if let Some(object::Kind::Task(t)) = &object.kind {
                if wanted_new(t) {
                    self.new.insert(t.id.clone());
                }
            }
        }
    }

    fn decide(&mut self, view: &Tables, now_ms: i64, full: bool) -> Pass {
        Pass::chunked(self.allocate(view, now_ms, full))
    }
}

/// The ports the task's service publishes on the node itself.
fn host_ports(view: &Tables, task: &Task) -> Option<Endpoint> {
    let spec = view
        .service(&task.service_id)?
        .spec
        .as_ref()?
        .endpoint
        .clone()?;
    let ports: Vec<_> = spec
        .ports
        .iter()
        .filter(|p| p.publish_mode == port_config::PublishMode::Host as i32)
        .cloned()
        .collect();
    (!ports.is_empty()).then(|| Endpoint {
        spec: Some(spec),
        ports,
        virtual_ips: Vec::new(),
    })
}

fn pending(mut task: Task, now_ms: i64) -> StoreAction {
    let moved = task.advance_status(TaskStatus {
        timestamp_ms: now_ms,
        state: TaskState::Pending as i32,
        message: "pending task scheduling".into(),
        ..Default::default()
    });
    debug_assert!(moved, "only NEW tasks are allocated");
    StoreAction {
        kind: store_action::Kind::Update as i32,
        target: Some(task.into()),
    }
}
