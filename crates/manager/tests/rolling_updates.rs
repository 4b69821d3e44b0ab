//! The update supervisor's decisions: a store built by applying
//! transactions, agents' reports written by the test, and each pass decided
//! by a fresh orchestrator reading everything (as a new leader would), so
//! every test also shows that a rollout goes on from the store alone.

use shoal_api::{
    update_config, update_status, RestartPolicy, Task, TaskState, UpdateConfig, UpdateStatus,
};

mod world;
use world::*;

const MONITOR_MS: i64 = 1_000;

fn config(parallelism: u64, delay_ms: u64, action: update_config::FailureAction) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        delay_ms,
        failure_action: action as i32,
        monitor_ms: MONITOR_MS as u64,
        ..Default::default()
    }
}

/// A service of `replicas` tasks, every one running, made at time 0.
fn running_service(replicas: i64, update: UpdateConfig) -> World {
    let mut w = World::new();
    let mut s = service(replicas, RestartPolicy::default());
    s.spec.as_mut().unwrap().update = Some(update);
    w.create(s, 0);
    w.orchestrate(0);
    for t in w.live() {
        w.set_state(&t.id, TaskState::Running, 0);
    }
    w
}

fn new_template(w: &mut World, env: &str) {
    w.update_service(|s| {
        s.task.as_mut().unwrap().runtime.as_mut().unwrap().env = vec![env.into()];
    });
}

fn env_of(t: &Task) -> Vec<String> {
    t.spec
        .as_ref()
        .unwrap()
        .runtime
        .as_ref()
        .unwrap()
        .env
        .clone()
}

/// Live tasks that run the template with `env`.
fn live_with(w: &World, env: &str) -> Vec<Task> {
    w.live()
        .into_iter()
        .filter(|t| env_of(t) == [env.to_string()])
        .collect()
}

fn status(w: &World) -> UpdateStatus {
    w.store
        .view()
        .service("svc")
        .unwrap()
        .update_status
        .clone()
        .unwrap_or_default()
}

fn run_all(w: &mut World, env: &str, now_ms: i64) {
    for t in live_with(w, env) {
        if t.observed() < TaskState::Running {
            w.set_state(&t.id, TaskState::Running, now_ms);
        }
    }
}

#[test]
fn an_update_replaces_parallelism_tasks_at_a_time_each_once_it_runs() {
    let mut w = running_service(5, config(2, 0, update_config::FailureAction::Pause));
    new_template(&mut w, "V=2");
    // The first pass starts the update, writing when.
    w.orchestrate(1_000);
    assert_eq!(status(&w).state(), update_status::State::Updating);
    assert_eq!(status(&w).started_at_ms, 1_000);
    assert!(live_with(&w, "V=2").is_empty());
    w.orchestrate(1_001);
    assert_eq!(
        slots(&live_with(&w, "V=2")),
        [1, 2],
        "two at a time, lowest slots first"
    );
    assert_eq!(
        w.live().len(),
        5,
        "stop-first: each old task is let go as its replacement is made"
    );
    // Until the new ones run, nothing more is replaced.
    w.orchestrate(1_002);
    assert_eq!(slots(&live_with(&w, "V=2")), [1, 2]);
    let first = live_with(&w, "V=2");
    w.set_state(&first[0].id, TaskState::Running, 1_500);
    w.orchestrate(1_501);
    assert_eq!(
        slots(&live_with(&w, "V=2")),
        [1, 2, 3],
        "one ran: room for one more"
    );
    run_all(&mut w, "V=2", 2_000);
    w.orchestrate(2_001);
    assert_eq!(slots(&live_with(&w, "V=2")), [1, 2, 3, 4, 5]);
    run_all(&mut w, "V=2", 2_500);
    // Every slot updated, but the last ones have not run for the monitor.
    w.orchestrate(2_600);
    assert_eq!(status(&w).state(), update_status::State::Updating);
    let decision = w.orchestrate(2_601);
    assert_eq!(
        decision.wake_at_ms,
        Some(2_500 + MONITOR_MS),
        "looks again when the monitor ends"
    );
    w.orchestrate(2_500 + MONITOR_MS);
    assert_eq!(status(&w).state(), update_status::State::Completed);
    assert_eq!(status(&w).completed_at_ms, 2_500 + MONITOR_MS);
    assert_eq!(status(&w).message, "update completed");
    // Converged: nothing more.
    assert_eq!(w.orchestrate(10_000), Default::default());
}

