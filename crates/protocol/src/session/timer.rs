//! The session's timers, as data: a fixed set of deadlines, of which the driver only ever
//! sees the earliest ([`super::ReplicationSession::poll_timeout`]), so one OS timer per
//! session is enough.

use std::time::Instant;

/// The things a session waits for with a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The next periodic standby status update (`-s`); unarmed with `-s 0`.
    Status,
    /// Silence from the server: first the half-way ping (a status update asking for a
    /// reply), then the receive timeout itself. Unarmed while the driver is not reading
    /// the socket (backpressure), since that silence is of our own making.
    Idle,
    /// How long the server may take to end the command after our CopyDone.
    EndCopy,
}

impl Timer {
    /// Every timer, in the order [`super::ReplicationSession::handle_timeout`] serves them.
    pub(crate) const ALL: [Timer; 3] = [Timer::Status, Timer::Idle, Timer::EndCopy];
}

/// One optional deadline per [`Timer`].
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable {
    data: [Option<Instant>; 3],
}

impl TimerTable {
    /// Arms `timer` for `at`, replacing any earlier deadline.
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.data[timer as usize] = Some(at);
    }

    /// The deadline of `timer`, if armed.
    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.data[timer as usize]
    }

    /// Disarms `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.data[timer as usize] = None;
    }

    /// Disarms every timer.
    pub(crate) fn clear(&mut self) {
        self.data = Default::default();
    }

    /// Whether `timer` is armed and its deadline is at or before `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest armed deadline.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_deadline_and_expiry() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::Idle, t0 + Duration::from_secs(5));
        t.set(Timer::Status, t0 + Duration::from_secs(3));
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(3)));
        assert!(!t.is_expired(Timer::Status, t0));
        assert!(t.is_expired(Timer::Status, t0 + Duration::from_secs(3)));
        assert!(!t.is_expired(Timer::EndCopy, t0 + Duration::from_secs(99)));
        t.stop(Timer::Status);
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(5)));
        t.clear();
        assert_eq!(t.next_timeout(), None);
    }
}
