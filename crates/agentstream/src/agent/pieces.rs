//! The argument pieces of a reply's tool calls on their way to `tool.call.delta` events: each
//! call's ID, decided at its first piece, and the coalescing of its pieces.
//!
//! Coalescing: a call's first piece goes out at once, so a client sees the call begin; after
//! it, at most one event per call per [`PIECE_INTERVAL`], carrying every piece that arrived
//! meanwhile. Nothing waits on a timer: pieces held back go out with the call's next piece
//! that is due, when the call is whole, or when the reply ends, so a model that streams
//! 1-byte pieces writes some 20 events a second per call rather than one per byte.

use std::collections::{BTreeMap, HashSet};

use tokio::time::{Duration, Instant};

use crate::{events::Event, llm::ToolCallDelta, text};

/// Least time between two `tool.call.delta` events of one call.
pub(super) const PIECE_INTERVAL: Duration = Duration::from_millis(50);

/// A reply's reasoning on its way to `reasoning.delta` events, coalesced as a call's
/// pieces are: the first piece at once, then at most one event per [`PIECE_INTERVAL`];
/// what is held goes out with the next piece that is due, or before the reply's next
/// other event ([`Reasoning::flush`]).
#[derive(Debug, Default)]
pub(super) struct Reasoning {
    /// All of it, for the model's next call in the run.
    pub(super) text: String,
    /// Pieces not sent yet.
    held: String,
    /// When its last event went out.
    sent_at: Option<Instant>,
}

impl Reasoning {
    /// Takes a piece; returns the event to send now, if one is due.
    pub(super) fn add(&mut self, piece: &str, now: Instant) -> Option<Event> {
        self.text.push_str(piece);
        self.held.push_str(piece);
        let due = self
            .sent_at
            .is_none_or(|at| now.duration_since(at) >= PIECE_INTERVAL);
        due.then(|| self.event(now))
    }

    /// The event for what is held, if anything is.
    pub(super) fn flush(&mut self, now: Instant) -> Option<Event> {
        (!self.held.is_empty()).then(|| self.event(now))
    }

    fn event(&mut self, now: Instant) -> Event {
        self.sent_at = Some(now);
        Event::ReasoningDelta {
            text: std::mem::take(&mut self.held),
        }
    }
}

/// The calls of one reply whose pieces have begun, by their place among its calls.
#[derive(Debug, Default)]
pub(super) struct Pieces {
    calls: BTreeMap<usize, Forming>,
}

/// A call whose arguments are arriving.
#[derive(Debug)]
struct Forming {
    /// The ID its events carry, and its `tool.call` will.
    call_id: String,
    /// The tool's name as far as it has arrived.
    name: String,
    /// Pieces not sent yet.
    held: String,
    /// When its last event went out.
    sent_at: Instant,
}

impl Forming {
    fn event(&mut self, now: Instant) -> Event {
        self.sent_at = now;
        Event::ToolCallDelta {
            call_id: self.call_id.clone(),
            name: self.name.clone(),
            arguments_delta: std::mem::take(&mut self.held),
        }
    }
}

impl Pieces {
    /// Takes a piece; returns the event to send now, if one is due. The call's first piece
    /// decides its ID, unique in the conversation (`taken`), as [`own_id`] does.
    pub(super) fn add(
        &mut self,
        piece: ToolCallDelta,
        taken: &mut HashSet<String>,
        now: Instant,
    ) -> Option<Event> {
        let name = text::clean_string(piece.name);
        let arguments = text::clean_string(piece.arguments);
        match self.calls.get_mut(&piece.index) {
            Some(call) => {
                call.name = name;
                call.held.push_str(&arguments);
                (now.duration_since(call.sent_at) >= PIECE_INTERVAL).then(|| call.event(now))
            }
            None => {
                let mut call = Forming {
                    call_id: own_id(&text::clean_string(piece.id), taken),
                    name,
                    held: arguments,
                    sent_at: now,
                };
                let event = call.event(now);
                self.calls.insert(piece.index, call);
                Some(event)
            }
        }
    }

