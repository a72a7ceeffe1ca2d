//! Failed logins per client address. After `auth.failures_before_delay` failures in a row
//! (each within `auth.failure_window_secs` of the previous one), every CONNECT from that
//! address waits before it is answered — 100 ms, doubling per further failure, at most
//! `auth.max_failure_delay_ms` — so a password guesser gets few tries per second and costs no
//! hashing meanwhile. A successful login forgets the address.
//!
//! The table is bounded ([`MAX_ADDRESSES`]); when it is full, entries older than the window
//! are dropped, and if none is, a new address is not tracked (it is not delayed, and counted
//! in the log once per overflow).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::AuthConfig;

/// Addresses tracked at most.
pub const MAX_ADDRESSES: usize = 100_000;

/// The first delay once an address has failed too often.
const FIRST_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
}

/// The failure table.
pub struct Failures {
    table: Mutex<HashMap<IpAddr, Record>>,
    threshold: u32,
    max_delay: Duration,
    window: Duration,
}

impl Failures {
    pub fn new(config: &AuthConfig) -> Failures {
        Failures {
            table: Mutex::new(HashMap::new()),
            threshold: config.failures_before_delay.max(1),
            max_delay: Duration::from_millis(config.max_failure_delay_ms),
            window: Duration::from_secs(config.failure_window_secs),
        }
    }

    /// How long a CONNECT from `address` waits now.
    pub fn delay(&self, address: IpAddr) -> Duration {
        let table = self.table.lock();
        let Some(r) = table.get(&address) else {
            return Duration::ZERO;
        };
        if r.failures < self.threshold || r.last.elapsed() > self.window {
            return Duration::ZERO;
        }
        let doublings = (r.failures - self.threshold).min(16);
        FIRST_DELAY
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }

    /// Waits for [`Self::delay`].
    pub async fn wait_turn(&self, address: IpAddr) {
        let delay = self.delay(address);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// A login from `address` failed.
    pub fn failed(&self, address: IpAddr) {
        let now = Instant::now();
        let mut table = self.table.lock();
        if table.len() >= MAX_ADDRESSES && !table.contains_key(&address) {
            let window = self.window;
            table.retain(|_, r| now.duration_since(r.last) <= window);
            if table.len() >= MAX_ADDRESSES {
                tracing::warn!(
                    %address,
                    "failed-login table full ({MAX_ADDRESSES} addresses): this address is not delayed"
                );
                return;
            }
        }
        let r = table.entry(address).or_insert(Record {
            failures: 0,
            last: now,
        });
        if now.duration_since(r.last) > self.window {
            r.failures = 0;
        }
        r.failures = r.failures.saturating_add(1);
        r.last = now;
    }

    /// A login from `address` succeeded.
    pub fn succeeded(&self, address: IpAddr) {
        self.table.lock().remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_delay_an_address_until_it_succeeds_or_waits_out_the_window() {
        let f = Failures::new(&AuthConfig::default());
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "::1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(f.delay(a), Duration::ZERO);
            f.failed(a);
        }
        assert_eq!(f.delay(a), Duration::from_millis(100));
        f.failed(a);
        assert_eq!(f.delay(a), Duration::from_millis(200));
        for _ in 0..20 {
            f.failed(a);
        }
        assert_eq!(f.delay(a), Duration::from_secs(5), "capped");
        assert_eq!(f.delay(b), Duration::ZERO, "per address");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(f.delay(a), Duration::ZERO, "the window passed");
        f.failed(a);
        assert_eq!(f.delay(a), Duration::ZERO, "counting starts again");
        for _ in 0..5 {
            f.failed(a);
        }
        f.succeeded(a);
        assert_eq!(f.delay(a), Duration::ZERO);
    }
}
