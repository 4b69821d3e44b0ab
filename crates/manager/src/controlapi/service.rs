//! The services: create, read, update (a scale is an update), remove and list.

use crate::limits::{check_service, Limits};
use shoal_api::{
    update_status, CreateServiceRequest, GetRequest, ListRequest, ListServicesResponse,
    RemoveRequest, RemoveResponse, ServiceResponse, UpdateServiceRequest, UpdateStatus,
};

use super::*;

impl ControlApi {
    pub async fn create_service(
        &self,
        request: CreateServiceRequest,
    ) -> Result<ServiceResponse, ApiError> {
        let spec = request.spec.unwrap_or_default();
        validate_service_spec(&spec).map_err(ApiError::from)?;
        let mut spec = with_service_defaults(spec);
        let id = self.new_id();
        let actions = {
            let view = self.view();
            let name = spec
                .annotations
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            self.name_taken(&view, ObjectKind::Service, &name)?;
            check_service(&Limits::of(view.cluster()), &view, &spec, None)
                .map_err(ApiError::from)?;
            let mut actions = self.resolve_networks(&view, &mut spec)?;
            let service = Service {
                id: id.clone(),
                spec: Some(spec),
                ..Default::default()
            };
            actions.push(action(store_action::Kind::Create, service));
            actions
        };
        self.commit(actions).await?;
        Ok(ServiceResponse {
            service: Some(self.read_service(&id)?),
        })
    }

    pub async fn get_service(&self, request: GetRequest) -> Result<ServiceResponse, ApiError> {
        let service = self.service(&request.reference)?;
        Ok(ServiceResponse {
            service: Some(service),
        })
    }

    pub async fn update_service(
        &self,
        req: UpdateServiceRequest,
    ) -> Result<ServiceResponse, ApiError> {
        if req.rollback {
            return self.rollback_service(req).await;
        }
        let spec = req.spec.unwrap_or_default();
        validate_service_spec(&spec).map_err(ApiError::from)?;
        let mut spec = with_service_defaults(spec);
        let actions = {
            let view = self.view();
            let current = service_by_id(&view, &req.service_id)?;
            let old_spec = current.spec.clone().unwrap_or_default();
            if old_spec.mode != spec.mode {
                let name = |m: i32| {
                    ServiceMode::try_from(m)
                        .map(|m| m.as_str_name().to_ascii_lowercase())
                        .unwrap_or_default()
                };
                return Err(ApiError::from(InvalidSpec {
                    field: "mode".into(),
                    rule: format!(
                        "a service's mode cannot change ({} to {}); remove the service and create it again",
                        name(old_spec.mode),
                        name(spec.mode)
                    ),
                }));
            }
            check_service(&Limits::of(view.cluster()), &view, &spec, Some(&current.id))
                .map_err(ApiError::from)?;
            let mut actions = self.resolve_networks(&view, &mut spec)?;
            let mut service = current.clone();
            // What the tasks run changed, or the user updates a paused
            // update: the update supervisor starts again from here.
            let paused = current.update_status.as_ref().is_some_and(|s| s.paused());
            if !old_spec.runs_same_tasks(&spec) || paused {
                service.update_status = None;
            }
            if old_spec != spec {
                service.previous_spec = Some(old_spec);
            }
            service.spec = Some(spec);
            // The version the client read, not the one we see now: a change
            // in between must fail as a conflict.
            if let Some(meta) = service.meta.as_mut() {
                meta.version = req.version;
            }
            actions.push(action(store_action::Kind::Update, service));
            actions
        };
        self.commit(actions).await?;
        Ok(ServiceResponse {
            service: Some(self.read_service(&req.service_id)?),
        })
    }

    /// The previous spec back, under the rollback config: `service
    /// rollback`. Refused when the service has none (it was never updated).
    async fn rollback_service(
        &self,
        req: UpdateServiceRequest,
    ) -> Result<ServiceResponse, ApiError> {
        let actions = {
            let view = self.view();
            let current = service_by_id(&view, &req.service_id)?;
            let name = current
                .spec
                .as_ref()
                .and_then(|s| s.annotations.as_ref())
                .map_or(current.id.as_str(), |a| a.name.as_str());
            if current.spec.as_ref().is_some_and(|s| s.is_job()) {
                return Err(ApiError::Refused(format!(
                    "service {name} is a job: a job's runs are not rolled out, so there is nothing to roll back; update it with the spec to run"
                )));
            }
            let Some(previous) = current.previous_spec.clone() else {
                return Err(ApiError::Refused(format!(
                    "service {name} has no previous spec to roll back to (it was never updated)"
                )));
            };
            let mut service = current.clone();
            service.previous_spec = current.spec.clone();
            service.spec = Some(previous);
            service.update_status = Some(UpdateStatus {
                state: update_status::State::RollbackStarted as i32,
                started_at_ms: shoal_api::clock::now_ms(),
                completed_at_ms: 0,
                message: "manually requested rollback".into(),
            });
            if let Some(meta) = service.meta.as_mut() {
                meta.version = req.version;
            }
            let mut actions = Vec::new();
            // The networks the previous spec names must still be there.
            if let Some(spec) = service.spec.as_mut() {
                actions = self.resolve_networks(&view, spec)?;
            }
            actions.push(action(store_action::Kind::Update, service));
            actions
        };
        self.commit(actions).await?;
        Ok(ServiceResponse {
            service: Some(self.read_service(&req.service_id)?),
        })
    }

    pub async fn remove_service(&self, request: RemoveRequest) -> Result<RemoveResponse, ApiError> {
        let service = self.service(&request.reference)?;
        let id = service.id.clone();
        self.commit(vec![action(store_action::Kind::Remove, service)])
            .await?;
        Ok(RemoveResponse { id })
    }

    pub async fn list_services(
        &self,
        request: ListRequest,
    ) -> Result<Pages<shoal_api::ServiceSummary, ListServicesResponse>, ApiError> {
        let prefixes = request.name_prefixes;
        let view = self.view();
        let ids = view
            .services()
            .filter(|s| {
                let name = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .map(|a| a.name.as_str());
                matches_prefixes(&prefixes, &s.id, name)
            })
            .map(|s| s.id.clone())
            .collect();
        Ok(Pages::new(
            Arc::clone(&view),
            ids,
            |view, id| view.service(id).map(|s| Self::summarize(view, s)),
            |services| ListServicesResponse { services },
        ))
    }
}

/// The service an update names by id, as the view has it.
fn service_by_id(view: &shoal_store::Tables, id: &str) -> Result<shoal_api::Service, ApiError> {
    view.service(id).cloned().ok_or_else(|| {
        ApiError::Lookup(shoal_store::LookupError::NotFound {
            kind: "service".into(),
            reference: id.to_string(),
        })
    })
}
