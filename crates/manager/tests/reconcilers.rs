//! The pure decisions of the orchestrator, allocator, scheduler and reaper:
//! a store built by applying transactions, the decision compared as actions.

use shoal_api::{
    node_spec, node_status, restart_policy, store_action, Cluster, ClusterSpec, Node,
    OrchestrationConfig, Placement, ResourceRequirements, Resources, RestartPolicy, ServiceMode,
    StoreAction, Task, TaskState, TaskStatus,
};
use shoal_manager::orchestrator::task_reaper;
use shoal_manager::{allocator, orchestrator, scheduler};

mod world;
use world::*;

#[test]
fn a_replicated_service_gets_one_live_task_per_slot() {
    let mut w = World::new();
    w.create(service(3, any_restart()), 0);
    let decision = w.orchestrate(10);
    assert_eq!(
        decision.transactions.len(),
        1,
        "one transaction per service"
    );
    assert_eq!(slots(&w.live()), [1, 2, 3]);
    let spec_version = w.store.view().service("svc").unwrap().spec_version;
    for t in w.live() {
        assert_eq!(t.status.as_ref().unwrap().state, TaskState::New as i32);
        assert_eq!(t.spec_version, spec_version);
        assert!(
            t.spec.unwrap().runtime.is_some(),
            "the task copies the template"
        );
    }
    // Converged: a second pass changes nothing.
    assert_eq!(w.orchestrate(20), orchestrator::Decision::default());
}

#[test]
fn scale_down_removes_highest_slots_preferring_tasks_that_are_not_running() {
    let mut w = World::new();
    w.create(service(4, any_restart()), 0);
    w.orchestrate(10);
    for t in w.live() {
        if t.slot != 2 {
            w.set_state(&t.id, TaskState::Running, 20);
        }
    }
    w.update_service(|s| s.replicas = Some(2));
    w.orchestrate(30);
    // Slot 2 was not running: it goes first, then the highest (4).
    assert_eq!(slots(&w.live()), [1, 3]);
    let let_go: Vec<u64> = w
        .tasks()
        .iter()
        .filter(|t| t.desired_state == TaskState::Shutdown as i32)
        .map(|t| t.slot)
        .collect();
    assert_eq!(sorted(let_go), [2, 4]);
}

#[test]
fn scaling_does_not_replace_tasks_but_a_new_template_does() {
    let mut w = World::new();
    w.create(service(2, any_restart()), 0);
    w.orchestrate(10);
    let before: Vec<String> = w.live().into_iter().map(|t| t.id).collect();
    w.update_service(|s| s.replicas = Some(3));
    w.orchestrate(20);
    let after: Vec<String> = w.live().into_iter().map(|t| t.id).collect();
    assert!(
        before.iter().all(|id| after.contains(id)),
        "scaling up replaced a task"
    );
    // All at once (parallelism 0): the first pass starts the update, the
    // second replaces.
    w.update_service(|s| {
        s.task.as_mut().unwrap().runtime.as_mut().unwrap().env = vec!["A=1".into()];
        s.update = Some(shoal_api::UpdateConfig {
            parallelism: 0,
            ..Default::default()
        });
    });
    w.orchestrate(30);
    w.orchestrate(31);
    let replaced = w.live();
    assert_eq!(slots(&replaced), [1, 2, 3]);
    assert!(
        replaced.iter().all(|t| !after.contains(&t.id)),
        "an outdated task was kept"
    );
    assert!(replaced
        .iter()
        .all(|t| t.spec.as_ref().unwrap().runtime.as_ref().unwrap().env == ["A=1"]));
}

