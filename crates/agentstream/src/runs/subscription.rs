//! Subscriptions: replay a run's committed events after a cursor, then
//! follow it live, with no gap and no duplicate at the hand-over.

use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::RunManager;
use crate::store::StoredEvent;

/// Events read from the store per query while replaying.
const REPLAY_PAGE: u32 = 512;

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A committed event, in `seq` order.
    Event(Arc<StoredEvent>),
    /// The store could not be read; the stream ends and the client may
    /// resume from its last `seq`.
    Unavailable(String),
}

/// Tells the manager when a subscriber goes away (for `on_disconnect=cancel`).
struct Presence {
    manager: RunManager,
    run_id: Uuid,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.manager.subscriber_left(self.run_id);
    }
}

impl RunManager {
    /// The run's events after `after`: first those already committed, then
    /// live ones as they commit, ending after `done`. A subscriber that falls
    /// behind the live channel reads from the store instead.
    pub fn subscribe(
        &self,
        run_id: Uuid,
        after: i64,
    ) -> impl Stream<Item = Delivery> + Send + 'static {
        let manager = self.clone();
        // Join the live channel before reading the store, so that nothing
        // committed in between is missed; duplicates are dropped by `seq`.
        let live = self.inner.hub.subscribe(run_id);
        async_stream::stream! {
            let _presence = Presence { manager: manager.clone(), run_id };
            let mut live = live;
            let mut cursor = after;
            loop {
                loop {
                    let page = match manager.inner.store.events_after(run_id, cursor, REPLAY_PAGE).await {
                        Ok(page) => page,
                        Err(error) => {
                            yield Delivery::Unavailable(error.to_string());
                            return;
                        }
                    };
                    let full = page.len() == REPLAY_PAGE as usize;
                    for event in page {
                        cursor = event.seq;
                        let done = event.kind == "done";
                        yield Delivery::Event(Arc::new(event));
                        if done {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                // Not open on this node and no `done` in the store: the run's
                // end could not be stored, or another process drives it.
                let Some(receiver) = live.as_mut() else {
                    yield Delivery::Unavailable(
                        "the run is not live on this server and its log has no end yet; \
                         resume later from the last seq"
                            .to_owned(),
                    );
                    return;
                };
                loop {
                    match receiver.recv().await {
                        Ok(event) if event.seq <= cursor => {}
                        Ok(event) if event.seq == cursor + 1 => {
                            cursor = event.seq;
                            let done = event.kind == "done";
                            yield Delivery::Event(event);
                            if done {
                                return;
                            }
                        }
                        // A gap: catch up from the store.
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            live = None;
                            break;
                        }
                    }
                }
            }
        }
    }
}
