//! What attackers got, counted not measured: each attempt ends as one [`Attempt`] (how far it
//! got and what the server answered), and [`ModuleStats`] adds attempts up exactly (and merges
//! across workers, threads and processes). The attacks themselves are
//! [`crate::actors::attackers`]; their configuration [`crate::plan::attack`].

use crate::observe::hist::Hist;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this HTTP status (and then closed, or we did).
    Status(u16),
    /// The server closed the WebSocket with this code.
    Close(u16),
    /// The server closed the connection without answering a byte (a banned source, a cut).
    Unanswered,
    /// The server cut a stream it had started (slow reader: end of stream or reset found when
    /// draining at the end of the hold).
    Cut,
    /// The server was still streaming when the hold ended (slow reader).
    StillServed,
    /// The connection was reset.
    Reset,
    /// The connection was refused at connect.
    Refused,
    /// Connecting took longer than its bound.
    ConnectTimeout,
    /// The attempt's own bound expired while waiting for the server (its hold, or a read
    /// timeout): the server kept the connection.
    Held,
    /// Connected, then closed by the attacker before any answer (connection flood).
    Dropped,
    /// The attacker's own limits (addresses, ports, descriptors): not the server's doing.
    Local,
    /// Another error.
    Other,
}

/// What one attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// How it ended.
    pub outcome: Outcome,
    /// The TCP connection was established.
    pub connected: bool,
    /// The server granted what the attack asked for (a ticket, a stream, an upgrade).
    pub accepted: bool,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Time from connect to the end of the connection, µs (holding modules).
    pub held_us: Option<u64>,
    /// A ticket was obtained through the join API for this attempt.
    pub ticket: bool,
}

impl Attempt {
    /// An attempt that ended with `outcome` before or at connect.
    pub fn failed(outcome: Outcome) -> Self {
        Attempt {
            outcome,
            connected: false,
            accepted: false,
            bytes_sent: 0,
            bytes_received: 0,
            held_us: None,
            ticket: false,
        }
    }
}

/// Counts of one module (one worker, one thread, or all of them merged).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModuleStats {
    /// Workers that ran.
    pub workers: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts whose TCP connection was established.
    pub connected: u64,
    /// Attempts refused at connect (`ECONNREFUSED`).
    pub refused_at_connect: u64,
    /// Connects that took longer than their bound.
    pub connect_timeouts: u64,
    /// Connections reset by the server.
    pub resets: u64,
    /// Connections the server closed without a byte of answer.
    pub closed_unanswered: u64,
    /// Slow reader: streams found cut by the server at the end of the hold.
    pub cut: u64,
    /// Slow reader: streams still served at the end of the hold.
    pub still_served: u64,
    /// Attempts still held by the server when their own bound expired.
    pub held_to_bound: u64,
    /// Connection flood: connections the attacker closed before any answer.
    pub dropped_by_attacker: u64,
    /// HTTP answers by status code.
    pub statuses: BTreeMap<String, u64>,
    /// WebSocket close codes received.
    pub close_codes: BTreeMap<String, u64>,
    /// Attempts that got what they asked for (a ticket, a stream, an upgrade).
    pub accepted: u64,
    /// Tickets the attackers obtained from the join API (slow reader, garbage WebSocket).
    pub tickets: u64,
    /// Failures on the attacker's own limits.
    pub local_failures: u64,
    /// Other errors.
    pub other_errors: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Connect → end of the connection, µs (holding modules). Allocated at the first value
    /// (a histogram is a few hundred KiB: workers that hold nothing carry none).
    #[serde(default)]
    pub held: Option<Hist>,
    /// CPU time of the module's thread, s.
    pub cpu_s: f64,
    /// Wall time of the module, s.
    pub wall_s: f64,
}

impl ModuleStats {
    /// Adds one attempt.
    pub fn record(&mut self, a: &Attempt) {
        self.attempts += 1;
        self.connected += a.connected as u64;
        self.accepted += a.accepted as u64;
        self.tickets += a.ticket as u64;
        self.bytes_sent += a.bytes_sent;
        self.bytes_received += a.bytes_received;
        if let Some(h) = a.held_us {
            self.held.get_or_insert_with(Hist::new).record(h);
        }
        match a.outcome {
            Outcome::Status(s) => *self.statuses.entry(s.to_string()).or_default() += 1,
            Outcome::Close(c) => *self.close_codes.entry(c.to_string()).or_default() += 1,
            Outcome::Unanswered => self.closed_unanswered += 1,
            Outcome::Cut => self.cut += 1,
            Outcome::StillServed => self.still_served += 1,
            Outcome::Reset => self.resets += 1,
            Outcome::Refused => self.refused_at_connect += 1,
            Outcome::ConnectTimeout => self.connect_timeouts += 1,
            Outcome::Held => self.held_to_bound += 1,
            Outcome::Dropped => self.dropped_by_attacker += 1,
            Outcome::Local => self.local_failures += 1,
            Outcome::Other => self.other_errors += 1,
        }
    }

    /// Adds everything `o` counted (CPU adds up; wall time is the longest).
    pub fn merge(&mut self, o: &ModuleStats) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            workers,
            attempts,
            connected,
            refused_at_connect,
            connect_timeouts,
            resets,
            closed_unanswered,
            cut,
            still_served,
            held_to_bound,
            dropped_by_attacker,
            accepted,
            tickets,
            local_failures,
            other_errors,
            bytes_sent,
            bytes_received,
            cpu_s
        );
        for (k, v) in &o.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.close_codes {
            *self.close_codes.entry(k.clone()).or_default() += v;
        }
        if let Some(h) = &o.held {
            self.held.get_or_insert_with(Hist::new).merge(h);
        }
        self.wall_s = self.wall_s.max(o.wall_s);
    }
}

/// What the attack process did: one entry per module that ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttackResult {
    /// Counts per module (keyed by [`crate::plan::attack::Module::label`]).
    pub modules: BTreeMap<String, ModuleStats>,
    /// Source addresses used.
    pub addresses: u64,
    /// CPU time of the whole attack process, s.
    pub cpu_s: f64,
    /// Its wall time, s.
    pub wall_s: f64,
    /// Its peak resident memory, KiB.
    pub rss_peak_kb: u64,
}
