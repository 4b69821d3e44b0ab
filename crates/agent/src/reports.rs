//! Status reports on their way to the dispatcher.
//!
//! One call is in flight at a time and carries everything that waited for
//! it, so reports leave in the order they were made. The session loop polls
//! the call as one branch of its `select!` ([`Reports::answered`]) and goes
//! on serving assignments, stop orders and timers while the manager commits
//! it: a report takes one raft commit, 100–300 ms on a loaded manager, and an
//! agent that awaited it inline left every new assignment of its node
//! waiting that long.
//!
//! A call that fails, or that its session outlives ([`Reports::abandon`]),
//! puts its reports back in front: they go again on the next session. A
//! report the dispatcher already applied is dropped there (a task's state
//! only moves forward), so sending one twice is harmless; losing one is not.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use shoal_api::dispatcher_client::DispatcherClient;
use shoal_api::{TaskStatusUpdate, UpdateTaskStatusRequest};
use tonic::transport::Channel;

type Call = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

struct InFlight {
    updates: Vec<TaskStatusUpdate>,
    call: Call,
}

/// An agent's reports not yet accepted by a dispatcher.
pub struct Reports {
    waiting: VecDeque<TaskStatusUpdate>,
    in_flight: Option<InFlight>,
    max_per_call: usize,
    max_waiting: usize,
}

impl Reports {
    /// At most `max_per_call` reports go in one call. Beyond `max_waiting`
    /// waiting reports (a dispatcher out of reach for long), only the latest
    /// of each task is kept: the manager needs where a task is, not every
    /// step it took while nobody listened.
    pub fn new(max_per_call: usize, max_waiting: usize) -> Reports {
        Reports {
            waiting: VecDeque::new(),
            in_flight: None,
            max_per_call: max_per_call.max(1),
            max_waiting: max_waiting.max(1),
        }
    }

    /// Queues a report behind those already waiting.
    pub fn push(&mut self, update: TaskStatusUpdate) {
        self.waiting.push_back(update);
        if self.waiting.len() > self.max_waiting {
            let mut order: Vec<String> = Vec::new();
            let mut latest: HashMap<String, TaskStatusUpdate> = HashMap::new();
            for u in self.waiting.drain(..) {
                if !latest.contains_key(&u.task_id) {
                    order.push(u.task_id.clone());
                }
                latest.insert(u.task_id.clone(), u);
            }
            self.waiting = order
                .into_iter()
                .filter_map(|id| latest.remove(&id))
                .collect();
        }
    }

    /// Starts a call with what waits, unless one is in flight already or
    /// nothing waits.
    pub fn send(&mut self, client: &DispatcherClient<Channel>, node_id: &str, session_id: &str) {
        if self.in_flight.is_some() || self.waiting.is_empty() {
            return;
        }
        let count = self.waiting.len().min(self.max_per_call);
        let updates: Vec<TaskStatusUpdate> = self.waiting.drain(..count).collect();
        let request = UpdateTaskStatusRequest {
            node_id: node_id.to_string(),
            session_id: session_id.to_string(),
            updates: updates.clone(),
        };
        let mut client = client.clone();
        let call = Box::pin(async move { client.update_task_status(request).await.map(|_| ()) });
        self.in_flight = Some(InFlight { updates, call });
    }

    /// Waits for the answer to the call in flight; never returns while none
    /// is. Accepted reports are done with; refused ones wait again, in front,
    /// and the error says the session is no good.
    ///
    /// # Cancel safety
    /// Cancel safe: the call stays in flight and is waited for again by the
    /// next call of this method.
    pub async fn answered(&mut self) -> Result<(), tonic::Status> {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let result = in_flight.call.as_mut().await;
        if result.is_err() {
            self.abandon();
        }
        self.in_flight = None;
        result
    }

    /// The session ended: the call in flight is given up and its reports
    /// wait again, in front, for the next session.
    pub fn abandon(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            for u in in_flight.updates.into_iter().rev() {
                self.waiting.push_front(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::TaskStatus;

    fn report(task: &str, state: i32) -> TaskStatusUpdate {
        TaskStatusUpdate {
            task_id: task.into(),
            status: Some(TaskStatus {
                state,
                ..Default::default()
            }),
        }
    }

    fn waiting(r: &Reports) -> Vec<(String, i32)> {
        r.waiting
            .iter()
            .map(|u| (u.task_id.clone(), u.status.as_ref().map_or(0, |s| s.state)))
            .collect()
    }

    #[test]
    fn past_the_bound_only_each_tasks_latest_report_waits_in_first_report_order() {
        let mut r = Reports::new(10, 4);
        for (task, state) in [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2)] {
            r.push(report(task, state));
        }
        assert_eq!(
            waiting(&r),
            vec![("a".into(), 2), ("b".into(), 2), ("c".into(), 1)]
        );
    }

    #[tokio::test]
    async fn an_abandoned_call_puts_its_reports_back_in_front_in_their_order() {
        let mut r = Reports::new(2, 100);
        for (task, state) in [("a", 1), ("a", 2), ("b", 1)] {
            r.push(report(task, state));
        }
        // A client whose connection is never made: the call only waits.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        r.send(&DispatcherClient::new(channel), "n1", "s1");
        assert_eq!(waiting(&r), vec![("b".into(), 1)]);
        assert_eq!(r.in_flight.as_ref().map(|f| f.updates.len()), Some(2));
        r.push(report("b", 2));
        r.abandon();
        assert_eq!(
            waiting(&r),
            vec![
                ("a".into(), 1),
                ("a".into(), 2),
                ("b".into(), 1),
                ("b".into(), 2)
            ]
        );
    }
}
