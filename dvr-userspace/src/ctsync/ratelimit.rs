//! The byte budget all peers of a [`Replicator`](super::Replicator) share: a token bucket
//! refilled at the configured rate, holding at most 200 ms worth. The caller passes the
//! time, so the arithmetic is tested without waiting.
use std::time::Instant;

use super::wire::{RECORD_LEN, RECORDS_OVERHEAD};

/// Byte budget shared by all peers.
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// `rate` bytes per second (0 = unlimited), full at `now`.
    pub(super) fn new(rate: u64, now: Instant) -> Self {
        let rate = rate as f64;
        // 200 ms worth, at least one frame of one record.
        let burst = (rate / 5.0).max((RECORDS_OVERHEAD + RECORD_LEN) as f64);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }
    /// How many of `want` records (one frame) the budget allows at `now`; they are charged.
    pub(super) fn grant(&mut self, want: usize, now: Instant) -> usize {
        if self.rate <= 0.0 {
            return want;
        }
        self.refill(now);
        let avail = self.tokens - RECORDS_OVERHEAD as f64;
        if avail < RECORD_LEN as f64 {
            return 0;
        }
        let n = ((avail / RECORD_LEN as f64) as usize).min(want);
        self.tokens -= (RECORDS_OVERHEAD + n * RECORD_LEN) as f64;
        n
    }
    /// Charge bytes sent at `now` regardless of the budget (may go below zero).
    pub(super) fn debit(&mut self, bytes: usize, now: Instant) {
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= bytes as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check(ok: bool, what: &str) -> Result<(), String> {
        if ok { Ok(()) } else { Err(what.to_string()) }
    }

    #[test]
    fn ctsync_token_bucket_grants_what_the_rate_allows() -> Result<(), String> {
        let t0 = Instant::now();
        let mut b = Bucket::new(10_000, t0);
        // Burst: 2000 bytes = 26 records in one frame.
        let first = b.grant(1000, t0);
        check(first == (2000 - RECORDS_OVERHEAD) / RECORD_LEN, "burst")?;
        check(b.grant(1000, t0) == 0, "exhausted budget still grants")?;
        // 100 ms later: 1000 bytes more on top of what the first frame left.
        let left = 2000 - RECORDS_OVERHEAD - first * RECORD_LEN;
        let later = t0 + Duration::from_millis(100);
        check(
            b.grant(1000, later) == (left + 1000 - RECORDS_OVERHEAD) / RECORD_LEN,
            "refill",
        )?;
        // A debit beyond the budget holds grants back until the rate has paid it off.
        b.debit(5000, later);
        check(
            b.grant(1, later + Duration::from_millis(400)) == 0,
            "debt forgotten",
        )?;
        check(
            b.grant(1, later + Duration::from_millis(700)) == 1,
            "debt never paid off",
        )?;
        let mut unlimited = Bucket::new(0, t0);
        check(unlimited.grant(512, t0) == 512, "unlimited")
    }
}
