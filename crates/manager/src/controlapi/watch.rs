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
                let item = next.map(|e| e.to_proto()).map_err(ApiError::from);
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