#[test]
fn restart_policy_decides_what_replaces_an_ended_task() {
    // (condition, how the task ended, replaced?)
    let cases = [
        (restart_policy::Condition::Any, TaskState::Complete, true),
        (restart_policy::Condition::Any, TaskState::Failed, true),
        (
            restart_policy::Condition::OnFailure,
            TaskState::Complete,
            false,
        ),
        (
            restart_policy::Condition::OnFailure,
            TaskState::Failed,
            true,
        ),
        (
            restart_policy::Condition::OnFailure,
            TaskState::Rejected,
            true,
        ),
        (restart_policy::Condition::None, TaskState::Failed, false),
    ];
    for (condition, ended, replaced) in cases {
        let mut w = World::new();
        w.create(
            service(
                1,
                RestartPolicy {
                    condition: condition as i32,
                    ..Default::default()
                },
            ),
            0,
        );
        w.orchestrate(10);
        let first = w.live().remove(0);
        w.set_state(&first.id, ended, 20);
        w.orchestrate(30);
        let live = w.live();
        assert_eq!(
            live.len(),
            1,
            "{condition:?} {ended:?}: the slot stays occupied"
        );
        assert_eq!(live[0].id != first.id, replaced, "{condition:?} {ended:?}");
    }
}

#[test]
fn a_delayed_restart_waits_in_ready_then_is_let_go() {
    let mut w = World::new();
    w.create(
        service(
            1,
            RestartPolicy {
                condition: 0,
                delay_ms: 5_000,
                ..Default::default()
            },
        ),
        0,
    );
    w.orchestrate(1_000);
    let first = w.live().remove(0);
    w.set_state(&first.id, TaskState::Failed, 2_000);
    w.orchestrate(2_000);
    let next = w.live().remove(0);
    assert_ne!(next.id, first.id);
    assert_eq!(next.desired_state, TaskState::Ready as i32);
    let created = next.meta.as_ref().unwrap().created_at_ms;
    let waiting = w.orchestrate(created + 1_000);
    assert_eq!(waiting.wake_at_ms, Some(created + 5_000));
    assert!(waiting.transactions.is_empty());
    w.orchestrate(created + 5_000);
    assert_eq!(
        w.store.view().task(&next.id).unwrap().desired_state,
        TaskState::Running as i32
    );
}

#[test]
fn a_replacement_rejected_during_its_delay_is_replaced_only_when_the_delay_is_over() {
    let mut w = World::new();
    let no_delay = RestartPolicy {
        condition: 0,
        delay_ms: 0,
        ..Default::default()
    };
    w.create(service(1, no_delay), 0);
    w.orchestrate(1_000);
    let first = w.live().remove(0);
    // A missing program: rejected at once, replaced after at least 1 s.
    w.set_state(&first.id, TaskState::Rejected, 1_000);
    w.orchestrate(1_000);
    let second = w.live().remove(0);
    assert_eq!(second.desired_state, TaskState::Ready as i32);
    let created = second.meta.as_ref().unwrap().created_at_ms;
    // Its preparation fails too, long before its delay is over: no third
    // task yet, and the pass says when to look again.
    w.set_state(&second.id, TaskState::Rejected, created + 10);
    let waiting = w.orchestrate(created + 10);
    assert!(waiting.transactions.is_empty(), "a broken spec spun");
    assert_eq!(waiting.wake_at_ms, Some(created + 1_000));
    assert_eq!(w.tasks().len(), 2);
    w.orchestrate(created + 1_000);
    assert_eq!(w.tasks().len(), 3);
}

#[test]
fn max_attempts_within_the_window_are_respected() {
    let mut w = World::new();
    let policy = RestartPolicy {
        condition: 0,
        max_attempts: 2,
        window_ms: 60_000,
        ..Default::default()
    };
    w.create(service(1, policy), 0);
    let mut now = 1_000;
    w.orchestrate(now);
    let mut made = 1;
    for _ in 0..5 {
        let current = w.live().remove(0);
        now += 1_000;
        w.set_state(&current.id, TaskState::Failed, now);
        w.orchestrate(now);
        if w.live()[0].id != current.id {
            made += 1;
        }
    }
    assert_eq!(made, 3, "the first task and 2 restarts");
}

