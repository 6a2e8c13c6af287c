//! The response body as a paced stream of events, with the injected body faults.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::chunk::{ChunkMeta, DONE_EVENT, Delta};
use crate::options::{Behaviour, Fault, ReasoningField};
use crate::reply::{Reply, Usage};
use crate::state::OpenStream;

/// The events of one response.
#[derive(Debug)]
pub(crate) enum Events {
    /// An SSE stream: the first delta, one chunk per piece, the finish chunk, then the
    /// optional usage chunk and the optional `[DONE]`.
    Sse {
        meta: ChunkMeta,
        reply: Reply,
        /// Present when the usage chunk is sent.
        usage: Option<Usage>,
        done: bool,
        /// Reasoning pieces sent after the first delta, before the reply's, and their field.
        reasoning: (usize, ReasoningField),
    },
    /// A whole `chat.completion` JSON object.
    Json(Bytes),
}

impl Events {
    fn len(&self) -> usize {
        match self {
            Self::Sse {
                reply,
                usage,
                done,
                reasoning: (thoughts, _),
                ..
            } => reply.pieces() + thoughts + 2 + usize::from(usage.is_some()) + usize::from(*done),
            Self::Json(_) => 1,
        }
    }

    fn get(&self, index: usize) -> io::Result<Bytes> {
        let (meta, reply, usage, (thoughts, field)) = match self {
            Self::Json(json) => return Ok(json.clone()),
            Self::Sse {
                meta,
                reply,
                usage,
                reasoning,
                ..
            } => (meta, reply, usage, *reasoning),
        };
        if (1..=thoughts).contains(&index) {
            return meta.choice(Delta::reasoning(field, index - 1), None);
        }
        // The reply's events, numbered as if there were no reasoning.
        let index = if index > thoughts {
            index - thoughts
        } else {
            index
        };
        let pieces = reply.pieces();
        match index {
            0 => meta.choice(Delta::start(reply), None),
            index if index <= pieces => meta.choice(Delta::piece(reply, index - 1), None),
            index if index == pieces + 1 => {
                meta.choice(Delta::Empty {}, Some(reply.finish_reason()))
            }
            index => match (index - pieces - 2, usage) {
                (0, Some(usage)) => meta.usage(*usage),
                _ => Ok(Bytes::from_static(DONE_EVENT)),
            },
        }
    }

    fn malformed(&self) -> Bytes {
        match self {
            Self::Sse { .. } => Bytes::from_static(b"data: {not json\n\n"),
            Self::Json(_) => Bytes::from_static(b"{not json"),
        }
    }
}

/// A response body that sends its events with the requested delays and fault.
pub(crate) struct PacedBody {
    events: Events,
    /// Delay before the first event.
    first_delay: Duration,
    /// Delay before each later event.
    pace: Duration,
    /// The body fault and the number of events sent before it strikes.
    fault: Option<(BodyFault, usize)>,
    next: usize,
    finished: bool,
    /// Resolves when the server shuts down; boxed once so every wait can poll it by reference.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Keeps this body counted as open until the stream is dropped.
    _open: OpenStream,
}

#[derive(Debug, Clone, Copy)]
enum BodyFault {
    Reset,
    Malformed,
    Stall,
}

impl PacedBody {
    /// An SSE body: `ttft` before the first event, `pace` between events, the fault after
    /// `after` events (or after the last one if the stream is shorter).
    pub(crate) fn sse(
        events: Events,
        behaviour: &Behaviour,
        shutdown: WaitForCancellationFutureOwned,
        open: OpenStream,
    ) -> Self {
        let fault = body_fault(behaviour).map(|fault| (fault, behaviour.after.min(events.len())));
        Self {
            events,
            first_delay: behaviour.ttft,
            pace: behaviour.pace,
            fault,
            next: 0,
            finished: false,
            shutdown: Box::pin(shutdown),
            _open: open,
        }
    }

    /// A JSON body sent after the time the equivalent stream would have taken (`ttft` plus
    /// `pace` per later event). A body fault replaces the body.
    pub(crate) fn json(
        json: Bytes,
        stream_events: usize,
        behaviour: &Behaviour,
        shutdown: WaitForCancellationFutureOwned,
        open: OpenStream,
    ) -> Self {
        let later_events = u32::try_from(stream_events.saturating_sub(1)).unwrap_or(u32::MAX);
        Self {
            events: Events::Json(json),
            first_delay: behaviour.ttft + behaviour.pace.saturating_mul(later_events),
            pace: Duration::ZERO,
            fault: body_fault(behaviour).map(|fault| (fault, 0)),
            next: 0,
            finished: false,
            shutdown: Box::pin(shutdown),
            _open: open,
        }
    }

    /// The body as a stream for [`axum::body::Body::from_stream`]. An `Err` item makes hyper
    /// abort the connection, which is how resets and shutdown mid-stream reach the client.
    pub(crate) fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        stream::unfold(self, |mut body| async move {
            let item = body.next_event().await?;
            Some((item, body))
        })
    }

    async fn next_event(&mut self) -> Option<io::Result<Bytes>> {
        if self.finished {
            return None;
        }
        let index = self.next;
        let fault = self
            .fault
            .and_then(|(fault, at)| (at == index).then_some(fault));
        if fault.is_none() && index >= self.events.len() {
            return None;
        }
        let delay = if index == 0 {
            self.first_delay
        } else {
            self.pace
        };
        if !delay.is_zero() {
            tokio::select! {
                () = &mut self.shutdown => return Some(self.abort_for_shutdown()),
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.next += 1;
        match fault {
            None => Some(self.events.get(index)),
            Some(BodyFault::Reset) => {
                // hyper drops its unflushed write buffer when a body fails, so give it one
                // pending poll to flush the events already sent; the client must see them.
                tokio::task::yield_now().await;
                self.finished = true;
                Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "mock-llm: injected connection reset",
                )))
            }
            Some(BodyFault::Malformed) => {
                self.finished = true;
                Some(Ok(self.events.malformed()))
            }
            Some(BodyFault::Stall) => {
                // Nothing more until shutdown; a client that disconnects drops the body instead.
                (&mut self.shutdown).await;
                Some(self.abort_for_shutdown())
            }
        }
    }

    fn abort_for_shutdown(&mut self) -> io::Result<Bytes> {
        self.finished = true;
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "mock-llm: shutting down",
        ))
    }
}

fn body_fault(behaviour: &Behaviour) -> Option<BodyFault> {
    match behaviour.fault? {
        Fault::Reset => Some(BodyFault::Reset),
        Fault::Malformed => Some(BodyFault::Malformed),
        Fault::Stall => Some(BodyFault::Stall),
        Fault::ServerError | Fault::RateLimited => None,
    }
}
