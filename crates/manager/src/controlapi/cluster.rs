//! The cluster object and the version of this node.

use shoal_api::{
    ClusterResponse, GetClusterRequest, JoinTokenRequest, JoinTokenResponse, UpdateClusterRequest,
    VersionRequest, VersionResponse,
};

use crate::certificate_authority::{join_secret, new_join_secret, role_named, root_of};

use super::*;

/// Bytes of one part of a backup.
const BACKUP_PART_BYTES: usize = 1 << 20;

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

    /// The join token of a role, after replacing it when asked: a rotated
    /// token is refused for new joins, and nodes that joined with it keep
    /// their certificates.
    pub async fn join_token(&self, req: JoinTokenRequest) -> Result<JoinTokenResponse, ApiError> {
        let role = role_named(&req.role).ok_or_else(|| {
            ApiError::Invalid(InvalidSpec {
                field: "role".into(),
                rule: format!("must be worker or manager, got {:?}", req.role),
            })
        })?;
        let unavailable = |e: tonic::Status| ApiError::Unavailable(e.message().to_string());
        let mut cluster =
            self.view().cluster().cloned().ok_or_else(|| {
                ApiError::Unavailable("the cluster is still being created".into())
            })?;
        let ca = root_of(&cluster).map_err(unavailable)?;
        if req.rotate {
            let tokens = cluster.join_tokens.get_or_insert_with(Default::default);
            let secret =
                new_join_secret(&ca, role).map_err(|e| ApiError::Internal(e.to_string()))?;
            match role {
                shoal_ca::Role::Worker => tokens.worker = Some(secret),
                shoal_ca::Role::Manager => tokens.manager = Some(secret),
            }
            self.commit(vec![action(store_action::Kind::Update, cluster)])
                .await?;
            cluster = self
                .view()
                .cluster()
                .cloned()
                .ok_or_else(|| ApiError::Internal("the cluster is gone".into()))?;
        }
        let secret = cluster
            .join_tokens
            .as_ref()
            .and_then(|t| join_secret(t, role))
            .ok_or_else(|| ApiError::Unavailable("the cluster has no join tokens yet".into()))?;
        Ok(JoinTokenResponse {
            token: ca.join_token(role, &secret.nonce).to_string(),
            managers: crate::managers::addresses(&self.view()),
        })
    }

    /// The whole store as this manager holds it once every write
    /// committed before the call is in it, in parts of [`BACKUP_PART_BYTES`].
    pub async fn backup(
        &self,
        _request: shoal_api::BackupRequest,
    ) -> Result<EventStream<shoal_api::BackupChunk>, ApiError> {
        self.replica.barrier().await?;
        let view = self.view();
        let version = view.version();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let encoded = tokio::task::spawn_blocking(move || {
                use prost::Message;
                view.to_snapshot().encode_to_vec()
            })
            .await;
            let Ok(encoded) = encoded else {
                let _ = tx
                    .send(Err(ApiError::Internal("encoding the backup failed".into())))
                    .await;
                return;
            };
            for (i, part) in encoded.chunks(BACKUP_PART_BYTES).enumerate() {
                let chunk = shoal_api::BackupChunk {
                    data: part.to_vec(),
                    version: if i == 0 { version } else { 0 },
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
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
