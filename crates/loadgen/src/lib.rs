//! Load generator for SSE endpoints, the bare relay baseline and the benchmark report.
//!
//! `loadgen run` opens N concurrent SSE streams against agentstream, `mock-llm` or the relay,
//! checks every stream (agentstream's `seq` 1..n and `done`, or the upstream's `[DONE]`),
//! times the first event and every gap, and samples the server process from `/proc`.
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
