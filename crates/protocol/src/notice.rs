//! Rate limiting for server notices.
//!
//! A server may send `NoticeResponse` messages at any time, as many as it likes. Each
//! one is worth a log line, but an endless stream of them must not flood the log.
//! [`NoticeLimiter`] lets through [`NOTICES_PER_SECOND`] per second and counts the rest,
//! so the driver can say how many it suppressed once notices are let through again.
//! The caller passes the time in.

use std::time::{Duration, Instant};

/// Notices logged per second at most.
pub const NOTICES_PER_SECOND: u32 = 10;

/// What to do with one notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeVerdict {
    /// Log it; `suppressed` notices were dropped since the last one logged (say so
    /// first when it is not zero).
    Log {
        /// Notices dropped since the last one logged.
        suppressed: u64,
    },
    /// Drop it; it is counted.
    Suppress,
}

/// A fixed-window rate limiter: at most [`NOTICES_PER_SECOND`] notices per window of
/// one second.
#[derive(Clone, Debug, Default)]
pub struct NoticeLimiter {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl NoticeLimiter {
    /// Decides about one notice arriving at `now`.
    pub fn admit(&mut self, now: Instant) -> NoticeVerdict {
        let new_window = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1));
        if new_window {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged >= NOTICES_PER_SECOND {
            self.suppressed += 1;
            return NoticeVerdict::Suppress;
        }
        self.logged += 1;
        NoticeVerdict::Log {
            suppressed: std::mem::take(&mut self.suppressed),
        }
    }

    /// Notices dropped and not yet reported.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_per_second_then_counted() {
        let t0 = Instant::now();
        let mut l = NoticeLimiter::default();
        for i in 0..NOTICES_PER_SECOND {
            assert_eq!(
                l.admit(t0 + Duration::from_millis(u64::from(i))),
                NoticeVerdict::Log { suppressed: 0 }
            );
        }
        for i in 0..25 {
            assert_eq!(
                l.admit(t0 + Duration::from_millis(100 + i)),
                NoticeVerdict::Suppress
            );
        }
        assert_eq!(l.suppressed(), 25);
        // Still inside the first second.
        assert_eq!(
            l.admit(t0 + Duration::from_millis(999)),
            NoticeVerdict::Suppress
        );
        // The next window reports what was dropped, once.
        assert_eq!(
            l.admit(t0 + Duration::from_secs(1)),
            NoticeVerdict::Log { suppressed: 26 }
        );
        assert_eq!(
            l.admit(t0 + Duration::from_millis(1001)),
            NoticeVerdict::Log { suppressed: 0 }
        );
        assert_eq!(l.suppressed(), 0);
    }
}
