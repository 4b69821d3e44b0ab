//! The tasks: read and list (tasks are the orchestrator's to write).

use shoal_api::{GetRequest, ListTasksRequest, ListTasksResponse, TaskResponse};

use super::*;

impl ControlApi {
    pub async fn get_task(&self, request: GetRequest) -> Result<TaskResponse, ApiError> {
        match self.lookup(ObjectKind::Task, &request.reference)?.kind {
            Some(object::Kind::Task(task)) => Ok(TaskResponse { task: Some(*task) }),
            _ => Err(ApiError::Internal("lookup returned another kind".into())),
        }
    }

    pub async fn list_tasks(
        &self,
        req: ListTasksRequest,
    ) -> Result<Vec<ListTasksResponse>, ApiError> {
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
}
