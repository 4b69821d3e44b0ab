//! Every committed change, as it commits (optionally after every object as it is now).

use shoal_api::{WatchEvent, WatchRequest};
use shoal_store::Event;

use super::*;

impl ControlApi {
    pub async fn watch(&self, request: WatchRequest) -> Result<EventStream<WatchEvent>, ApiError> {
        let include_existing = request.include_existing;
        let store = Arc::clone(self.replica.store());
        let (initial, mut stream) = if include_existing {
            let (objects, version, stream) = store.view_and_watch();
            let mut initial: Vec<WatchEvent> = objects
                .into_iter()
                .map(|object| {
                    let object = shown(object);
                    let created = object.meta().map_or(0, |m| m.created_at_ms);
                    Event::Change {
                        action: shoal_api::watch_event::Action::Create,
                        version: object.version(),
                        object,
                        timestamp_ms: created,
                    }
                    .to_proto()
                })
                .collect();
            initial.push(Event::Commit { version }.to_proto());
            (initial, stream)
        } else {
            (Vec::new(), store.watch())
        };
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            for event in initial {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    // Shutdown first: the client went away.
                    _ = tx.closed() => return,
                    next = stream.next() => next,
                };
                let item = next
                    .map(|e| match e {
                        Event::Change {
                            action,
                            object,
                            version,
                            timestamp_ms,
                        } => Event::Change {
                            action,
                            object: shown(object),
                            version,
                            timestamp_ms,
                        }
                        .to_proto(),
                        other => other.to_proto(),
                    })
                    .map_err(ApiError::from);
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// An object as a watcher sees it: a cluster without its CA's key.
fn shown(object: shoal_api::Object) -> shoal_api::Object {
    match object.kind {
        Some(shoal_api::object::Kind::Cluster(cluster)) => without_secrets(*cluster).into(),
        _ => object,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_sees_the_clusters_ca_certificate_and_never_its_key() {
        let cluster = shoal_api::Cluster {
            id: "c".into(),
            root_ca: Some(shoal_api::RootCa {
                cert_pem: "CERT".into(),
                key_pem: "-----BEGIN PRIVATE KEY-----".into(),
                digest: "d".into(),
            }),
            ..Default::default()
        };
        let seen = shown(cluster.into());
        let Some(shoal_api::object::Kind::Cluster(seen)) = seen.kind else {
            panic!("a cluster stays a cluster");
        };
        let ca = seen.root_ca.unwrap();
        assert_eq!(ca.cert_pem, "CERT");
        assert_eq!(ca.key_pem, "");
    }
}
