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
