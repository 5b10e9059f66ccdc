//! What `vmm run` was asked to do, parsed and checked before any KVM call.

use crate::error::{Result, VmmError};
use pager_backends::size::{ByteSize, MIB, SizeError, parse_size};
use std::time::Duration;

/// Kernel heap (4 MiB), page tables, stacks and a little room for tasks.
pub const MIN_MEM: u64 = 16 * MIB;
/// The boot page tables cover this much with one page directory per GiB.
pub const MAX_MEM: u64 = 64 * 1024 * MIB;

/// Largest `--swap`: the guest's default pager numbers swap pages with 32
/// bits, and the host file is sparse, so this is a sanity bound.
pub const MAX_SWAP: u64 = 1024 * 1024 * MIB;

/// Parses `--swap SIZE` (a size as `pager_backends::size` reads it; `0`
/// for none): `None` when swap is off, else its size in bytes, a page
/// multiple.
pub fn parse_swap_size(s: &str) -> Result<Option<u64>> {
    let bad = |why: String| VmmError::SwapSize(s.to_string(), why);
    let bytes = match parse_size(s) {
        Ok(n) => n,
        Err(SizeError::Overflow) => return Err(bad(too_much_swap())),
        Err(e) => return Err(bad(format!("{e}; 0 turns swap off"))),
    };
    if bytes == 0 {
        return Ok(None);
    }
    if bytes % 4096 != 0 {
        return Err(bad(format!(
            "{} is not a multiple of the 4 KiB page",
            ByteSize(bytes)
        )));
    }
    if bytes > MAX_SWAP {
        return Err(bad(too_much_swap()));
    }
    Ok(Some(bytes))
}

fn too_much_swap() -> String {
    format!("at most {}", ByteSize(MAX_SWAP))
}

/// Parses `--mem` (`256M`, `1G`, `512MiB`, `1048576` bytes: a size as
/// `pager_backends::size` reads it) and checks the limits.
pub fn parse_mem_size(s: &str) -> Result<u64> {
    let too_large = |size: String| VmmError::MemoryTooLarge {
        size,
        max: ByteSize(MAX_MEM),
    };
    let bytes = match parse_size(s) {
        Ok(n) => n,
        Err(SizeError::Overflow) => return Err(too_large(s.trim().to_string())),
        Err(e) => return Err(VmmError::MemorySize(s.to_string(), e)),
    };
    if bytes % 4096 != 0 {
        return Err(VmmError::MemoryNotPageMultiple(ByteSize(bytes)));
    }
    if bytes < MIN_MEM {
        return Err(VmmError::MemoryTooSmall {
            size: ByteSize(bytes),
            min: ByteSize(MIN_MEM),
        });
    }
    if bytes > MAX_MEM {
        return Err(too_large(ByteSize(bytes).to_string()));
    }
    Ok(bytes)
}

/// Longest pager timeout: a day is already "never" for a page fault.
pub const MAX_PAGER_TIMEOUT_SECS: f64 = 86_400.0;

/// Parses a pager timeout, `--pager-timeout` and an object's `?timeout=`
/// alike: seconds (`30`, `0.5`) or with a unit (`5s`, `500ms`, `2m`); more
/// than 0 and at most a day.
pub fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let secs = num
        .parse::<f64>()
        .ok()
        .map(|n| n * unit)
        .filter(|s| s.is_finite() && *s <= MAX_PAGER_TIMEOUT_SECS)
        // A value too small for a nanosecond would be no timeout at all.
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .ok_or("expected e.g. 30, 5s, 500ms or 2m: more than 0 and at most a day")?;
    Ok(secs)
}

/// `--pager-timeout`.
pub fn parse_pager_timeout(s: &str) -> Result<Duration> {
    parse_timeout(s).map_err(|why| VmmError::PagerTimeout(s.to_string(), why))
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
        assert_eq!(parse_swap_size("1T").unwrap(), Some(MAX_SWAP));
        for bad in ["", "-1", "1X", "100", "4097", "2000G", "lots", "1.5G"] {
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
        assert_eq!(parse_pager_timeout("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1e-9"), Ok(Duration::from_nanos(1)));
        for bad in [
            "0", "-1", "NaN", "inf", "soon", "", "1e9", "1e-12", "0ms", "2d",
        ] {
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
        for bad in ["lots", "1.5G", "1X", ""] {
            assert!(
                matches!(parse_mem_size(bad), Err(VmmError::MemorySize(..))),
                "{bad}"
            );
        }
        for big in ["100T", "1000G", "99999999999999999999G", "99999999T"] {
            assert!(
                matches!(parse_mem_size(big), Err(VmmError::MemoryTooLarge { .. })),
                "{big}"
            );
        }
    }

    /// Refused sizes are shown as given, never rounded to a misleading 0.
    #[test]
    fn refused_sizes_are_shown_exactly() {
        let msg = |s: &str| parse_mem_size(s).unwrap_err().to_string();
        assert_eq!(
            msg("4096"),
            "memory size 4 KiB is too small: the guest needs at least 16 MiB"
        );
        assert_eq!(
            msg("16773120"),
            "memory size 16380 KiB is too small: the guest needs at least 16 MiB"
        );
        assert_eq!(
            msg("99999999T"),
            "memory size 99999999T is larger than the supported 64 GiB"
        );
        assert_eq!(
            msg("65537M"),
            "memory size 65537 MiB is larger than the supported 64 GiB"
        );
        assert_eq!(
            parse_swap_size("2000G").unwrap_err().to_string(),
            "--swap \"2000G\": at most 1 TiB"
        );
        assert_eq!(
            parse_swap_size("99999999999T").unwrap_err().to_string(),
            "--swap \"99999999999T\": at most 1 TiB"
        );
        assert!(
            parse_swap_size("0.5G")
                .unwrap_err()
                .to_string()
                .contains("fractions")
        );
    }
}
