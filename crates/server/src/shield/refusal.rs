//! One typed refusal, from where it is decided up to the wire and the metrics.
//!
//! A [`Refusal`] says how it goes on the wire ([`Wire`]: an HTTP status, a WebSocket close code,
//! or a silent close), why ([`Reason`]: a shield or an ingest reason, each variant carrying its
//! metric label) and a human detail. It is counted once, by reason, in counters indexed by the
//! reason enum: no string is looked up, so a new reason cannot land under another's label.

use super::ShieldCounters;
use crate::counters::NodeCounters;
pub use levee_core::refusal::{IngestReason, ShieldReason};
use std::borrow::Cow;

/// Why: the metric a refusal counts in, and its label there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `levee_shield_refused_total{reason}`.
    Shield(ShieldReason),
    /// `levee_ingest_errors_total{reason}`.
    Ingest(IngestReason),
}

impl Reason {
    /// The metric the refusal counts in.
    pub fn metric(self) -> &'static str {
        match self {
            Reason::Shield(_) => "levee_shield_refused_total",
            Reason::Ingest(_) => "levee_ingest_errors_total",
        }
    }

    /// The label value in that metric.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Shield(r) => r.label(),
            Reason::Ingest(r) => r.label(),
        }
    }
}

impl From<ShieldReason> for Reason {
    fn from(r: ShieldReason) -> Self {
        Reason::Shield(r)
    }
}

impl From<IngestReason> for Reason {
    fn from(r: IngestReason) -> Self {
        Reason::Ingest(r)
    }
}

/// How a refusal goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Closed without a byte (a banned source at accept).
    Silent,
    /// An HTTP answer with this status.
    Http(u16),
    /// A WebSocket close frame with this code (once the upgrade happened).
    Close(u16),
}

/// A refusal: wire code, reason, human detail, and when to ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// How it is answered.
    pub wire: Wire,
    /// Why (its metric and label).
    pub reason: Reason,
    /// What a person reads: the JSON `error`, the plain-text body or the close reason.
    pub detail: Cow<'static, str>,
    /// When to ask again (`Retry-After`, and `retry_after_ms` in JSON answers).
    pub retry_after_ms: Option<u64>,
}

impl Refusal {
    /// A refusal for `reason`, answered as `wire`. Not counted yet: see [`Refusal::count`]
    /// (the shield's own constructors count as they refuse).
    pub fn new(
        reason: impl Into<Reason>,
        wire: Wire,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Refusal {
            wire,
            reason: reason.into(),
            detail: detail.into(),
            retry_after_ms: None,
        }
    }

    /// The same, telling the caller to ask again after `ms`.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// `Retry-After` in whole seconds (at least 1), if any.
    pub fn retry_after_s(&self) -> Option<u64> {
        self.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1))
    }

    /// The HTTP status (500 for a refusal that is not an HTTP answer, which is a bug).
    pub fn status(&self) -> u16 {
        match self.wire {
            Wire::Http(s) => s,
            Wire::Silent | Wire::Close(_) => 500,
        }
    }

    /// The status line's reason phrase.
    pub fn phrase(&self) -> &'static str {
        http::StatusCode::from_u16(self.status())
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Refused")
    }

    /// Extra head lines for a raw HTTP answer (`Retry-After`), each ending in CRLF.
    pub fn extra_headers(&self) -> String {
        self.retry_after_s()
            .map(|s| format!("Retry-After: {s}\r\n"))
            .unwrap_or_default()
    }

    /// The whole answer of a refusal at accept, written in one go without reading the request:
    /// `None` for a silent close.
    pub fn accept_answer(&self) -> Option<String> {
        match self.wire {
            Wire::Silent => None,
            _ => Some(format!(
                "HTTP/1.1 {} {}\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
                self.status(),
                self.phrase(),
                self.extra_headers()
            )),
        }
    }

    /// Counts the refusal once, under its reason, in the metric it belongs to.
    pub fn count(&self, shield: &ShieldCounters, node: &NodeCounters) {
        match self.reason {
            Reason::Shield(r) => shield.refuse(r),
            Reason::Ingest(r) => node.ingest_errors.inc(r),
        }
    }

    /// [`Refusal::count`], returning the refusal.
    pub fn counted(self, shield: &ShieldCounters, node: &NodeCounters) -> Self {
        self.count(shield, node);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_render_their_wire_form_and_count_under_their_own_label() {
        let r =
            Refusal::new(ShieldReason::ConnRate, Wire::Http(429), "slow down").retry_after(5_000);
        assert_eq!(
            r.accept_answer().unwrap(),
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            Refusal::new(ShieldReason::Banned, Wire::Silent, "").accept_answer(),
            None
        );
        assert_eq!(
            Refusal::new(IngestReason::WrongCodec, Wire::Http(415), "").phrase(),
            "Unsupported Media Type"
        );
        let (shield, node) = (ShieldCounters::default(), NodeCounters::default());
        for r in ShieldReason::ALL {
            Refusal::new(r, Wire::Http(403), "").count(&shield, &node);
            assert_eq!(shield.refused(r), 1, "{r:?}");
        }
        for r in IngestReason::ALL {
            Refusal::new(r, Wire::Close(1008), "").count(&shield, &node);
            assert_eq!(node.ingest_errors.get(r), 1, "{r:?}");
        }
        assert_eq!(
            Reason::from(IngestReason::Idle).metric(),
            "levee_ingest_errors_total"
        );
        assert_eq!(Reason::from(ShieldReason::Ticket).label(), "ticket");
    }
}
