//! The kernel's functions by address, from its ELF symbol table (.symtab),
//! with Rust names demangled: what turns the profiler's instruction
//! addresses into function names.

use std::fmt;

/// One function: the addresses `[start, end)` and its demangled name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// The kernel's code symbols, sorted by start address.
#[derive(Debug, Default)]
pub struct Symbols(Vec<Symbol>);

/// Why a kernel file gives no symbols.
#[derive(Debug)]
pub struct SymbolError(String);

impl fmt::Display for SymbolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A code symbol as the ELF gives it: a size of 0 (an assembly label
/// without `.size`) runs to the next symbol or to the end of its section.
#[derive(Debug, Clone)]
struct RawSymbol {
    start: u64,
    size: u64,
    section_end: u64,
    name: String,
}

impl Symbols {
    /// Sorts `symbols`; where two start at the same address the first
    /// given is kept (an alias adds nothing to a profile).
    pub fn new(mut symbols: Vec<Symbol>) -> Symbols {
        symbols.retain(|s| s.end > s.start);
        symbols.sort_by_key(|s| s.start);
        symbols.dedup_by_key(|s| s.start);
        Symbols(symbols)
    }

    /// The function symbols of the ELF image `elf` (STT_FUNC, and untyped
    /// labels in executable sections, which is what assembly entry points
    /// are). An image that cannot be parsed or has no such symbol (a
    /// stripped kernel) is an error: a profile without names is useless.
    pub fn from_elf(elf: &[u8]) -> Result<Symbols, SymbolError> {
        use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
        let file = object::File::parse(elf)
            .map_err(|e| SymbolError(format!("cannot read its ELF headers: {e}")))?;
        let mut raw = Vec::new();
        for sym in file.symbols() {
            if !matches!(sym.kind(), SymbolKind::Text | SymbolKind::Unknown) {
                continue;
            }
            let Some(section) = sym
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
            else {
                continue;
            };
            if section.kind() != SectionKind::Text {
                continue;
            }
            let name = match sym.name() {
                Ok(n) if !n.is_empty() => n,
                _ => continue,
            };
            raw.push(RawSymbol {
                start: sym.address(),
                size: sym.size(),
                section_end: section.address().saturating_add(section.size()),
                name: format!("{:#}", rustc_demangle::demangle(name)),
            });
        }
        let symbols = Symbols::new(close_ranges(raw));
        if symbols.0.is_empty() {
            return Err(SymbolError(
                "it has no function symbols (.symtab): was it stripped?".into(),
            ));
        }
        Ok(symbols)
    }

    /// The function `addr` is in, if any: of the symbols that contain it,
    /// the one that starts last (a label inside a function wins).
    pub fn lookup(&self, addr: u64) -> Option<&Symbol> {
        let after = self.0.partition_point(|s| s.start <= addr);
        self.0[..after].iter().rev().find(|s| addr < s.end)
    }
}

/// Gives every symbol its end: start + size, or for a size of 0 the next
/// symbol's start within the same section, else the section's end.
fn close_ranges(mut raw: Vec<RawSymbol>) -> Vec<Symbol> {
    raw.sort_by_key(|s| s.start);
    let starts: Vec<u64> = raw.iter().map(|s| s.start).collect();
    raw.into_iter()
        .map(|s| {
            let end = if s.size > 0 {
                s.start.saturating_add(s.size)
            } else {
                let next = starts.partition_point(|&a| a <= s.start);
                starts
                    .get(next)
                    .copied()
                    .filter(|&n| n < s.section_end)
                    .unwrap_or(s.section_end)
            };
            Symbol {
                start: s.start,
                end,
                name: s.name,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(start: u64, end: u64, name: &str) -> Symbol {
        Symbol {
            start,
            end,
            name: name.into(),
        }
    }

    fn name(s: &Symbols, addr: u64) -> Option<&str> {
        s.lookup(addr).map(|s| s.name.as_str())
    }

    #[test]
    fn an_address_belongs_to_the_function_that_covers_it() {
        let s = Symbols::new(vec![
            sym(0x3000, 0x3100, "c"),
            sym(0x1000, 0x1040, "a"),
            sym(0x1040, 0x1200, "b"),
        ]);
        assert_eq!(name(&s, 0x1000), Some("a"));
        assert_eq!(name(&s, 0x103f), Some("a"));
        assert_eq!(name(&s, 0x1040), Some("b"));
        assert_eq!(name(&s, 0x11ff), Some("b"));
        assert_eq!(name(&s, 0x30ff), Some("c"));
    }

    #[test]
    fn addresses_outside_every_symbol_have_no_name() {
        let s = Symbols::new(vec![sym(0x1000, 0x1040, "a"), sym(0x2000, 0x2010, "b")]);
        for addr in [0, 0xfff, 0x1040, 0x1fff, 0x2010, u64::MAX] {
            assert_eq!(name(&s, addr), None, "{addr:#x}");
        }
        assert_eq!(name(&Symbols::default(), 0x1000), None);
    }

    #[test]
    fn a_label_inside_a_function_takes_its_own_range_and_aliases_collapse() {
        let s = Symbols::new(vec![
            sym(0x1000, 0x1100, "outer"),
            sym(0x1080, 0x1090, "inner"),
            sym(0x1000, 0x1100, "alias_of_outer"),
            // Empty ranges cover nothing.
            sym(0x1050, 0x1050, "empty"),
        ]);
        assert_eq!(s.0.len(), 2);
        assert_eq!(name(&s, 0x1050), Some("outer"));
        assert_eq!(name(&s, 0x1085), Some("inner"));
        assert_eq!(name(&s, 0x1095), Some("outer"));
    }

    #[test]
    fn a_label_without_a_size_runs_to_the_next_symbol_or_its_sections_end() {
        let raw = |start, size, section_end, name: &str| RawSymbol {
            start,
            size,
            section_end,
            name: name.into(),
        };
        let closed = close_ranges(vec![
            raw(0x1000, 0, 0x2000, "entry"),
            raw(0x1010, 0x20, 0x2000, "sized"),
            raw(0x1800, 0, 0x2000, "last_in_section"),
            // In another section that starts right where the first ends.
            raw(0x2000, 0x10, 0x3000, "next_section"),
        ]);
        assert_eq!(
            closed,
            vec![
                sym(0x1000, 0x1010, "entry"),
                sym(0x1010, 0x1030, "sized"),
                sym(0x1800, 0x2000, "last_in_section"),
                sym(0x2000, 0x2010, "next_section"),
            ]
        );
    }

    /// The kernel this binary boots by default: its trap path is there by
    /// name, demangled, and its text addresses are in the kernel half.
    #[test]
    fn the_built_in_kernel_has_its_functions_by_name() {
        let s = Symbols::from_elf(crate::images::KERNEL).unwrap();
        let dispatch = s.0.iter().find(|f| f.name == "dispatch").unwrap();
        assert!(dispatch.start >= super::super::KERNEL_HALF);
        assert_eq!(name(&s, dispatch.start + 1), Some("dispatch"));
        // Rust paths come demangled, without the hash.
        assert!(
            s.0.iter()
                .any(|f| f.name.contains("::") && !f.name.contains("17h")),
            "no demangled Rust path among {} symbols",
            s.0.len()
        );
    }

    #[test]
    fn a_file_that_is_not_elf_or_has_no_symbols_is_refused() {
        assert!(Symbols::from_elf(b"not an elf").is_err());
        assert!(Symbols::from_elf(&[]).is_err());
        // The built-in kernel with its section headers cut off (e_shoff,
        // e_shnum, e_shstrndx = 0): still bootable, but no .symtab.
        let mut stripped = crate::images::KERNEL.to_vec();
        stripped[0x28..0x30].fill(0);
        stripped[0x3c..0x40].fill(0);
        let e = Symbols::from_elf(&stripped).unwrap_err().to_string();
        assert!(e.contains("no function symbols"), "{e}");
    }
}
