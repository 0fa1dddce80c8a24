//! When the writer starts its next round: at once, or after lingering for
//! more requests (see [`crate::config::Linger`] for the policy and why).

use std::time::{Duration, Instant};

use crate::config::Linger;

/// Weight of the newest sample in the running averages.
const AVERAGE_WEIGHT: f64 = 0.2;

/// The writer's view of its recent rounds.
#[derive(Debug)]
pub(crate) struct Pace {
    policy: Linger,
    /// Running average of entries per round.
    entries: f64,
    /// Running average of one sync's duration, in microseconds.
    sync_us: f64,
    /// When the previous round ended.
    last_end: Instant,
}

impl Pace {
    pub fn new(policy: Linger) -> Pace {
        Pace {
            policy,
            entries: 0.0,
            sync_us: 0.0,
            last_end: Instant::now(),
        }
    }

    /// Until when the round that just began may wait for more requests;
    /// `None`: start it now.
    pub fn linger_until(&self) -> Option<Instant> {
        self.linger_until_at(Instant::now())
    }

    /// [`Pace::linger_until`] as seen at `now`.
    fn linger_until_at(&self, now: Instant) -> Option<Instant> {
        let p = &self.policy;
        if p.min_entries == 0 || self.entries < f64::from(p.min_entries) {
            return None;
        }
        let us = (self.sync_us * p.sync_multiple).min(p.max_us as f64);
        let until = self.last_end + Duration::from_micros(us as u64);
        (until > now).then_some(until)
    }

    /// A round's syncs took `took` (the writer's own rewrites are left out:
    /// their multi-megabyte syncs say nothing about a client round's).
    pub fn synced(&mut self, took: Duration) {
        self.sync_us = average(self.sync_us, took.as_secs_f64() * 1e6);
    }

    /// The round ended, having carried `entries` entries.
    pub fn round_done(&mut self, entries: usize) {
        self.entries = average(self.entries, entries as f64);
        self.last_end = Instant::now();
    }
}

fn average(old: f64, sample: f64) -> f64 {
    old + AVERAGE_WEIGHT * (sample - old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(policy: Linger, entries: usize, sync: Duration) -> Pace {
        let mut p = Pace::new(policy);
        for _ in 0..50 {
            p.synced(sync);
            p.round_done(entries);
        }
        p
    }

    const ON: Linger = Linger {
        min_entries: 8,
        sync_multiple: 4.0,
        max_us: 2000,
        enough_entries: 0,
    };

    #[test]
    fn off_by_default_and_below_the_threshold() {
        let sync = Duration::from_millis(1);
        let off = busy(Linger::default(), 1000, sync);
        assert!(off.linger_until_at(off.last_end).is_none());
        let quiet = busy(ON, 7, sync);
        assert!(quiet.linger_until_at(quiet.last_end).is_none());
    }

    #[test]
    fn a_busy_log_waits_a_multiple_of_its_sync_capped() {
        // Seen at the moment the previous round ended, so that a slow test
        // machine cannot let the linger pass before it is looked at.
        let p = busy(ON, 40, Duration::from_micros(200));
        let until = p.linger_until_at(p.last_end).expect("lingers");
        let wait = until - p.last_end;
        assert!(wait > Duration::from_micros(700) && wait <= Duration::from_micros(800));
        let p = busy(ON, 40, Duration::from_millis(5));
        let wait = p.linger_until_at(p.last_end).expect("lingers") - p.last_end;
        assert_eq!(wait, Duration::from_micros(2000));
    }

    #[test]
    fn no_wait_once_the_linger_has_passed() {
        let p = busy(ON, 40, Duration::from_micros(200));
        assert!(p.linger_until_at(p.last_end).is_some());
        assert!(
            p.linger_until_at(p.last_end + Duration::from_millis(5))
                .is_none()
        );
    }

    #[test]
    fn quiet_rounds_end_the_lingering() {
        let mut p = busy(ON, 40, Duration::from_micros(200));
        for _ in 0..20 {
            p.round_done(1);
        }
        assert!(p.linger_until_at(p.last_end).is_none());
    }
}