#[test]
fn a_global_service_runs_one_task_per_eligible_node() {
    let mut w = World::new();
    w.create(
        node(
            "n1",
            1 << 30,
            node_spec::Availability::Active,
            &[("zone", "a")],
        ),
        0,
    );
    w.create(
        node(
            "n2",
            1 << 30,
            node_spec::Availability::Active,
            &[("zone", "b")],
        ),
        0,
    );
    w.create(
        node(
            "n3",
            1 << 30,
            node_spec::Availability::Drain,
            &[("zone", "a")],
        ),
        0,
    );
    let mut s = service(0, any_restart());
    let spec = s.spec.as_mut().unwrap();
    spec.mode = ServiceMode::Global as i32;
    spec.replicas = None;
    spec.task.as_mut().unwrap().placement = Some(Placement {
        constraints: vec!["node.labels.zone==a".into()],
        ..Default::default()
    });
    w.create(s, 0);
    w.orchestrate(10);
    let nodes: Vec<String> = w.live().into_iter().map(|t| t.node_id).collect();
    assert_eq!(nodes, ["n1"], "drained n3 and zone-b n2 get none");
    // The node is drained: its task is let go.
    let mut n1 = w.store.view().node("n1").unwrap().clone();
    n1.spec.as_mut().unwrap().availability = node_spec::Availability::Drain as i32;
    w.apply(
        vec![StoreAction {
            kind: store_action::Kind::Update as i32,
            target: Some(n1.into()),
        }],
        20,
    );
    w.orchestrate(30);
    assert!(w.live().is_empty());
}