#[test]
fn parallelism_zero_replaces_every_task_at_once() {
    let mut w = running_service(4, config(0, 0, update_config::FailureAction::Pause));
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    assert_eq!(slots(&live_with(&w, "V=2")), [1, 2, 3, 4]);
}

#[test]
fn the_delay_holds_each_worker_after_the_task_it_started_runs() {
    let mut w = running_service(3, config(1, 10_000, update_config::FailureAction::Pause));
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    assert_eq!(slots(&live_with(&w, "V=2")), [1]);
    run_all(&mut w, "V=2", 2_000);
    let decision = w.orchestrate(2_001);
    assert_eq!(slots(&live_with(&w, "V=2")), [1], "within the delay");
    assert_eq!(decision.wake_at_ms, Some(12_000));
    w.orchestrate(11_999);
    assert_eq!(slots(&live_with(&w, "V=2")), [1]);
    w.orchestrate(12_000);
    assert_eq!(slots(&live_with(&w, "V=2")), [1, 2]);
}

#[test]
fn a_failure_pauses_the_update_naming_the_task_and_a_user_update_resumes_it() {
    let mut w = running_service(4, config(1, 0, update_config::FailureAction::Pause));
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = live_with(&w, "V=2").remove(0);
    w.set_state(&new.id, TaskState::Failed, 1_200);
    w.orchestrate(1_300);
    let paused = status(&w);
    assert_eq!(paused.state(), update_status::State::Paused);
    assert_eq!(
        paused.message,
        format!(
            "update paused due to failure or early termination of task {}",
            new.id
        )
    );
    assert_eq!(
        paused.started_at_ms, 1_000,
        "a pause keeps when the update started"
    );
    // Paused: no other slot gets the new spec, however long we wait.
    for now in [2_000, 60_000] {
        w.orchestrate(now);
        let updated: Vec<u64> = w
            .tasks()
            .iter()
            .filter(|t| env_of(t) == ["V=2"])
            .map(|t| t.slot)
            .collect();
        assert!(
            updated.iter().all(|s| *s == 1),
            "slot {updated:?} updated while paused"
        );
    }
    // Any update by the user resumes it: a new update starts.
    w.update_service(|s| s.replicas = Some(4));
    w.orchestrate(70_000);
    assert_eq!(status(&w).state(), update_status::State::Updating);
    assert_eq!(status(&w).started_at_ms, 70_000);
    w.orchestrate(70_001);
    assert!(
        slots(&live_with(&w, "V=2")).contains(&2),
        "the update goes on"
    );
}

#[test]
fn failures_up_to_the_ratio_are_tolerated_and_continue_never_stops() {
    // 4 slots at a ratio of 0.25: one failure is tolerated, two are not.
    let mut tolerant = config(4, 0, update_config::FailureAction::Pause);
    tolerant.max_failure_ratio = 0.25;
    let mut w = running_service(4, tolerant);
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = live_with(&w, "V=2");
    w.set_state(&new[0].id, TaskState::Failed, 1_100);
    w.orchestrate(1_200);
    assert_eq!(status(&w).state(), update_status::State::Updating);
    w.set_state(&new[1].id, TaskState::Rejected, 1_300);
    w.orchestrate(1_400);
    assert_eq!(status(&w).state(), update_status::State::Paused);

    let mut w = running_service(2, config(1, 0, update_config::FailureAction::Continue));
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = live_with(&w, "V=2").remove(0);
    w.set_state(&new.id, TaskState::Failed, 1_100);
    w.orchestrate(1_200);
    assert_eq!(status(&w).state(), update_status::State::Updating);
    assert!(
        w.live().iter().any(|t| t.slot == 2 && env_of(t) == ["V=2"]),
        "continue: the failed task frees its worker for the next slot"
    );
}

#[test]
fn a_task_that_fails_after_the_monitor_is_not_the_updates_failure() {
    let mut w = running_service(2, config(1, 0, update_config::FailureAction::Pause));
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = live_with(&w, "V=2").remove(0);
    let mut running = w.store.view().task(&new.id).unwrap();
    assert!(running.advance_status(shoal_api::TaskStatus {
        state: TaskState::Running as i32,
        timestamp_ms: 1_100,
        ..Default::default()
    }));
    assert!(running.advance_status(shoal_api::TaskStatus {
        state: TaskState::Failed as i32,
        timestamp_ms: 1_100 + MONITOR_MS + 1,
        ..Default::default()
    }));
    w.apply(
        vec![shoal_api::StoreAction {
            kind: shoal_api::store_action::Kind::Update as i32,
            target: Some(running.into()),
        }],
        1_100 + MONITOR_MS + 1,
    );
    w.orchestrate(1_100 + MONITOR_MS + 2);
    assert_eq!(status(&w).state(), update_status::State::Updating);
}

