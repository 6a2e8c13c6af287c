//! Live delivery: a broadcast channel per run open on this node, fed only
//! with committed events.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::broadcast;
use uuid::Uuid;

use crate::store::StoredEvent;

/// How many events a subscriber may fall behind before it reads from the
/// store instead; it never slows the run or grows memory without bound.
const CHANNEL_CAPACITY: usize = 256;

/// The live channels of this node's open runs.
#[derive(Debug, Default)]
pub struct Hub {
    channels: Mutex<HashMap<Uuid, broadcast::Sender<Arc<StoredEvent>>>>,
}

impl Hub {
    fn channels(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Arc<StoredEvent>>>> {
        // The map stays consistent whatever a panicking holder was doing.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the run's channel; subscribers can join from now on.
    pub fn open(&self, run_id: Uuid) {
        self.channels()
            .entry(run_id)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0);
    }

    /// A receiver of the run's live events, if the run is open here.
    pub fn subscribe(&self, run_id: Uuid) -> Option<broadcast::Receiver<Arc<StoredEvent>>> {
        self.channels()
            .get(&run_id)
            .map(broadcast::Sender::subscribe)
    }

    /// How many subscribers the run has here.
    pub fn subscribers(&self, run_id: Uuid) -> usize {
        self.channels()
            .get(&run_id)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// Delivers committed events; a `done` closes its run's channel.
    pub fn publish(&self, events: impl IntoIterator<Item = StoredEvent>) {
        let mut channels = self.channels();
        for event in events {
            let done = event.kind == "done";
            let run_id = event.run_id;
            if let Some(sender) = channels.get(&run_id) {
                // No receiver is fine: nobody is watching right now.
                let _ = sender.send(Arc::new(event));
            }
            if done {
                channels.remove(&run_id);
            }
        }
    }

    /// Closes the run's channel without a `done` (its end could not be
    /// stored); subscribers fall back to the store and learn it is unavailable.
    pub fn abort(&self, run_id: Uuid) {
        self.channels().remove(&run_id);
    }
}
