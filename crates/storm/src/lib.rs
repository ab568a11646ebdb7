//! `levee storm`: a load generator for live push audio that measures what every listener got.
//!
//! Layers, from pure to IO:
//! - [`measure`]: per-listener measurement (gaps, stalls, jitter, latency, playout underruns,
//!   join timings, failure reasons) on frames with injected times;
//! - [`hist`], [`stats`]: HDR histograms and pooled figures, mergeable across processes;
//! - [`proto`], [`marker`]: constant-memory parsers for what listeners receive, and the
//!   synthetic host's packet marker;
//! - [`scenario`]: scenarios (TOML or command line) and the open-model arrival schedule;
//! - [`client`], [`host`], [`http`], [`engine`], [`agent`]: the listeners, the synthetic host and
//!   the runner, in one process or spread over several;
//! - [`report`], [`html`]: the JSON summary, objectives and the self-contained HTML report;
//! - [`cli`]: the `levee storm` command line;
//! - [`joinapi`], [`attack`], [`attackers`], [`ddos`]: listeners that join through the join API,
//!   the attack modules, and the `ddos-during-broadcast` scenario.
#![warn(missing_docs)]

pub mod agent;
pub mod attack;
pub mod attackers;
pub mod cli;
pub mod client;
pub mod ddos;
pub mod engine;
pub mod hist;
pub mod host;
pub mod html;
pub mod http;
pub mod icecast;
pub mod joinapi;
pub mod marker;
pub mod measure;
pub mod proto;
pub mod reactor;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