#[test]
fn failure_action_rollback_puts_the_previous_spec_back_and_rolls_back_only_updated_slots() {
    let mut update = config(1, 0, update_config::FailureAction::Rollback);
    update.max_failure_ratio = 0.0;
    let mut w = running_service(3, update);
    w.update_service(|s| s.rollback = Some(config(0, 0, update_config::FailureAction::Pause)));
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    run_all(&mut w, "V=2", 1_100);
    w.orchestrate(1_101);
    let second = live_with(&w, "V=2")
        .into_iter()
        .find(|t| t.slot == 2)
        .unwrap();
    w.set_state(&second.id, TaskState::Failed, 1_200);
    w.orchestrate(1_300);
    let service = w.store.view().service("svc").unwrap().clone();
    let rolled = service.update_status.clone().unwrap();
    assert_eq!(rolled.state(), update_status::State::RollbackStarted);
    assert_eq!(
        rolled.message,
        format!(
            "update rolled back due to failure or early termination of task {}",
            second.id
        )
    );
    let spec_env = |s: &shoal_api::ServiceSpec| {
        s.task
            .as_ref()
            .unwrap()
            .runtime
            .as_ref()
            .unwrap()
            .env
            .clone()
    };
    assert!(
        spec_env(service.spec.as_ref().unwrap()).is_empty(),
        "the previous spec is back"
    );
    assert_eq!(spec_env(service.previous_spec.as_ref().unwrap()), ["V=2"]);
    // The rollback config (all at once) replaces the updated slots; slot 3
    // never left the old spec and keeps its task.
    let slot3 = w.live().into_iter().find(|t| t.slot == 3).unwrap();
    w.orchestrate(1_400);
    w.orchestrate(1_401);
    assert!(
        live_with(&w, "V=2").is_empty(),
        "{:?}",
        live_with(&w, "V=2")
    );
    assert!(
        w.live().iter().any(|t| t.id == slot3.id),
        "slot 3 was replaced"
    );
    for t in w.live() {
        if t.observed() < TaskState::Running {
            w.set_state(&t.id, TaskState::Running, 1_500);
        }
    }
    w.orchestrate(1_501);
    w.orchestrate(1_500 + MONITOR_MS);
    assert_eq!(status(&w).state(), update_status::State::RollbackCompleted);
    assert_eq!(
        status(&w).message,
        format!(
            "rollback completed (update rolled back due to failure or early termination of task {})",
            second.id
        ),
        "why stays after the rollback ends"
    );
}

#[test]
fn start_first_stops_the_old_task_only_once_its_replacement_runs() {
    let mut update = config(1, 0, update_config::FailureAction::Pause);
    update.order = update_config::Order::StartFirst as i32;
    let mut w = running_service(2, update);
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let running = |w: &World| {
        w.live()
            .iter()
            .filter(|t| t.observed() == TaskState::Running)
            .count()
    };
    assert_eq!(w.live().len(), 3, "the new task is made beside the old one");
    assert_eq!(running(&w), 2);
    w.orchestrate(1_002);
    assert_eq!(w.live().len(), 3, "the old one waits for the new one");
    run_all(&mut w, "V=2", 1_100);
    w.orchestrate(1_101);
    assert_eq!(
        slots(&w.live()),
        [1, 2, 2],
        "slot 1's old task went, slot 2's update began"
    );
    assert!(running(&w) >= 2, "never fewer than the replicas running");
}

#[test]
fn a_start_first_replacement_that_fails_leaves_the_old_task_running() {
    let mut update = config(1, 0, update_config::FailureAction::Rollback);
    update.order = update_config::Order::StartFirst as i32;
    let mut w = running_service(1, update);
    let old = w.live().remove(0);
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = live_with(&w, "V=2").remove(0);
    w.set_state(&new.id, TaskState::Failed, 1_100);
    // Rolled back: the failed task is let go, the old one stays.
    w.orchestrate(1_200);
    w.orchestrate(1_201);
    w.orchestrate(1_202);
    assert_eq!(
        w.live().iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [old.id.as_str()]
    );
    w.orchestrate(1_202 + MONITOR_MS);
    assert_eq!(status(&w).state(), update_status::State::RollbackCompleted);
}

