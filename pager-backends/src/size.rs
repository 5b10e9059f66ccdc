//! Byte sizes as people write them on a command line or in a URI, and as
//! messages show them back. The one parser for `--mem`, `--swap`,
//! `zero?size=`, `vmm bench objread --size` and `procedural-pager --size`.
//!
//! A size is a whole decimal number with an optional binary unit:
//! `K`, `M`, `G` or `T` (x 1024, 1024², 1024³, 1024⁴), in either case,
//! optionally followed by `B` or `iB` (`64K`, `64KB`, `64KiB` are the same);
//! `B` alone means bytes. Surrounding whitespace is ignored. There are no
//! fractions, signs or hex digits: `1.5G` is written `1536M`. What a size may
//! be (zero, a page multiple, a range) is the caller's rule, not the
//! parser's.

use std::fmt;
use thiserror::Error;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    #[error(
        "expected a whole number of bytes with an optional K, M, G or T suffix, like 4096 or 64M"
    )]
    NotANumber,
    #[error("fractions are not taken: give a whole number in a smaller unit (1536M, not 1.5G)")]
    Fraction,
    #[error("unknown unit {0:?} (use K, M, G or T; binary, K = 1024)")]
    UnknownUnit(String),
    /// More than `u64::MAX` bytes: callers with a limit say "too large"
    /// in their own words.
    #[error("more than 16 EiB")]
    Overflow,
}

/// Parses a size in bytes (see the module docs for the syntax).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(SizeError::NotANumber);
    }
    if unit.starts_with(['.', ',']) {
        return Err(SizeError::Fraction);
    }
    let mult = unit_multiplier(unit).ok_or_else(|| SizeError::UnknownUnit(unit.to_string()))?;
    // Digits only, so the one way to fail is a value past u64.
    let n: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
    n.checked_mul(mult).ok_or(SizeError::Overflow)
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let u = unit.to_ascii_uppercase();
    let prefix = u
        .strip_suffix("IB")
        .or_else(|| u.strip_suffix('B'))
        .unwrap_or(&u);
    // "iB" alone is no unit: it needs a prefix ("KiB").
    if prefix.is_empty() && u == "IB" {
        return None;
    }
    match prefix {
        "" => Some(1),
        "K" => Some(KIB),
        "M" => Some(MIB),
        "G" => Some(GIB),
        "T" => Some(TIB),
        _ => None,
    }
}

/// A byte count shown exactly: in the largest binary unit that divides it
/// (`4 KiB`, `16 MiB`), else in bytes. Never rounded, so a size that was
/// refused is shown as it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n != 0 && n.is_multiple_of(unit) {
                return write!(f, "{} {name}", n / unit);
            }
        }
        if n == 1 {
            write!(f, "1 byte")
        } else {
            write!(f, "{n} bytes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units() {
        for (s, want) in [
            ("0", 0),
            ("4096", 4096),
            ("  4096 ", 4096),
            ("7B", 7),
            ("64K", 64 * KIB),
            ("64k", 64 * KIB),
            ("64KB", 64 * KIB),
            ("64KiB", 64 * KIB),
            ("64kib", 64 * KIB),
            ("256M", 256 * MIB),
            ("512MiB", 512 * MIB),
            ("1G", GIB),
            ("2gb", 2 * GIB),
            ("1T", TIB),
            ("16777216", 16 * MIB),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s:?}");
        }
    }

    #[test]
    fn refusals() {
        for s in ["", " ", "K", "-1", "+1", "lots", "G1"] {
            assert_eq!(parse_size(s), Err(SizeError::NotANumber), "{s:?}");
        }
        for s in ["1.5G", "0.5", "1,5M"] {
            assert_eq!(parse_size(s), Err(SizeError::Fraction), "{s:?}");
        }
        for s in ["1X", "1 K", "1P", "1iB", "1KK", "1Kb2", "0x10"] {
            assert!(
                matches!(parse_size(s), Err(SizeError::UnknownUnit(_))),
                "{s:?}"
            );
        }
        for s in ["18446744073709551616", "99999999999999999999G", "16777216T"] {
            assert_eq!(parse_size(s), Err(SizeError::Overflow), "{s:?}");
        }
    }

    #[test]
    fn shown_exactly() {
        for (n, want) in [
            (0, "0 bytes"),
            (1, "1 byte"),
            (4095, "4095 bytes"),
            (4096, "4 KiB"),
            (16 * MIB, "16 MiB"),
            (16 * MIB + 4096, "16388 KiB"),
            (16 * MIB + 1, "16777217 bytes"),
            (64 * GIB, "64 GiB"),
            (3 * TIB, "3 TiB"),
        ] {
            assert_eq!(ByteSize(n).to_string(), want);
        }
    }

    proptest! {
        /// Whatever is shown parses back to the same count, so a message's
        /// size can be pasted into the option again.
        #[test]
        fn shown_sizes_parse_back(n in any::<u64>()) {
            let shown = ByteSize(n).to_string();
            let (num, unit) = shown.split_once(' ').expect("number and unit");
            let unit = if unit.starts_with("byte") { "" } else { unit };
            prop_assert_eq!(parse_size(&format!("{num}{unit}")), Ok(n));
        }

        /// Every number with every unit spelling parses to number x unit,
        /// or is refused as too large; never a wrong value.
        #[test]
        fn number_times_unit(
            n in any::<u64>(),
            unit in prop::sample::select(vec![
                ("", 1), ("b", 1), ("k", KIB), ("KB", KIB), ("KiB", KIB),
                ("m", MIB), ("MiB", MIB), ("G", GIB), ("gB", GIB), ("T", TIB), ("TIB", TIB),
            ]),
        ) {
            let got = parse_size(&format!("{n}{}", unit.0));
            match n.checked_mul(unit.1) {
                Some(want) => prop_assert_eq!(got, Ok(want)),
                None => prop_assert_eq!(got, Err(SizeError::Overflow)),
            }
        }
    }
}
