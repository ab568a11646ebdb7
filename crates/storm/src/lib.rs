//! `levee storm`: a load generator for live push audio that measures what every listener got.
//!
//! Layers, lowest first; each uses only the ones before it (`crates/levee/tests/layers.rs` checks):
//! - [`error`]: the crate's one error type;
//! - [`plan`]: scenarios, schedules, attacks, objectives: pure data, checked before a run;
//! - [`observe`]: what every listener got, on injected times: parsers, meters, histograms and
//!   pooled figures that merge exactly across threads and processes;
//! - [`report`] (from `plan` and `observe` only): the JSON summary, text and HTML reports;
//! - [`net`]: one HTTP/1 client, the join API's messages, sockets and the clock;
//! - [`actors`]: listeners of each format, the synthetic host and source, the attackers;
//! - [`run`]: processes and threads, the one child-process protocol, the progress line;
//! - [`cli`]: the `levee storm` command line.
#![warn(missing_docs)]

pub mod actors;
pub mod cli;
pub mod error;
pub mod net;
pub mod observe;
pub mod plan;
pub mod report;
pub mod run;
