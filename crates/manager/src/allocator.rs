//! The allocator: network attachments, virtual IPs and published ports
//! (DESIGN.md §3). Network addresses and ingress ports are not allocated yet
//! (a later issue); today the allocator gives each new task the ports its
//! service publishes in host mode (the scheduler keeps two tasks that publish
//! one host port off the same node) and moves it NEW → PENDING.
//!
//! Owns: task `networks`, service and task `endpoint`; the NEW → PENDING move.

use shoal_api::{port_config, store_action, Endpoint, StoreAction, Task, TaskState, TaskStatus};
use shoal_store::Tables;

/// One action per task that is NEW and still wanted.
pub fn decide(view: &Tables, now_ms: i64) -> Vec<StoreAction> {
    view.tasks_sharing_specs()
        .filter(|(t, _)| t.status.as_ref().map_or(0, |s| s.state) == TaskState::New as i32)
        .filter(|(t, _)| t.desired_state <= TaskState::Running as i32)
        .map(|(mut t, _)| {
            // No spec: the store keeps the task's own.
            t.endpoint = host_ports(view, &t);
            pending(t, now_ms)
        })
        .collect()
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
    task.advance_status(TaskStatus {
        timestamp_ms: now_ms,
        state: TaskState::Pending as i32,
        message: "pending task scheduling".into(),
        ..Default::default()
    });
    StoreAction {
        kind: store_action::Kind::Update as i32,
        target: Some(task.into()),
    }
}
