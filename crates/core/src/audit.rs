//! The audit log of operator actions: who did what to the shield, and when. A bounded ring:
//! the oldest entry gives way to a new one, and every entry keeps its sequence number, so a
//! reader polling with `since` sees exactly what it missed (`dropped`).

use std::collections::VecDeque;

/// Entries kept.
pub const AUDIT_ENTRIES: usize = 4096;

/// One operator action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its number: consecutive entries differ by one, from 1.
    pub seq: u64,
    /// When, seconds since the Unix epoch.
    pub at_s: u64,
    /// Who: the caller's address as the admin API saw it.
    pub who: String,
    /// What: `ban`, `unban`, `allow`, `disallow`.
    pub action: &'static str,
    /// On what: the CIDR, with any parameter (`for 3600 s`).
    pub what: String,
}

/// A bounded log. See the module docs.
#[derive(Debug)]
pub struct AuditLog {
    entries: VecDeque<AuditEntry>,
    capacity: usize,
    next: u64,
}

impl AuditLog {
    /// A log keeping the newest `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        AuditLog {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            next: 1,
        }
    }

    /// Records an action; returns its sequence number.
    pub fn record(&mut self, at_s: u64, who: String, action: &'static str, what: String) -> u64 {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        let seq = self.next;
        self.next += 1;
        self.entries.push_back(AuditEntry {
            seq,
            at_s,
            who,
            action,
            what,
        });
        seq
    }

    /// Entries after `since` (oldest first), and how many entries after `since` are gone.
    pub fn since(&self, since: u64) -> (Vec<AuditEntry>, u64) {
        let oldest = self.entries.front().map_or(self.next, |e| e.seq);
        let dropped = oldest.saturating_sub(since + 1);
        let entries = self
            .entries
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect();
        (entries, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_entries_and_says_what_a_reader_missed() {
        let mut log = AuditLog::new(3);
        for i in 0..5u64 {
            log.record(
                100 + i,
                "127.0.0.1".into(),
                "ban",
                format!("127.9.{i}.0/24"),
            );
        }
        let (all, dropped) = log.since(0);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(dropped, 2);
        let (newer, dropped) = log.since(4);
        assert_eq!(
            (newer.len(), newer[0].what.as_str(), dropped),
            (1, "127.9.4.0/24", 0)
        );
        assert_eq!(log.since(5), (vec![], 0));
    }
}
