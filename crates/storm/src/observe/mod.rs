//! What listeners, attackers and the generator itself got, as pure code on injected times:
//! parsers of what listeners receive, per-listener meters, histograms and pooled figures that
//! merge exactly across threads and processes.

pub mod attack;
pub mod health;
pub mod hist;
pub mod join;
pub mod measure;
pub mod proto;
pub mod reader;
pub mod stats;