#[test]
fn a_scale_during_an_update_keeps_it_going_and_new_slots_get_the_new_spec() {
    let mut w = running_service(2, config(1, 0, update_config::FailureAction::Pause));
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    w.update_service(|s| s.replicas = Some(3));
    w.orchestrate(1_002);
    assert_eq!(
        status(&w).started_at_ms,
        1_000,
        "a scale does not restart the update"
    );
    assert_eq!(slots(&live_with(&w, "V=2")), [1, 3]);
}

#[test]
fn a_service_without_an_update_config_updates_as_dockers_do_one_at_a_time() {
    let mut w = World::new();
    w.create(service(3, RestartPolicy::default()), 0);
    w.orchestrate(0);
    run_all(&mut w, "", 0);
    for t in w.live() {
        w.set_state(&t.id, TaskState::Running, 0);
    }
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    assert_eq!(live_with(&w, "V=2").len(), 1);
    run_all(&mut w, "V=2", 1_100);
    w.orchestrate(1_101);
    w.orchestrate(1_101 + 4_999);
    assert_eq!(status(&w).state(), update_status::State::Updating);
    run_all(&mut w, "V=2", 1_200);
    w.orchestrate(1_201);
    run_all(&mut w, "V=2", 1_300);
    w.orchestrate(1_300 + 5_000);
    assert_eq!(
        status(&w).state(),
        update_status::State::Completed,
        "watched 5 s"
    );
}

fn job(replicas: i64, max_concurrent: u64) -> World {
    let mut w = World::new();
    let mut s = service(replicas, RestartPolicy::default());
    let spec = s.spec.as_mut().unwrap();
    spec.mode = shoal_api::ServiceMode::ReplicatedJob as i32;
    spec.max_concurrent = max_concurrent;
    w.create(s, 0);
    w
}

/// Tasks not yet ended (desired running, not terminal).
fn active(w: &World) -> Vec<Task> {
    w.live()
        .into_iter()
        .filter(|t| t.desired_state == TaskState::Running as i32 && !t.observed().is_terminal())
        .collect()
}

#[test]
fn a_job_runs_max_concurrent_at_a_time_until_every_completion_is_done() {
    let mut w = job(5, 2);
    w.orchestrate(0);
    assert_eq!(slots(&active(&w)), [1, 2], "two at once");
    let first = active(&w).remove(0);
    w.set_state(&first.id, TaskState::Complete, 100);
    w.orchestrate(101);
    assert_eq!(slots(&active(&w)), [2, 3], "one completed: the next starts");
    let done = w.store.view().task(&first.id).unwrap();
    assert_eq!(
        done.desired(),
        TaskState::Complete,
        "a completed run is wanted complete"
    );
    for now in [200, 300, 400, 500] {
        for t in active(&w) {
            w.set_state(&t.id, TaskState::Complete, now);
        }
        w.orchestrate(now + 1);
    }
    assert!(active(&w).is_empty());
    let completed: Vec<Task> = w
        .tasks()
        .into_iter()
        .filter(|t| t.desired() == TaskState::Complete)
        .collect();
    assert_eq!(
        slots(&completed),
        [1, 2, 3, 4, 5],
        "each slot completed once"
    );
    // Done: nothing more.
    assert_eq!(w.orchestrate(10_000), Default::default());
}

#[test]
fn a_forced_update_runs_a_completed_job_again() {
    let mut w = job(2, 0);
    w.orchestrate(0);
    let first: Vec<String> = active(&w).into_iter().map(|t| t.id).collect();
    for t in active(&w) {
        w.set_state(&t.id, TaskState::Complete, 100);
    }
    w.orchestrate(101);
    assert!(active(&w).is_empty());
    w.update_service(|s| s.task.as_mut().unwrap().force_update += 1);
    w.orchestrate(200);
    let again = active(&w);
    assert_eq!(slots(&again), [1, 2], "both run again");
    assert!(again.iter().all(|t| !first.contains(&t.id)), "as new tasks");
}

