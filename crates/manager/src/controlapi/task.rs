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
    ) -> Result<Pages<shoal_api::Task, ListTasksResponse>, ApiError> {
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
        // Ids only, through the narrowest index: each task is decoded and
        // copied when its page is made.
        let ids: Vec<String> = match (&service_id, &node_id) {
            (Some(s), _) => view.task_ids_of_service(s).map(str::to_string).collect(),
            (None, Some(n)) => view
                .task_versions_of_node(n)
                .map(|(id, _)| id.to_string())
                .collect(),
            (None, None) => view.task_ids().map(str::to_string).collect(),
        };
        let desired = req.desired_states;
        Ok(Pages::new(
            view,
            ids,
            move |view, id| {
                view.task(id)
                    .filter(|t| node_id.as_ref().is_none_or(|n| &t.node_id == n))
                    .filter(|t| desired.is_empty() || desired.contains(&t.desired_state))
            },
            |tasks| ListTasksResponse { tasks },
        ))
    }
}
