//! The cluster object and the version of this node.

use shoal_api::{
    ClusterResponse, GetClusterRequest, UpdateClusterRequest, VersionRequest, VersionResponse,
};

use super::*;

impl ControlApi {
    pub async fn get_cluster(
        &self,
        _request: GetClusterRequest,
    ) -> Result<ClusterResponse, ApiError> {
        let cluster = self.view().cluster().cloned();
        if cluster.is_none() {
            return Err(ApiError::Unavailable(
                "the cluster is still being created".into(),
            ));
        }
        Ok(ClusterResponse {
            cluster: cluster.map(without_secrets),
        })
    }

    pub async fn update_cluster(
        &self,
        req: UpdateClusterRequest,
    ) -> Result<ClusterResponse, ApiError> {
        let spec = req.spec.unwrap_or_default();
        validate_cluster_spec(&spec).map_err(ApiError::from)?;
        let mut cluster = self
            .view()
            .cluster()
            .cloned()
            .ok_or_else(|| ApiError::Refused("the cluster is still being created".into()))?;
        if cluster.id != req.cluster_id {
            return Err(ApiError::Lookup(shoal_store::LookupError::NotFound {
                kind: "cluster".into(),
                reference: req.cluster_id,
            }));
        }
        // The cluster keeps its name: it is not the user's to change.
        let mut spec = spec;
        spec.annotations = cluster.spec.as_ref().and_then(|s| s.annotations.clone());
        cluster.spec = Some(spec);
        if let Some(meta) = cluster.meta.as_mut() {
            meta.version = req.version;
        }
        self.commit(vec![action(store_action::Kind::Update, cluster)])
            .await?;
        Ok(ClusterResponse {
            cluster: self.view().cluster().cloned().map(without_secrets),
        })
    }

    pub async fn version(&self, _request: VersionRequest) -> Result<VersionResponse, ApiError> {
        let cluster_id = self
            .view()
            .cluster()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        Ok(VersionResponse {
            version: shoal_api::VERSION.to_string(),
            node_id: self.config.node_id.clone(),
            cluster_id,
        })
    }
}
