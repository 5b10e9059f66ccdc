//! What `vmm run` was asked to do, parsed and checked before any KVM call.

use crate::error::{Result, VmmError};

pub const MIB: u64 = 1024 * 1024;
/// Kernel heap (4 MiB), page tables, stacks and a little room for tasks.
pub const MIN_MEM: u64 = 16 * MIB;
/// The boot page tables cover this much with one page directory per GiB.
pub const MAX_MEM: u64 = 64 * 1024 * MIB;

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

#[cfg(test)]
mod tests {
    use super::*;

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