#[test]
fn a_rollback_during_a_start_first_update_keeps_the_old_task_and_lets_the_new_one_go() {
    let mut update = config(0, 0, update_config::FailureAction::Rollback);
    update.order = update_config::Order::StartFirst as i32;
    let mut w = running_service(2, update);
    w.update_service(|s| s.rollback = Some(config(0, 0, update_config::FailureAction::Pause)));
    let old: Vec<String> = w.live().into_iter().map(|t| t.id).collect();
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    // Slot 1's new task fails; slot 2's is still starting.
    let new = live_with(&w, "V=2");
    assert_eq!(new.len(), 2);
    let failing = new.iter().find(|t| t.slot == 1).unwrap();
    let starting = new.iter().find(|t| t.slot == 2).unwrap();
    w.set_state(&starting.id, TaskState::Starting, 1_050);
    w.set_state(&failing.id, TaskState::Failed, 1_100);
    w.orchestrate(1_200);
    assert_eq!(status(&w).state(), update_status::State::RollbackStarted);
    w.orchestrate(1_201);
    w.orchestrate(1_202);
    // Both old tasks still run; the new ones were let go.
    let live: Vec<String> = w.live().into_iter().map(|t| t.id).collect();
    assert_eq!(sorted_ids(live), sorted_ids(old));
    w.orchestrate(1_202 + MONITOR_MS);
    assert_eq!(status(&w).state(), update_status::State::RollbackCompleted);
}

