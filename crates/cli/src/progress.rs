//! Waiting for a service to converge after `service create`, `update`,
//! `rollback` or `scale`, as `docker service create` does: one line per
//! slot (per node for global services) with the state of the task that
//! runs the service's current spec, an overall line, then `verify: Service
//! NAME converged`; or the reason an update paused or rolled back, as an
//! error.
//!
//! On a terminal the lines are redrawn in place (indicatif); otherwise each
//! change is printed once as a plain line, with no control codes.
//!
//! Progress is read by polling: the service and its live tasks while it
//! has rows to draw, the manager's counts past that.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_api::task_status::Health;
use shoal_api::{
    update_status, GetRequest, ListRequest, ListTasksRequest, Service, ServiceMode, Task, TaskState,
};

use crate::client::Client;

/// Rows drawn one per place; past this only the overall line is drawn, as
/// docker does.
const MAX_ROWS: usize = 20;
/// The states a task goes through to RUNNING, in order: a row's bar fills
/// as its task moves along them.
const STEPS: [TaskState; 8] = [
    TaskState::New,
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Accepted,
    TaskState::Preparing,
    TaskState::Ready,
    TaskState::Starting,
    TaskState::Running,
];

/// What the user asked, which decides what counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A create or scale: every place runs a task of the current spec.
    Converge,
    /// An update: also the update status says completed; a rollback by
    /// the failure action is an error.
    Update,
    /// A rollback the user asked for: the status says rollback completed.
    Rollback,
}

/// One look at the service: how far each place is.
#[derive(Debug, Default, PartialEq)]
struct Look {
    /// Per place (`1/3` or a node), the state of its task of the current
    /// spec, or `None` while it still runs an older one.
    rows: Vec<(String, Option<TaskState>)>,
    done: usize,
    total: usize,
    /// Tasks of an older spec still running.
    old: usize,
    /// Why a task of the current spec waits, if one says.
    waiting: Option<String>,
}

/// Where the look ends: still going, converged, or an error to report.
#[derive(Debug, PartialEq)]
enum Outcome {
    Going,
    Converged,
    Failed(String),
}

fn look(service: &Service, tasks: &[Task]) -> Look {
    let spec = service.spec.clone().unwrap_or_default();
    let goal = if spec.is_job() {
        TaskState::Complete
    } else {
        TaskState::Running
    };
    // Slots in order, then nodes (global services).
    let mut places: BTreeMap<(u64, &str), Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        let node = if t.slot > 0 { "" } else { t.node_id.as_str() };
        places.entry((t.slot, node)).or_default().push(t);
    }
    let total = spec.replicas_wanted().map_or(places.len(), |r| r as usize);
    let mut out = Look {
        total,
        ..Default::default()
    };
    for ((slot, node), live) in &places {
        let current = live
            .iter()
            .filter(|t| service.runs_current(t, t.spec.as_ref().unwrap_or(&Default::default())))
            .max_by_key(|t| t.meta.as_ref().map_or(0, |m| m.created_at_ms));
        out.old += live
            .iter()
            .filter(|t| !service.runs_current(t, t.spec.as_ref().unwrap_or(&Default::default())))
            .filter(|t| !t.observed().is_terminal())
            .count();
        let label = if *slot > 0 {
            format!("{slot}/{total}")
        } else {
            node.to_string()
        };
        let state = current.map(|t| t.observed());
        // Up once at the goal, and healthy when the task has a check.
        let healthy = current.is_some_and(|t| {
            matches!(
                t.status.as_ref().map_or(0, |s| s.health),
                h if h == Health::None as i32 || h == Health::Healthy as i32
            )
        });
        if state == Some(goal) && healthy {
            out.done += 1;
        }
        if let Some(t) = current {
            let err = t.status.as_ref().map(|s| s.err.clone()).unwrap_or_default();
            if !err.is_empty() && out.waiting.is_none() {
                out.waiting = Some(format!("{label}: {err}"));
            }
        }
        out.rows.push((label, state));
    }
    out
}

fn outcome(service: &Service, look: &Look, change: Change) -> Outcome {
    let status = service.update_status.clone().unwrap_or_default();
    let message = status.message.clone();
    use update_status::State;
    match (status.state(), change) {
        (State::Paused | State::RollbackPaused, _) => return Outcome::Failed(message),
        (State::RollbackStarted | State::RollbackCompleted, Change::Update) => {
            return Outcome::Failed(format!("the update was rolled back: {message}"))
        }
        (State::Updating | State::RollbackStarted, _) => return Outcome::Going,
        (State::Completed | State::Unknown, Change::Rollback) => return Outcome::Going,
        _ => {}
    }
    if look.done == look.total && look.old == 0 {
        Outcome::Converged
    } else {
        Outcome::Going
    }
}

/// A global service shows no task until the orchestrator placed some: how
/// long the wait trusts "no task" to mean "no node wants one".
const GLOBAL_EMPTY_GRACE: Duration = Duration::from_secs(2);

