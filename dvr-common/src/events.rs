//! Drop events for `dvrctl monitor`: a ring buffer the datapath writes one record to per
//! dropped packet, rate-limited per CPU so a flood of drops cannot swamp the reader.

/// Ring size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Events per second per CPU, and burst.
pub const EVENTS_PER_SEC: u64 = 1000;
pub const EVENTS_BURST: u64 = 100;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropEvent {
    /// bpf_ktime_get_coarse_ns() when it was dropped.
    pub ts_ns: u64,
    /// Interface it arrived on.
    pub ifindex: u32,
    /// `Stat` discriminant (a drop reason).
    pub reason: u32,
    pub len: u32,
    /// Ethertype (host order).
    pub ethertype: u16,
    /// IP protocol (IPv6: the first next header), 0 when neither IPv4 nor IPv6.
    pub proto: u8,
    pub _pad: u8,
    /// Network order; 0 when not IPv4.
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub src_mac: crate::Mac,
    pub dst_mac: crate::Mac,
    /// IPv6 source and destination; zero when not IPv6.
    pub saddr6: crate::ip6::Ip6,
    pub daddr6: crate::ip6::Ip6,
}
crate::assert_size!(DropEvent, 80);

/// Token bucket state, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    pub tokens: u64,
    pub last_ns: u64,
}
crate::assert_size!(RateLimit, 16);

/// Refill `rl` for time `now` and take a token if there is one, at the event ring's rate.
/// Pure, shared with tests.
#[inline(always)]
pub fn take_token(rl: &mut RateLimit, now: u64) -> bool {
    take_token_at(rl, now, EVENTS_PER_SEC, EVENTS_BURST)
}

/// As [`take_token`], for a bucket of `per_sec` tokens a second holding at most `burst`.
#[inline(always)]
pub fn take_token_at(rl: &mut RateLimit, now: u64, per_sec: u64, burst: u64) -> bool {
    let elapsed = now.saturating_sub(rl.last_ns);
    let refill = elapsed / (1_000_000_000 / per_sec);
    if refill > 0 {
        rl.tokens = (rl.tokens + refill).min(burst);
        rl.last_ns = now;
    }
    if rl.tokens == 0 {
        return false;
    }
    rl.tokens -= 1;
    true
}

crate::user_pod!(DropEvent, RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bursts_then_refills_at_the_rate() {
        let mut rl = RateLimit {
            tokens: 0,
            last_ns: 0,
        };
        let t0 = 10_000_000_000;
        let taken = (0..500).filter(|_| take_token(&mut rl, t0)).count();
        assert_eq!(taken as u64, EVENTS_BURST, "a burst is capped");
        assert!(!take_token(&mut rl, t0));
        assert!(
            take_token(&mut rl, t0 + 1_000_000),
            "one token per millisecond at 1000/s"
        );
    }
}