    /// The reply's `number`-th call is whole: its ID, if its pieces began, and the event that
    /// sends its held pieces, if any.
    pub(super) fn complete(
        &mut self,
        number: usize,
        now: Instant,
    ) -> (Option<String>, Option<Event>) {
        match self.calls.remove(&number) {
            Some(mut call) => {
                let event = (!call.held.is_empty()).then(|| call.event(now));
                (Some(call.call_id), event)
            }
            None => (None, None),
        }
    }

    /// The reply ended: the events that send every call's held pieces, in the calls' order.
    pub(super) fn flush(&mut self, now: Instant) -> Vec<Event> {
        self.calls
            .values_mut()
            .filter(|call| !call.held.is_empty())
            .map(|call| call.event(now))
            .collect()
    }
}

/// The ID of a call the upstream calls `upstream` (empty when it sent none): that one if it
/// is not `taken` in the conversation yet, else a fresh one; taken from now on.
pub(super) fn own_id(upstream: &str, taken: &mut HashSet<String>) -> String {
    if !upstream.is_empty() && taken.insert(upstream.to_owned()) {
        return upstream.to_owned();
    }
    let id = format!("call_{}", uuid::Uuid::now_v7().simple());
    taken.insert(id.clone());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(index: usize, id: &str, arguments: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.to_owned(),
            name: "save".to_owned(),
            arguments: arguments.to_owned(),
        }
    }

    fn sent(event: Option<Event>) -> String {
        match event {
            Some(Event::ToolCallDelta {
                arguments_delta, ..
            }) => arguments_delta,
            other => panic!("expected a piece, got {other:?}"),
        }
    }

    #[test]
    fn pieces_coalesce_per_call_and_join_to_the_arguments() {
        let mut pieces = Pieces::default();
        let mut taken = HashSet::new();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(
            sent(pieces.add(piece(0, "a", "{\""), &mut taken, at(0))),
            "{\""
        );
        assert_eq!(pieces.add(piece(0, "", "x\":"), &mut taken, at(10)), None);
        assert_eq!(pieces.add(piece(0, "", " 1"), &mut taken, at(49)), None);
        assert_eq!(
            sent(pieces.add(piece(0, "", "2"), &mut taken, at(50))),
            "x\": 12"
        );
        // Another call's pieces are timed on their own.
        assert_eq!(
            sent(pieces.add(piece(1, "b", "{"), &mut taken, at(51))),
            "{"
        );
        assert_eq!(pieces.add(piece(0, "", "}"), &mut taken, at(60)), None);
        let (id, held) = pieces.complete(0, at(61));
        assert_eq!((id.as_deref(), sent(held)), (Some("a"), "}".to_owned()));
        assert_eq!(pieces.add(piece(1, "", "}\0"), &mut taken, at(70)), None);
        let flushed = pieces.flush(at(71));
        assert_eq!(
            flushed,
            [Event::ToolCallDelta {
                call_id: "b".into(),
                name: "save".into(),
                arguments_delta: "}\u{FFFD}".into(),
            }]
        );
        assert_eq!(pieces.complete(1, at(72)), (Some("b".to_owned()), None));
        assert_eq!(pieces.complete(2, at(72)), (None, None));
    }

    #[test]
    fn the_first_piece_decides_an_id_unique_in_the_conversation() {
        let mut pieces = Pieces::default();
        let mut taken = HashSet::from(["call_1".to_owned()]);
        let now = Instant::now();
        let id = |event: Option<Event>| match event {
            Some(Event::ToolCallDelta { call_id, .. }) => call_id,
            other => panic!("expected a piece, got {other:?}"),
        };
        let reused = id(pieces.add(piece(0, "call_1", "{"), &mut taken, now));
        let missing = id(pieces.add(piece(1, "", "{"), &mut taken, now));
        let own = id(pieces.add(piece(2, "call_9", "{"), &mut taken, now));
        assert!(
            reused.starts_with("call_") && reused != "call_1",
            "{reused}"
        );
        assert!(
            missing.starts_with("call_") && missing != reused,
            "{missing}"
        );
        assert_eq!(own, "call_9");
        assert!(
            [&reused, &missing, &own]
                .iter()
                .all(|id| taken.contains(*id))
        );
        assert_eq!(pieces.complete(1, now).0, Some(missing));
    }
}
