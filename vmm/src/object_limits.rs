//! `--object NAME=URI?ops=N&bandwidth=SIZE`: an object's rate limit, the
//! VMM's own query keys for any scheme (the device enforces it:
//! devices/src/pager/throttle.rs).
//!
//! - `ops=N`: requests a second (DATA_REQUEST, DATA_WRITE, DATA_UNLOCK,
//!   SYNC each count one);
//! - `bandwidth=SIZE`: bytes a second (`64M`, `1G`: sizes as elsewhere) of
//!   DATA_REQUEST lengths and DATA_WRITE data;
//! - `ops_burst=N`, `bandwidth_burst=SIZE`: how much may go at once after a
//!   quiet spell; one second's worth unless given.

use devices::rate_limiter::{Bucket, RateLimit};
use pager_backends::size::{SizeError, parse_size};
use std::num::NonZeroU64;

/// The keys this file takes out of an object URI's query.
pub const RATE_KEYS: [&str; 4] = ["ops", "ops_burst", "bandwidth", "bandwidth_burst"];

/// The rate keys of one URI, as they are found.
#[derive(Debug, Default)]
pub struct RateKeys {
    ops: Option<NonZeroU64>,
    ops_burst: Option<NonZeroU64>,
    bandwidth: Option<NonZeroU64>,
    bandwidth_burst: Option<NonZeroU64>,
}

impl RateKeys {
    /// Takes `key=value` if `key` is a rate key (Ok(true)); Ok(false) for
    /// any other key. The error names the key and says what it takes.
    pub fn take(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let (slot, parsed) = match key {
            "ops" => (&mut self.ops, count(value)),
            "ops_burst" => (&mut self.ops_burst, count(value)),
            "bandwidth" => (&mut self.bandwidth, bytes(value)),
            "bandwidth_burst" => (&mut self.bandwidth_burst, bytes(value)),
            _ => return Ok(false),
        };
        if slot.is_some() {
            return Err(format!("{key} given twice"));
        }
        *slot = Some(parsed.map_err(|why| format!("{key}={value}: {why}"))?);
        Ok(true)
    }

    /// The limit these keys describe (unlimited if none was given).
    pub fn finish(self) -> Result<RateLimit, String> {
        Ok(RateLimit {
            ops: bucket(self.ops, self.ops_burst, "ops")?,
            bandwidth: bucket(self.bandwidth, self.bandwidth_burst, "bandwidth")?,
        })
    }
}

fn bucket(
    rate: Option<NonZeroU64>,
    burst: Option<NonZeroU64>,
    key: &str,
) -> Result<Option<Bucket>, String> {
    match (rate, burst) {
        (Some(rate), burst) => Ok(Some(Bucket {
            rate,
            burst: burst.unwrap_or(rate),
        })),
        (None, Some(_)) => Err(format!(
            "{key}_burst needs {key}= (the rate the burst refills at)"
        )),
        (None, None) => Ok(None),
    }
}

/// `ops=`: a whole number of requests, more than 0.
fn count(v: &str) -> Result<NonZeroU64, String> {
    let t = v.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number of requests per second, like 1000".into());
    }
    // Digits only, so the one way to fail is a value past u64.
    let n: u64 = t
        .parse()
        .map_err(|_| format!("too large (at most {})", u64::MAX))?;
    NonZeroU64::new(n).ok_or_else(|| "must be more than 0 (leave the key out for no limit)".into())
}

/// `bandwidth=`: bytes as crate::size reads them, more than 0.
fn bytes(v: &str) -> Result<NonZeroU64, String> {
    let n = parse_size(v).map_err(|e| match e {
        SizeError::Overflow => "too large (more than 16 EiB)".to_string(),
        e => e.to_string(),
    })?;
    NonZeroU64::new(n)
        .ok_or_else(|| "must be more than 0 bytes (leave the key out for no limit)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(pairs: &[(&str, &str)]) -> Result<RateLimit, String> {
        let mut k = RateKeys::default();
        for (key, v) in pairs {
            assert!(k.take(key, v)?, "{key} is a rate key");
        }
        k.finish()
    }

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn rates_with_a_burst_of_one_second_unless_given() {
        assert_eq!(limit(&[]).unwrap(), RateLimit::default());
        let l = limit(&[("ops", "1000"), ("bandwidth", "64M")]).unwrap();
        assert_eq!(l.ops, Some(Bucket::per_second(nz(1000))));
        assert_eq!(l.bandwidth, Some(Bucket::per_second(nz(64 << 20))));
        let l = limit(&[("bandwidth", "1G"), ("bandwidth_burst", "4K")]).unwrap();
        assert_eq!(
            l.bandwidth,
            Some(Bucket {
                rate: nz(1 << 30),
                burst: nz(4096)
            })
        );
        assert_eq!(l.ops, None);
        let l = limit(&[("ops_burst", "5"), ("ops", "1")]).unwrap();
        assert_eq!(
            l.ops,
            Some(Bucket {
                rate: nz(1),
                burst: nz(5)
            })
        );
    }

    #[test]
    fn other_keys_are_not_taken() {
        let mut k = RateKeys::default();
        assert_eq!(k.take("size", "64K"), Ok(false));
        assert_eq!(k.take("timeout", "5s"), Ok(false));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (pairs, says) in [
            (&[("ops", "0")][..], "ops=0: must be more than 0"),
            (&[("ops", "fast")], "ops=fast: expected a whole number"),
            (&[("ops", "")], "ops=: expected a whole number"),
            (&[("ops", "-5")], "ops=-5: expected a whole number"),
            (&[("ops", "1.5")], "ops=1.5: expected a whole number"),
            (&[("ops", "1K")], "ops=1K: expected a whole number"),
            (
                &[("ops", "18446744073709551616")],
                "ops=18446744073709551616: too large",
            ),
            (
                &[("bandwidth", "0")],
                "bandwidth=0: must be more than 0 bytes",
            ),
            (
                &[("bandwidth", "0M")],
                "bandwidth=0M: must be more than 0 bytes",
            ),
            (
                &[("bandwidth", "lots")],
                "bandwidth=lots: expected a whole number",
            ),
            (&[("bandwidth", "1.5G")], "bandwidth=1.5G: fractions"),
            (&[("bandwidth", "64X")], "bandwidth=64X: unknown unit"),
            (
                &[("bandwidth", "17179869184T")],
                "bandwidth=17179869184T: too large",
            ),
            (
                &[("ops_burst", "0"), ("ops", "1")],
                "ops_burst=0: must be more",
            ),
            (&[("ops_burst", "5")], "ops_burst needs ops="),
            (
                &[("bandwidth_burst", "4K")],
                "bandwidth_burst needs bandwidth=",
            ),
            (&[("ops", "1"), ("ops", "2")], "ops given twice"),
        ] {
            let why = limit(pairs).unwrap_err();
            assert!(why.contains(says), "{pairs:?}: {why}");
        }
    }
}
