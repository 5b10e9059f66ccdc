//! What `vmm run` was asked to do, parsed and checked before any KVM call.

use crate::error::{Result, VmmError};
use std::time::Duration;

pub const MIB: u64 = 1024 * 1024;
/// Kernel heap (4 MiB), page tables, stacks and a little room for tasks.
pub const MIN_MEM: u64 = 16 * MIB;
/// The boot page tables cover this much with one page directory per GiB.
pub const MAX_MEM: u64 = 64 * 1024 * MIB;

/// Largest `--swap`: the guest's default pager numbers swap pages with 32
/// bits, and the host file is sparse, so this is a sanity bound.
pub const MAX_SWAP: u64 = 1024 * 1024 * MIB;

/// Parses `--swap SIZE` (`512M`, `4G`, bytes; `0` for none): `None` when
/// swap is off, else its size in bytes, a page multiple.
pub fn parse_swap_size(s: &str) -> Result<Option<u64>> {
    let bad = |why: String| VmmError::SwapSize(s.to_string(), why);
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        bad("expected a number with an optional K, M or G suffix (0: no swap)".into())
    })?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1024,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => 1024 * MIB,
        _ => return Err(bad("unknown unit (use K, M or G)".into())),
    };
    let bytes = n.checked_mul(mult).ok_or_else(|| bad("too large".into()))?;
    if bytes == 0 {
        return Ok(None);
    }
    if bytes % 4096 != 0 {
        return Err(bad(format!(
            "{bytes} bytes is not a multiple of the 4 KiB page"
        )));
    }
    if bytes > MAX_SWAP {
        return Err(bad(format!("at most {} GiB", MAX_SWAP / (1024 * MIB))));
    }
    Ok(Some(bytes))
}

/// Parses `256M`, `1G`, `512MiB`, `1048576` (bytes) and checks the limits.
pub fn parse_mem_size(s: &str) -> Result<u64> {
    let bad = |why| VmmError::MemorySize(s.to_string(), why);
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| bad("expected a number with an optional K, M or G suffix"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1024,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => 1024 * MIB,
        _ => return Err(bad("unknown unit (use K, M or G)")),
    };
    let bytes = n.checked_mul(mult).ok_or_else(|| bad("too large"))?;
    if bytes % 4096 != 0 {
        return Err(VmmError::MemoryNotPageMultiple(bytes));
    }
    if bytes < MIN_MEM {
        return Err(VmmError::MemoryTooSmall {
            size: bytes / MIB,
            min: MIN_MEM / MIB,
        });
    }
    if bytes > MAX_MEM {
        return Err(VmmError::MemoryTooLarge {
            size: bytes / MIB,
            max: MAX_MEM / MIB,
        });
    }
    Ok(bytes)
}

/// Longest `--pager-timeout`: a day is already "never" for a page fault.
pub const MAX_PAGER_TIMEOUT_SECS: f64 = 86_400.0;

/// Parses `--pager-timeout SECS` (fractions allowed: `0.5`).
pub fn parse_pager_timeout(s: &str) -> Result<Duration> {
    let bad = |why| VmmError::PagerTimeout(s.to_string(), why);
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| bad("expected a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(bad("must be more than 0 seconds"));
    }
    if secs > MAX_PAGER_TIMEOUT_SECS {
        return Err(bad("must be at most 86400 seconds (a day)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_sizes() {
        assert_eq!(parse_swap_size("0").unwrap(), None);
        assert_eq!(parse_swap_size("512M").unwrap(), Some(512 * MIB));
        assert_eq!(parse_swap_size("1G").unwrap(), Some(1024 * MIB));
        assert_eq!(parse_swap_size("8192").unwrap(), Some(8192));
        for bad in ["", "-1", "1X", "100", "4097", "2000G", "lots"] {
            assert!(
                matches!(parse_swap_size(bad), Err(VmmError::SwapSize(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn pager_timeouts() {
        assert_eq!(parse_pager_timeout("30").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_pager_timeout("0.5").unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["0", "-1", "NaN", "inf", "soon", "", "1e9"] {
            assert!(
                matches!(parse_pager_timeout(bad), Err(VmmError::PagerTimeout(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_mem_size("256M").unwrap(), 256 * MIB);
        assert_eq!(parse_mem_size("1G").unwrap(), 1024 * MIB);
        assert_eq!(parse_mem_size("64MiB").unwrap(), 64 * MIB);
        assert_eq!(parse_mem_size("16777216").unwrap(), 16 * MIB);
        assert!(matches!(
            parse_mem_size("1M"),
            Err(VmmError::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            parse_mem_size("16777217"),
            Err(VmmError::MemoryNotPageMultiple(_))
        ));
        assert!(matches!(
            parse_mem_size("100T"),
            Err(VmmError::MemorySize(..))
        ));
        assert!(matches!(
            parse_mem_size("lots"),
            Err(VmmError::MemorySize(..))
        ));
        assert!(matches!(
            parse_mem_size("99999999999999999999G"),
            Err(VmmError::MemorySize(..))
        ));
        assert!(matches!(
            parse_mem_size("1000G"),
            Err(VmmError::MemoryTooLarge { .. })
        ));
    }
}