fn state_name(state: Option<TaskState>) -> String {
    state.map_or_else(
        || "waiting to update".to_string(),
        |s| s.as_str_name().to_ascii_lowercase(),
    )
}

fn step_of(state: Option<TaskState>) -> u64 {
    state.map_or(0, |s| {
        STEPS
            .iter()
            .position(|x| *x == s)
            .map_or(STEPS.len(), |i| i + 1) as u64
    })
}

/// How the progress is shown.
enum Display {
    Bars {
        overall: ProgressBar,
        rows: BTreeMap<String, ProgressBar>,
        multi: MultiProgress,
    },
    Lines {
        shown: BTreeMap<String, String>,
        overall: String,
    },
    Quiet,
}

impl Display {
    fn new(quiet: bool) -> Display {
        if quiet {
            return Display::Quiet;
        }
        if std::io::stdout().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let overall = multi.add(ProgressBar::new_spinner());
            overall.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            return Display::Bars {
                overall,
                rows: BTreeMap::new(),
                multi,
            };
        }
        Display::Lines {
            shown: BTreeMap::new(),
            overall: String::new(),
        }
    }

    fn show(&mut self, look: &Look) {
        let overall = format!(
            "overall progress: {} out of {} tasks",
            look.done, look.total
        );
        match self {
            Display::Quiet => {}
            Display::Bars {
                overall: line,
                rows,
                multi,
            } => {
                let waiting = look
                    .waiting
                    .as_deref()
                    .map(|w| format!("\n{w}"))
                    .unwrap_or_default();
                line.set_message(format!("{overall}{waiting}"));
                if look.rows.len() > MAX_ROWS {
                    return;
                }
                for (label, state) in &look.rows {
                    let bar = rows.entry(label.clone()).or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new(STEPS.len() as u64));
                        bar.set_style(
                            ProgressStyle::with_template("{prefix}: {msg:<18} [{bar:50}]")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        bar.set_prefix(label.clone());
                        bar
                    });
                    bar.set_position(step_of(*state));
                    bar.set_message(state_name(*state));
                }
            }
            Display::Lines {
                shown,
                overall: last,
            } => {
                if look.rows.len() <= MAX_ROWS {
                    for (label, state) in &look.rows {
                        let name = state_name(*state);
                        if shown.get(label) != Some(&name) {
                            println!("{label}: {name}");
                            shown.insert(label.clone(), name);
                        }
                    }
                }
                if *last != overall {
                    println!("{overall}");
                    *last = overall;
                }
                if let Some(why) = &look.waiting {
                    if shown.get("waiting") != Some(why) {
                        println!("{why}");
                        shown.insert("waiting".into(), why.clone());
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Display::Bars { overall, rows, .. } = self {
            for bar in rows.values() {
                bar.finish();
            }
            overall.finish();
        }
    }
}

/// Waits until the service converges after `change`, showing progress
/// unless `quiet`. An update that pauses or is rolled back is an error
/// naming why.
pub async fn wait(
    client: &mut Client,
    service_id: &str,
    change: Change,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut display = Display::new(quiet);
    let began = std::time::Instant::now();
    let mut unreachable = 0u32;
    loop {
        let (service, now) = match read(client, service_id).await {
            Ok(read) => {
                unreachable = 0;
                read
            }
            // A manager electing a leader, or restarting: the change goes
            // on meanwhile, so the wait does too, for a while.
            Err(status) if transient(&status) && unreachable < MAX_UNREACHABLE_LOOKS => {
                unreachable += 1;
                let pause = 250 * u64::from(unreachable.min(8));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            Err(status) => return Err(client.error(status)),
        };
        display.show(&now);
        let global = service
            .spec
            .as_ref()
            .is_some_and(|s| s.replicas_wanted().is_none());
        let verdict = match outcome(&service, &now, change) {
            Outcome::Converged
                if global && now.total == 0 && began.elapsed() < GLOBAL_EMPTY_GRACE =>
            {
                Outcome::Going
            }
            verdict => verdict,
        };
        match verdict {
            Outcome::Going => {}
            Outcome::Converged => {
                display.finish();
                if !quiet {
                    println!(
                        "verify: Service {} converged",
                        crate::service::name_of(&service)
                    );
                }
                return Ok(());
            }
            Outcome::Failed(why) => {
                display.finish();
                anyhow::bail!("{why}");
            }
        }
        // A service read task by task is small (at most MAX_ROWS places,
        // or a global one, one task a node): larger ones are looked at less
        // often all the same.
        let pause_ms = (250 + now.rows.len() as u64 / 100).min(2_000);
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
}

/// Looks in a row the daemon may fail to answer before the wait gives up.
const MAX_UNREACHABLE_LOOKS: u32 = 40;

fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

/// The service and how far it is: from its live tasks (and jobs'
/// completed runs) when it has rows to draw; past [`MAX_ROWS`], from the
/// manager's counts, so a look at a service of any size costs one small
/// answer.
async fn read(client: &mut Client, service_id: &str) -> Result<(Service, Look), tonic::Status> {
    let service = client
        .api()
        .get_service(GetRequest {
            reference: service_id.to_string(),
        })
        .await?
        .into_inner()
        .service
        .unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    if let Some(total) = spec.replicas_wanted().filter(|n| *n as usize > MAX_ROWS) {
        let request = ListRequest {
            name_prefixes: vec![service.id.clone()],
        };
        let mut pages = client.api().list_services(request).await?.into_inner();
        let mut look = Look {
            total: total as usize,
            ..Default::default()
        };
        while let Some(page) = pages.message().await? {
            for summary in page.services {
                if summary.service.as_ref().is_some_and(|s| s.id == service.id) {
                    let job = spec.mode == ServiceMode::ReplicatedJob as i32;
                    look.done = if job {
                        summary.completed_tasks
                    } else {
                        summary.running_tasks
                    } as usize;
                }
            }
        }
        return Ok((service, look));
    }
    let request = ListTasksRequest {
        service: service_id.to_string(),
        node: String::new(),
        desired_states: vec![
            TaskState::Running as i32,
            TaskState::Ready as i32,
            TaskState::Complete as i32,
        ],
    };
    let mut pages = client.api().list_tasks(request).await?.into_inner();
    let mut tasks = Vec::new();
    while let Some(page) = pages.message().await? {
        tasks.extend(page.tasks);
    }
    let look = look(&service, &tasks);
    Ok((service, look))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::{Meta, Runtime, ServiceSpec, TaskSpec, TaskStatus, UpdateStatus};

    fn template(env: &str) -> TaskSpec {
        TaskSpec {
            runtime: Some(Runtime {
                env: vec![env.into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn service(replicas: i64, env: &str, state: update_status::State) -> Service {
        Service {
            id: "s".into(),
            spec: Some(ServiceSpec {
                task: Some(template(env)),
                replicas: Some(replicas),
                ..Default::default()
            }),
            spec_version: 10,
            update_status: Some(UpdateStatus {
                state: state as i32,
                message: "update paused due to failure or early termination of task t".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(slot: u64, env: &str, version: u64, state: TaskState) -> Task {
        Task {
            id: format!("t{slot}{env}"),
            slot,
            spec: Some(template(env)),
            spec_version: version,
            meta: Some(Meta {
                created_at_ms: version as i64,
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_slot_shows_its_task_of_the_current_spec_and_old_tasks_hold_convergence() {
        let s = service(2, "V=2", update_status::State::Updating);
        let tasks = [
            task(1, "V=2", 10, TaskState::Running),
            task(2, "V=1", 5, TaskState::Running),
        ];
        let l = look(&s, &tasks);
        assert_eq!(
            l.rows,
            [
                ("1/2".to_string(), Some(TaskState::Running)),
                ("2/2".to_string(), None)
            ]
        );
        assert_eq!((l.done, l.total, l.old), (1, 2, 1));
        assert_eq!(outcome(&s, &l, Change::Update), Outcome::Going);
        // A task of an older version with the same template is current
        // (an update rolled back leaves it alone).
        let s = service(2, "V=1", update_status::State::Completed);
        let l = look(&s, &tasks[1..]);
        assert_eq!(l.rows, [("2/2".to_string(), Some(TaskState::Running))]);
    }

    #[test]
    fn an_update_converges_when_completed_and_fails_when_paused_or_rolled_back() {
        let tasks = [
            task(1, "V=2", 10, TaskState::Running),
            task(2, "V=2", 11, TaskState::Running),
        ];
        for (state, change, expected) in [
            (update_status::State::Updating, Change::Update, "going"),
            (update_status::State::Completed, Change::Update, "converged"),
            (update_status::State::Paused, Change::Update, "failed"),
            (
                update_status::State::RollbackCompleted,
                Change::Update,
                "failed",
            ),
            (
                update_status::State::RollbackCompleted,
                Change::Rollback,
                "converged",
            ),
            (update_status::State::Completed, Change::Rollback, "going"),
            (update_status::State::Unknown, Change::Converge, "converged"),
        ] {
            let s = service(2, "V=2", state);
            let got = match outcome(&s, &look(&s, &tasks), change) {
                Outcome::Going => "going",
                Outcome::Converged => "converged",
                Outcome::Failed(why) => {
                    assert!(why.contains("task t"), "{why}");
                    "failed"
                }
            };
            assert_eq!(got, expected, "{state:?} after {change:?}");
        }
    }

    #[test]
    fn a_rows_bar_fills_along_the_states_to_running() {
        assert_eq!(step_of(None), 0);
        assert_eq!(step_of(Some(TaskState::New)), 1);
        assert_eq!(step_of(Some(TaskState::Running)), 8);
        assert_eq!(state_name(Some(TaskState::Preparing)), "preparing");
    }
}