#[test]
fn allocator_moves_new_tasks_to_pending_and_scheduler_spreads_them() {
    let mut w = World::new();
    w.create(node("n1", 1 << 30, node_spec::Availability::Active, &[]), 0);
    w.create(node("n2", 1 << 30, node_spec::Availability::Active, &[]), 0);
    w.create(node("n3", 1 << 30, node_spec::Availability::Pause, &[]), 0);
    w.create(service(4, any_restart()), 0);
    w.orchestrate(10);
    let allocated = allocator::decide(&w.store.view(), 20);
    assert_eq!(allocated.len(), 4);
    w.apply(allocated, 20);
    assert!(allocator::decide(&w.store.view(), 25).is_empty());
    let assigned = scheduler::decide(&w.store.view(), 30);
    assert_eq!(assigned.len(), 4);
    w.apply(assigned, 30);
    let mut per_node = std::collections::BTreeMap::new();
    for t in w.tasks() {
        assert_eq!(t.status.as_ref().unwrap().state, TaskState::Assigned as i32);
        *per_node.entry(t.node_id).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeMap<String, i32> =
        [("n1".to_string(), 2), ("n2".to_string(), 2)].into();
    assert_eq!(per_node, expected, "paused n3 gets none; spread evenly");
    assert!(
        scheduler::decide(&w.store.view(), 40).is_empty(),
        "nothing left to place"
    );
}

#[test]
fn a_task_no_node_can_take_stays_pending_and_says_why() {
    let mut w = World::new();
    w.create(
        node(
            "n1",
            100 << 20,
            node_spec::Availability::Active,
            &[("zone", "a")],
        ),
        0,
    );
    w.create(
        node(
            "n2",
            100 << 20,
            node_spec::Availability::Active,
            &[("zone", "b")],
        ),
        0,
    );
    w.create(
        node(
            "n3",
            4 << 30,
            node_spec::Availability::Active,
            &[("zone", "b")],
        ),
        0,
    );
    let mut s = service(1, any_restart());
    let task = s.spec.as_mut().unwrap().task.as_mut().unwrap();
    task.resources = Some(ResourceRequirements {
        limits: None,
        reservations: Some(Resources {
            pids: 0,
            nano_cpus: 0,
            memory_bytes: 1 << 30,
        }),
    });
    task.placement = Some(Placement {
        constraints: vec!["node.labels.zone==a".into()],
        ..Default::default()
    });
    w.create(s, 0);
    w.orchestrate(10);
    let actions = allocator::decide(&w.store.view(), 20);
    w.apply(actions, 20);
    let explained = scheduler::decide(&w.store.view(), 30);
    assert_eq!(explained.len(), 1);
    w.apply(explained, 30);
    let status = w.tasks().remove(0).status.unwrap();
    assert_eq!(status.state, TaskState::Pending as i32);
    assert_eq!(
        status.err,
        "no suitable node (insufficient memory on 2 nodes; constraint node.labels.zone==a not satisfied on 1 node)"
    );
    assert!(
        scheduler::decide(&w.store.view(), 40).is_empty(),
        "the same explanation is not written again"
    );
}

#[test]
fn reaper_keeps_the_history_limit_per_slot_and_clears_removed_services() {
    let mut w = World::new();
    let cluster = Cluster {
        id: "c".into(),
        spec: Some(ClusterSpec {
            orchestration: Some(OrchestrationConfig {
                task_history_retention_limit: 2,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    w.create(cluster, 0);
    w.create(service(1, any_restart()), 0);
    let mut now = 10;
    w.orchestrate(now);
    for _ in 0..5 {
        let current = w.live().remove(0);
        now += 10;
        w.set_state(&current.id, TaskState::Failed, now);
        w.orchestrate(now);
    }
    assert_eq!(w.tasks().len(), 6);
    let reaped = task_reaper::decide(&w.store.view());
    assert_eq!(reaped.len(), 3, "5 finished, 2 kept");
    w.apply(reaped, now);
    assert_eq!(w.tasks().len(), 3);
    // A task of the service is running when the service goes.
    let live = w.live().remove(0);
    w.set_state(&live.id, TaskState::Running, now);
    let s = w.store.view().service("svc").unwrap().clone();
    w.apply(
        vec![StoreAction {
            kind: store_action::Kind::Remove as i32,
            target: Some(s.into()),
        }],
        now,
    );
    w.orchestrate(now + 10);
    assert!(w
        .tasks()
        .iter()
        .all(|t| t.desired_state == TaskState::Remove as i32));
    let actions = task_reaper::decide(&w.store.view());
    w.apply(actions, now + 20);
    assert_eq!(
        w.tasks().len(),
        1,
        "only the running task waits for its stop"
    );
    w.set_state(&live.id, TaskState::Shutdown, now + 30);
    let actions = task_reaper::decide(&w.store.view());
    w.apply(actions, now + 40);
    assert!(w.tasks().is_empty());
}

#[test]
fn a_rejected_task_is_retried_no_faster_than_once_a_second_and_unset_policy_waits_5s() {
    // An explicit zero delay: a rejected task still waits a second.
    let mut w = World::new();
    w.create(
        service(
            1,
            RestartPolicy {
                condition: 0,
                delay_ms: 0,
                ..Default::default()
            },
        ),
        0,
    );
    w.orchestrate(1_000);
    let first = w.live().remove(0);
    w.set_state(&first.id, TaskState::Rejected, 2_000);
    w.orchestrate(2_000);
    let next = w.live().remove(0);
    assert_eq!(
        next.desired_state,
        TaskState::Ready as i32,
        "no immediate retry of a rejected task"
    );
    let created = next.meta.as_ref().unwrap().created_at_ms;
    assert_eq!(
        w.orchestrate(created + 10).wake_at_ms,
        Some(created + 1_000)
    );

    // No restart policy at all: docker's default, any condition after 5 s.
    let mut w = World::new();
    let mut s = service(1, RestartPolicy::default());
    s.spec.as_mut().unwrap().task.as_mut().unwrap().restart = None;
    w.create(s, 0);
    w.orchestrate(1_000);
    let first = w.live().remove(0);
    w.set_state(&first.id, TaskState::Complete, 2_000);
    w.orchestrate(2_000);
    let next = w.live().remove(0);
    assert_ne!(next.id, first.id);
    let created = next.meta.as_ref().unwrap().created_at_ms;
    assert_eq!(
        w.orchestrate(created + 10).wake_at_ms,
        Some(created + 5_000)
    );
}

/// Two nodes; a 2-replica service placed one task on each.
fn placed_on_two_nodes(w: &mut World, restart: RestartPolicy) -> (Task, Task) {
    w.create(
        node(
            "n1",
            1 << 30,
            node_spec::Availability::Active,
            &[("zone", "a")],
        ),
        0,
    );
    w.create(
        node(
            "n2",
            1 << 30,
            node_spec::Availability::Active,
            &[("zone", "a")],
        ),
        0,
    );
    let mut s = service(2, restart);
    s.spec.as_mut().unwrap().task.as_mut().unwrap().placement = Some(Placement {
        constraints: vec!["node.labels.zone==a".into()],
        ..Default::default()
    });
    w.create(s, 0);
    w.orchestrate(10);
    let actions = allocator::decide(&w.store.view(), 20);
    w.apply(actions, 20);
    let actions = scheduler::decide(&w.store.view(), 30);
    w.apply(actions, 30);
    for t in w.live() {
        w.set_state(&t.id, TaskState::Running, 40);
    }
    let mut live = w.live();
    live.sort_by_key(|t| t.node_id.clone());
    (live.remove(0), live.remove(0))
}

/// A change made to a node, as a test case.
type NodeChange = fn(&mut Node);

fn change_node(w: &mut World, id: &str, f: impl FnOnce(&mut Node)) {
    let mut n = w.store.view().node(id).unwrap().clone();
    f(&mut n);
    w.apply(
        vec![StoreAction {
            kind: store_action::Kind::Update as i32,
            target: Some(n.into()),
        }],
        50,
    );
}

#[test]
fn tasks_move_off_a_drained_down_or_no_longer_matching_node_but_stay_on_a_paused_one() {
    let changes: [(&str, NodeChange, bool); 4] = [
        (
            "drain",
            |n| n.spec.as_mut().unwrap().availability = node_spec::Availability::Drain as i32,
            true,
        ),
        (
            "down",
            |n| n.status.as_mut().unwrap().state = node_status::State::Down as i32,
            true,
        ),
        (
            "label",
            |n| {
                n.spec
                    .as_mut()
                    .unwrap()
                    .annotations
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("zone".into(), "b".into());
            },
            true,
        ),
        (
            "pause",
            |n| n.spec.as_mut().unwrap().availability = node_spec::Availability::Pause as i32,
            false,
        ),
    ];
    for (what, change, moves) in changes {
        let mut w = World::new();
        let (on_n1, on_n2) = placed_on_two_nodes(&mut w, any_restart());
        assert_eq!(on_n1.node_id, "n1");
        change_node(&mut w, "n1", change);
        w.orchestrate(60);
        let live_ids: Vec<String> = w.live().into_iter().map(|t| t.id).collect();
        assert!(live_ids.contains(&on_n2.id), "{what}: the task on n2 stays");
        assert_eq!(!live_ids.contains(&on_n1.id), moves, "{what}");
        assert_eq!(slots(&w.live()), [1, 2], "{what}: the slot keeps a task");
        if moves {
            // The replacement goes to the node that can take it.
            let actions = allocator::decide(&w.store.view(), 70);
            w.apply(actions, 70);
            let actions = scheduler::decide(&w.store.view(), 80);
            w.apply(actions, 80);
            let replacement = w.live().into_iter().find(|t| t.id != on_n2.id).unwrap();
            assert_eq!(replacement.node_id, "n2", "{what}");
        }
    }
}

#[test]
fn an_orphaned_task_is_replaced_whatever_the_restart_policy() {
    let mut w = World::new();
    let none = RestartPolicy {
        condition: restart_policy::Condition::None as i32,
        ..Default::default()
    };
    let (on_n1, _) = placed_on_two_nodes(&mut w, none);
    w.set_state(&on_n1.id, TaskState::Orphaned, 50);
    w.orchestrate(60);
    assert!(!w.live().iter().any(|t| t.id == on_n1.id));
    assert_eq!(w.live().len(), 2, "node loss is not the task's failure");
}

#[test]
fn a_task_lost_with_its_node_is_replaced_without_the_restart_delay() {
    let mut w = World::new();
    let slow = RestartPolicy {
        condition: restart_policy::Condition::Any as i32,
        delay_ms: 60_000,
        ..Default::default()
    };
    let (on_n1, _) = placed_on_two_nodes(&mut w, slow);
    w.set_state(&on_n1.id, TaskState::Orphaned, 50);
    w.orchestrate(60);
    let replacement = w.live().into_iter().find(|t| t.slot == on_n1.slot).unwrap();
    assert_eq!(
        replacement.desired_state,
        TaskState::Running as i32,
        "not held READY for the 60 s delay"
    );
}

/// Places every pending task of the world; returns tasks per node.
fn schedule_all(w: &mut World, now_ms: i64) -> std::collections::BTreeMap<String, usize> {
    w.orchestrate(now_ms);
    let actions = allocator::decide(&w.store.view(), now_ms);
    w.apply(actions, now_ms);
    let actions = scheduler::decide(&w.store.view(), now_ms);
    w.apply(actions, now_ms);
    let mut per_node = std::collections::BTreeMap::new();
    for t in w.live() {
        *per_node.entry(t.node_id).or_insert(0) += 1;
    }
    per_node
}

#[test]
fn placement_preferences_spread_tasks_evenly_over_a_labels_values_first() {
    let mut w = World::new();
    // Zone a has three nodes, zone b one: plain spread would put 3 of 4 in a.
    for (id, zone) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        w.create(
            node(
                id,
                1 << 30,
                node_spec::Availability::Active,
                &[("zone", zone)],
            ),
            0,
        );
    }
    let mut s = service(4, any_restart());
    s.spec.as_mut().unwrap().task.as_mut().unwrap().placement = Some(Placement {
        preferences: vec![shoal_api::PlacementPreference {
            spread_descriptor: "node.labels.zone".into(),
        }],
        ..Default::default()
    });
    w.create(s, 0);
    let per_node = schedule_all(&mut w, 10);
    assert_eq!(
        per_node.get("b1"),
        Some(&2),
        "half the tasks go to zone b: {per_node:?}"
    );
    let in_a: usize = ["a1", "a2", "a3"]
        .iter()
        .filter_map(|n| per_node.get(*n))
        .sum();
    assert_eq!(in_a, 2);
}

/// Three failed tasks of the service on node "bad", at t = 1 s.
fn three_failures_on_bad_at_1s(w: &mut World) {
    for i in 0..3 {
        let failed = Task {
            id: format!("old{i}"),
            service_id: "svc".into(),
            slot: 9,
            node_id: "bad".into(),
            desired_state: TaskState::Shutdown as i32,
            status: Some(TaskStatus {
                state: TaskState::Failed as i32,
                timestamp_ms: 1_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        w.create(failed, 1_000);
    }
}

#[test]
fn nodes_where_the_service_keeps_failing_go_last() {
    let mut w = World::new();
    w.create(
        node("bad", 1 << 30, node_spec::Availability::Active, &[]),
        0,
    );
    w.create(
        node("good", 1 << 30, node_spec::Availability::Active, &[]),
        0,
    );
    w.create(service(1, any_restart()), 0);
    // Three recent failures of this service on "bad".
    three_failures_on_bad_at_1s(&mut w);
    let per_node = schedule_all(&mut w, 2_000);
    assert_eq!(per_node.get("good"), Some(&1), "{per_node:?}");
    // Long after, the failures no longer count: "bad" (emptier) is chosen.
    let mut w2 = World::new();
    w2.create(
        node("bad", 1 << 30, node_spec::Availability::Active, &[]),
        0,
    );
    w2.create(
        node("good", 1 << 30, node_spec::Availability::Active, &[]),
        0,
    );
    w2.create(service(1, any_restart()), 0);
    three_failures_on_bad_at_1s(&mut w2);
    let busy = Task {
        id: "other".into(),
        service_id: "elsewhere".into(),
        node_id: "good".into(),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Running as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    w2.create(busy, 0);
    // Ten minutes later, outside the five-minute window.
    let per_node = schedule_all(&mut w2, 1_000 + 10 * 60_000);
    assert_eq!(per_node.get("bad"), Some(&1), "{per_node:?}");
}

#[test]
fn the_allocator_gives_each_task_the_ports_its_service_publishes_in_host_mode() {
    use shoal_api::{port_config, EndpointSpec, PortConfig};
    let mut w = World::new();
    let mut s = service(2, any_restart());
    let port = |published, mode: port_config::PublishMode| PortConfig {
        name: String::new(),
        protocol: port_config::Protocol::Tcp as i32,
        target_port: 80,
        published_port: published,
        publish_mode: mode as i32,
        host_ip: String::new(),
    };
    s.spec.as_mut().unwrap().endpoint = Some(EndpointSpec {
        ports: vec![
            port(8080, port_config::PublishMode::Host),
            port(9090, port_config::PublishMode::Ingress),
        ],
    });
    w.create(s, 0);
    w.orchestrate(10);
    let actions = allocator::decide(&w.store.view(), 20);
    assert_eq!(actions.len(), 2);
    w.apply(actions, 20);
    for t in w.tasks() {
        assert_eq!(t.observed(), TaskState::Pending);
        let published: Vec<u32> = t
            .endpoint
            .unwrap()
            .ports
            .iter()
            .map(|p| p.published_port)
            .collect();
        assert_eq!(published, vec![8080], "only host-mode ports");
    }
}

#[test]
fn the_allocator_gives_placed_tasks_their_named_ports_each_free_on_its_node() {
    use shoal_api::NamedPort;
    let mut w = World::new();
    w.create(node("n1", 4 << 30, node_spec::Availability::Active, &[]), 0);
    let ports = |static_admin| {
        vec![
            NamedPort {
                name: "http".into(),
                static_port: 0,
            },
            NamedPort {
                name: "admin".into(),
                static_port: static_admin,
            },
        ]
    };
    let mut s = service(3, any_restart());
    s.spec.as_mut().unwrap().task.as_mut().unwrap().ports = ports(0);
    w.create(s, 0);
    w.orchestrate(10);
    w.apply(allocator::decide(&w.store.view(), 10), 10);
    assert!(
        w.tasks().iter().all(|t| t.named_ports().is_empty()),
        "ports are given on a node, so only once placed"
    );
    assert_eq!(schedule_all(&mut w, 20).get("n1"), Some(&3));
    let actions = allocator::decide(&w.store.view(), 30);
    assert_eq!(actions.len(), 3, "each placed task waits for its ports");
    w.apply(actions, 30);
    let mut given = std::collections::BTreeSet::new();
    for t in w.live() {
        let names: Vec<&str> = t.named_ports().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["http", "admin"]);
        for p in t.named_ports() {
            assert!((20000..=32000).contains(&p.published_port), "{p:?}");
            assert!(
                given.insert(p.published_port),
                "port {} given twice on n1",
                p.published_port
            );
        }
    }
    assert!(
        allocator::decide(&w.store.view(), 40).is_empty(),
        "nothing left to give"
    );
    // A static port is given as asked.
    let mut s = service(1, any_restart());
    s.id = "svc2".into();
    s.spec.as_mut().unwrap().annotations.as_mut().unwrap().name = "svc2".into();
    s.spec.as_mut().unwrap().task.as_mut().unwrap().ports = ports(9000);
    w.create(s, 50);
    schedule_all(&mut w, 60);
    w.apply(allocator::decide(&w.store.view(), 70), 70);
    let t = w
        .live()
        .into_iter()
        .find(|t| t.service_id == "svc2")
        .unwrap();
    let admin = t.named_ports().iter().find(|p| p.name == "admin").unwrap();
    assert_eq!(admin.published_port, 9000);
    assert!(!given.contains(&t.named_ports()[0].published_port));
}

#[test]
fn tasks_move_off_a_node_whose_resources_shrink_below_their_reservations_newest_first() {
    let mut w = World::new();
    w.create(node("n1", 4 << 30, node_spec::Availability::Active, &[]), 0);
    let mut s = service(3, any_restart());
    s.spec.as_mut().unwrap().task.as_mut().unwrap().resources = Some(ResourceRequirements {
        limits: None,
        reservations: Some(Resources {
            pids: 0,
            nano_cpus: 0,
            memory_bytes: 1 << 30,
        }),
    });
    w.create(s, 0);
    assert_eq!(schedule_all(&mut w, 10).get("n1"), Some(&3));
    for t in w.live() {
        w.set_state(&t.id, TaskState::Running, 20);
    }
    // Unchanged resources: nothing moves.
    assert!(w.orchestrate(30).transactions.is_empty());
    let mut by_age = w.live();
    by_age.sort_by_key(|t| (t.meta.as_ref().unwrap().created_at_ms, t.id.clone()));
    // The agent now reports 2 GiB: one task of 1 GiB must go, the newest.
    change_node(&mut w, "n1", |n| {
        n.description
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .memory_bytes = 2 << 30;
    });
    w.orchestrate(60);
    let shut: Vec<Task> = w
        .tasks()
        .into_iter()
        .filter(|t| t.desired_state == TaskState::Shutdown as i32)
        .collect();
    assert_eq!(shut.len(), 1, "exactly one task leaves");
    assert_eq!(shut[0].id, by_age[2].id);
    let replacement = w
        .live()
        .into_iter()
        .find(|t| t.slot == shut[0].slot)
        .unwrap();
    assert!(
        replacement.node_id.is_empty(),
        "the replacement is scheduled anew"
    );
}

/// A cluster whose orchestrator makes at most `budget` new tasks a pass.
fn cluster_with_budget(budget: u64) -> Cluster {
    Cluster {
        id: "c".into(),
        spec: Some(ClusterSpec {
            orchestration: Some(OrchestrationConfig {
                max_new_tasks_per_pass: budget,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_service_larger_than_one_pass_converges_in_passes_of_the_clusters_budget() {
    let mut w = World::new();
    w.create(cluster_with_budget(4), 0);
    w.create(service(10, any_restart()), 0);
    // A pass over everything makes at most 4 tasks and says the service is
    // not done.
    let decision = w.orchestrate(0);
    assert_eq!(w.live().len(), 4);
    assert_eq!(decision.unfinished, vec!["svc".to_string()]);
    // The orchestrator between passes goes on with it, 4 at a time, without
    // being told of any change, and stops at 10 with every slot once.
    let mut ids = 100;
    let mut orchestrator = orchestrator::Orchestrator::new(move || {
        ids += 1;
        format!("task{ids:03}")
    });
    let mut made = Vec::new();
    for full in [true, false, false] {
        let decision = orchestrator.orchestrate(&w.store.view(), 0, full);
        made.push(decision.transactions.iter().map(Vec::len).sum::<usize>());
        for txn in &decision.transactions {
            w.apply(txn.clone(), 0);
        }
    }
    assert_eq!(made, vec![4, 2, 0]);
    let mut slots: Vec<u64> = w.live().iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, (1..=10).collect::<Vec<u64>>());
}

#[test]
fn a_small_service_is_not_kept_waiting_behind_a_large_one_converging_in_passes() {
    for full in [false, true] {
        let mut w = World::new();
        w.create(cluster_with_budget(4), 0);
        // "big" sorts before "small": in id order it would take every
        // pass's budget until it is done.
        let mut big = service(20, any_restart());
        big.id = "big".into();
        w.create(big, 0);
        let mut ids = 100;
        let mut orchestrator = orchestrator::Orchestrator::new(move || {
            ids += 1;
            format!("task{ids:03}")
        });
        fn pass<F: FnMut() -> String + Send + 'static>(
            o: &mut orchestrator::Orchestrator<F>,
            w: &mut World,
            full: bool,
        ) {
            let decision = o.orchestrate(&w.store.view(), 0, full);
            for txn in &decision.transactions {
                w.apply(txn.clone(), 0);
            }
        }
        pass(&mut orchestrator, &mut w, true);
        let mut small = service(2, any_restart());
        small.id = "small".into();
        small
            .spec
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .name = "small".into();
        w.create(small.clone(), 0);
        // The orchestrator hears of the new service, as from the watch.
        use shoal_manager::reconciler::Reconciler;
        orchestrator.observe(
            &w.store.view(),
            &shoal_store::Event::Change {
                action: shoal_api::watch_event::Action::Create,
                object: small.into(),
                version: 0,
                timestamp_ms: 0,
            },
        );
        // The next pass, incremental or full, serves the small service
        // first; the big one goes on with what is left.
        pass(&mut orchestrator, &mut w, full);
        let live = |id: &str| w.live().iter().filter(|t| t.service_id == id).count();
        assert_eq!(live("small"), 2, "full pass: {full}");
        assert_eq!(live("big"), 6, "full pass: {full}");
    }
}