fn sorted_ids(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[test]
fn a_rollback_that_would_change_nothing_or_name_a_lost_network_pauses_instead_saying_why() {
    // Scaled during the update: the previous spec runs the same tasks.
    let mut w = running_service(2, config(1, 0, update_config::FailureAction::Rollback));
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    w.update_service(|s| s.replicas = Some(3));
    let new = live_with(&w, "V=2").remove(0);
    w.set_state(&new.id, TaskState::Failed, 1_100);
    w.orchestrate(1_200);
    let paused = status(&w);
    assert_eq!(paused.state(), update_status::State::Paused);
    assert!(
        paused
            .message
            .ends_with("it cannot roll back: its previous spec runs the same tasks"),
        "{}",
        paused.message
    );

    // The previous spec's network was removed since.
    let mut w = running_service(2, config(0, 0, update_config::FailureAction::Rollback));
    let network = shoal_api::Network {
        id: "gone".into(),
        spec: Some(shoal_api::NetworkSpec {
            annotations: Some(shoal_api::Annotations {
                name: "backend".into(),
                labels: Default::default(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    w.create(network, 0);
    w.update_service(|s| {
        s.task.as_mut().unwrap().networks = vec![shoal_api::NetworkAttachmentConfig {
            target: "gone".into(),
            aliases: vec![],
        }]
    });
    w.orchestrate(500);
    w.orchestrate(501);
    run_all(&mut w, "", 600);
    w.orchestrate(600 + MONITOR_MS);
    w.update_service(|s| s.task.as_mut().unwrap().networks.clear());
    // Only the current spec holds a network: it can be removed.
    let network = w.store.view().network("gone").unwrap().clone();
    w.apply(
        vec![shoal_api::StoreAction {
            kind: shoal_api::store_action::Kind::Remove as i32,
            target: Some(network.into()),
        }],
        900,
    );
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = w
        .live()
        .into_iter()
        .find(|t| t.spec.as_ref().unwrap().networks.is_empty())
        .unwrap();
    w.set_state(&new.id, TaskState::Failed, 1_100);
    w.orchestrate(1_200);
    let paused = status(&w);
    assert_eq!(paused.state(), update_status::State::Paused);
    assert!(
        paused
            .message
            .ends_with("it cannot roll back: network gone of its previous spec no longer exists"),
        "{}",
        paused.message
    );
}

#[test]
fn a_start_first_replacement_that_ends_for_good_lets_the_old_task_go_and_the_update_completes() {
    let mut update = config(1, 0, update_config::FailureAction::Continue);
    update.order = update_config::Order::StartFirst as i32;
    let mut w = World::new();
    let mut s = service(
        1,
        RestartPolicy {
            condition: shoal_api::restart_policy::Condition::None as i32,
            ..Default::default()
        },
    );
    s.spec.as_mut().unwrap().update = Some(update);
    w.create(s, 0);
    w.orchestrate(0);
    run_all(&mut w, "", 0);
    for t in w.live() {
        w.set_state(&t.id, TaskState::Running, 0);
    }
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = live_with(&w, "V=2").remove(0);
    w.set_state(&new.id, TaskState::Failed, 1_100);
    w.orchestrate(1_200);
    w.orchestrate(1_201);
    assert!(
        w.live().iter().all(|t| env_of(t) == ["V=2"]),
        "the old task is let go once its replacement will not run again"
    );
    w.orchestrate(1_201 + MONITOR_MS);
    assert_eq!(status(&w).state(), update_status::State::Completed);
}

#[test]
fn restarts_are_counted_per_spec_so_an_updated_task_gets_its_own_attempts() {
    let mut w = World::new();
    let mut s = service(
        1,
        RestartPolicy {
            condition: shoal_api::restart_policy::Condition::Any as i32,
            max_attempts: 1,
            ..Default::default()
        },
    );
    s.spec.as_mut().unwrap().update = Some(config(1, 0, update_config::FailureAction::Continue));
    w.create(s, 0);
    w.orchestrate(0);
    // The first spec uses its one restart.
    let first = w.live().remove(0);
    w.set_state(&first.id, TaskState::Failed, 10);
    w.orchestrate(11);
    let second = w.live().remove(0);
    w.set_state(&second.id, TaskState::Running, 20);
    new_template(&mut w, "V=2");
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = live_with(&w, "V=2").remove(0);
    w.set_state(&new.id, TaskState::Failed, 1_100);
    w.orchestrate(1_200);
    let restarted = live_with(&w, "V=2");
    assert_eq!(restarted.len(), 1);
    assert_ne!(restarted[0].id, new.id, "the updated task was restarted");
}

#[test]
fn a_task_with_a_health_check_counts_as_updated_only_once_healthy() {
    use shoal_api::task_status::Health;
    let mut w = running_service(2, config(1, 0, update_config::FailureAction::Pause));
    w.update_service(|s| s.task.as_mut().unwrap().health = Some(health_check()));
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let first = w
        .live()
        .into_iter()
        .find(|t| t.slot == 1 && t.observed() == TaskState::New)
        .unwrap();
    let set = |w: &mut World, health: Health, at: i64| running_with(w, &first.id, health, at);
    set(&mut w, Health::Starting, 1_100);
    w.orchestrate(1_101);
    let replaced_slot2 = |w: &World| {
        w.live()
            .iter()
            .any(|t| t.slot == 2 && t.observed() == TaskState::New)
    };
    assert!(
        !replaced_slot2(&w),
        "running but not yet healthy: slot 2 waits"
    );
    set(&mut w, Health::Healthy, 1_200);
    w.orchestrate(1_201);
    assert!(replaced_slot2(&w), "healthy: slot 2's turn");
}

#[test]
fn start_first_with_a_health_check_stops_the_old_task_only_once_the_new_one_is_healthy() {
    use shoal_api::task_status::Health;
    let mut update = config(1, 0, update_config::FailureAction::Pause);
    update.order = update_config::Order::StartFirst as i32;
    let mut w = running_service(1, update);
    let old = w.live().remove(0);
    w.update_service(|s| s.task.as_mut().unwrap().health = Some(health_check()));
    w.orchestrate(1_000);
    w.orchestrate(1_001);
    let new = w.live().into_iter().find(|t| t.id != old.id).unwrap();
    let set = |w: &mut World, health: Health, at: i64| running_with(w, &new.id, health, at);
    set(&mut w, Health::Starting, 1_100);
    w.orchestrate(1_101);
    assert!(
        w.live().iter().any(|t| t.id == old.id),
        "running but not yet healthy: the old task stays"
    );
    set(&mut w, Health::Healthy, 1_200);
    w.orchestrate(1_201);
    assert!(
        w.live().iter().all(|t| t.id != old.id),
        "healthy: the old task goes"
    );
}

fn health_check() -> shoal_api::HealthConfig {
    shoal_api::HealthConfig {
        command: "check".into(),
        interval_ms: 100,
        timeout_ms: 100,
        retries: 3,
        start_period_ms: 0,
        disabled: false,
    }
}

/// The agent reports `task` running with `health`.
fn running_with(w: &mut World, task: &str, health: shoal_api::task_status::Health, at: i64) {
    let mut t = w.store.view().task(task).unwrap();
    t.status = Some(shoal_api::TaskStatus {
        state: TaskState::Running as i32,
        timestamp_ms: at,
        health: health as i32,
        ..Default::default()
    });
    w.apply(
        vec![shoal_api::StoreAction {
            kind: shoal_api::store_action::Kind::Update as i32,
            target: Some(t.into()),
        }],
        at,
    );
}
