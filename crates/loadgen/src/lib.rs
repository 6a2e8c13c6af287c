//! Load generator for SSE endpoints, the bare relay baseline and the benchmark report.
//!
//! `loadgen run` opens N concurrent SSE streams against agentstream, `mock-llm` or the relay,
//! checks every stream (agentstream's `seq` 1..n and `done`, an OpenAI stream's `[DONE]`, or
//! an AI SDK stream's `finish` and `[DONE]`), times the first event and every gap, samples
//! the server process from `/proc` and, given its `/metrics`, counts the events it stored.
//! `loadgen relay` is the bare relay; `loadgen report` turns a folder of run summaries
//! into `BENCHMARKS.md`. `scripts/bench.sh` drives all three.

pub mod check;
pub mod proc;
pub mod relay;
pub mod report;
pub mod run;
pub mod stats;
pub mod tls;

pub use check::{Failure, Protocol, StreamCheck};
pub use relay::Relay;
pub use run::{RunArgs, Summary, run};
