//! The networks: create (subnets may not overlap), read, list, remove (refused while a service uses it).

use super::validate::{parse_subnet, subnets_overlap};
use shoal_api::{
    CreateNetworkRequest, GetRequest, ListNetworksResponse, ListRequest, Network, NetworkResponse,
    RemoveRequest, RemoveResponse,
};

use super::*;

impl ControlApi {
    pub async fn create_network(
        &self,
        request: CreateNetworkRequest,
    ) -> Result<NetworkResponse, ApiError> {
        let mut spec = request.spec.unwrap_or_default();
        if spec.driver.is_empty() {
            spec.driver = "overlay".into();
        }
        validate_network_spec(&spec).map_err(ApiError::from)?;
        let id = self.new_id();
        let mut actions = Vec::new();
        {
            let view = self.view();
            let name = spec
                .annotations
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            self.name_taken(&view, ObjectKind::Network, &name)?;
            if let Ok(mine) = parse_subnet(&spec.subnet) {
                for other in view.networks() {
                    let other_spec = other.spec.clone().unwrap_or_default();
                    if let Ok(theirs) = parse_subnet(&other_spec.subnet) {
                        if subnets_overlap(mine, theirs) {
                            let other_name =
                                other_spec.annotations.map(|a| a.name).unwrap_or_default();
                            return Err(ApiError::from(InvalidSpec {
                                field: "subnet".into(),
                                rule: format!(
                                    "{} overlaps {} of network {other_name}",
                                    spec.subnet, other_spec.subnet
                                ),
                            }));
                        }
                        // Pin the networks we compared against.
                        actions.push(action(store_action::Kind::Check, other.clone()));
                    }
                }
            }
        }
        let network = Network {
            id: id.clone(),
            spec: Some(spec),
            ..Default::default()
        };
        actions.push(action(store_action::Kind::Create, network));
        self.commit(actions).await?;
        let network = self.view().network(&id).cloned();
        Ok(NetworkResponse { network })
    }

    pub async fn get_network(&self, request: GetRequest) -> Result<NetworkResponse, ApiError> {
        match self.lookup(ObjectKind::Network, &request.reference)?.kind {
            Some(object::Kind::Network(n)) => Ok(NetworkResponse { network: Some(*n) }),
            _ => Err(ApiError::Internal("lookup returned another kind".into())),
        }
    }

    pub async fn list_networks(
        &self,
        request: ListRequest,
    ) -> Result<Pages<shoal_api::Network, ListNetworksResponse>, ApiError> {
        let prefixes = request.name_prefixes;
        let view = self.view();
        let ids = view
            .networks()
            .filter(|n| {
                let name = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .map(|a| a.name.as_str());
                matches_prefixes(&prefixes, &n.id, name)
            })
            .map(|n| n.id.clone())
            .collect();
        Ok(Pages::new(
            view,
            ids,
            |view, id| view.network(id).cloned(),
            |networks| ListNetworksResponse { networks },
        ))
    }

    pub async fn remove_network(&self, request: RemoveRequest) -> Result<RemoveResponse, ApiError> {
        let reference = request.reference;
        let network = self.lookup(ObjectKind::Network, &reference)?;
        let id = network.id().to_string();
        {
            let view = self.view();
            let users: Vec<String> = view
                .services()
                .filter(|s| {
                    s.spec
                        .as_ref()
                        .and_then(|s| s.task.as_ref())
                        .is_some_and(|t| t.networks.iter().any(|n| n.target == id))
                })
                .filter_map(|s| {
                    s.spec
                        .as_ref()?
                        .annotations
                        .as_ref()
                        .map(|a| a.name.clone())
                })
                .collect();
            if !users.is_empty() {
                return Err(ApiError::Refused(format!(
                    "network {reference} is in use by service {}",
                    users.join(", ")
                )));
            }
        }
        self.commit(vec![action(store_action::Kind::Remove, network)])
            .await?;
        Ok(RemoveResponse { id })
    }
}
