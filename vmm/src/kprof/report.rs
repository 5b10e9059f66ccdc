//! The kernel profile as a person reads it: the total, then every function
//! with its instructions, its share and, given a unit count (faults, round
//! trips), its instructions per unit.

use super::{Profile, Symbols};

/// What the caller's span did, so the report can say what each cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Units {
    pub count: u64,
    /// Singular, e.g. "fault".
    pub name: String,
}

/// One function's instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// None for the addresses no symbol covers.
    pub start: Option<u64>,
    pub name: String,
    pub count: u64,
}

/// A profile with its functions named, most instructions first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub profile_mark: u32,
    pub spans: u32,
    pub unfinished: bool,
    pub total: u64,
    pub user_steps: u64,
    pub functions: Vec<Function>,
}

/// What stands for the addresses outside every symbol.
pub const NO_SYMBOL: &str = "(no symbol)";

impl Report {
    pub fn new(profile: &Profile, symbols: &Symbols) -> Report {
        let mut by_start: std::collections::BTreeMap<Option<u64>, Function> = Default::default();
        for &(addr, n) in &profile.counts {
            let sym = symbols.lookup(addr);
            let start = sym.map(|s| s.start);
            by_start
                .entry(start)
                .or_insert_with(|| Function {
                    start,
                    name: sym.map_or_else(|| NO_SYMBOL.to_string(), |s| s.name.clone()),
                    count: 0,
                })
                .count += n;
        }
        let mut functions: Vec<Function> = by_start.into_values().collect();
        functions.sort_by(|a, b| b.count.cmp(&a.count).then(a.start.cmp(&b.start)));
        Report {
            profile_mark: profile.mark,
            spans: profile.spans,
            unfinished: profile.unfinished,
            total: profile.total(),
            user_steps: profile.user_steps,
            functions,
        }
    }

    /// The report's lines: a summary, then the `top` functions (all of
    /// them without a limit).
    pub fn lines(&self, units: Option<&Units>, top: Option<usize>) -> Vec<String> {
        let mut out = Vec::new();
        let mark = self.profile_mark;
        if self.spans == 0 {
            out.push(format!(
                "kernel profile: the guest never reached mark {mark}: nothing was profiled"
            ));
            return out;
        }
        let spans = if self.spans == 1 {
            "once".to_string()
        } else {
            format!("{} times", self.spans)
        };
        out.push(format!(
            "kernel profile: from mark {mark} to the next mark ({spans}): {} kernel instructions in {} functions",
            self.total,
            self.functions.len()
        ));
        let per = units.filter(|u| u.count > 0).map(|u| (u.count as f64, u));
        if let Some((k, u)) = per {
            out.push(format!(
                "  {:.1} per {} ({} {}s)",
                self.total as f64 / k,
                u.name,
                u.count,
                u.name
            ));
        }
        if self.unfinished {
            out.push(
                "  the guest stopped before the next mark: the last span runs to the end of the run"
                    .into(),
            );
        }
        if self.user_steps > 0 {
            out.push(format!(
                "  {} user-mode instructions were stepped too (hardware KVM) and are left out",
                self.user_steps
            ));
        }
        let per_head = per.map_or(String::new(), |(_, u)| {
            format!(" {:>10}", format!("per {}", u.name))
        });
        out.push(format!("{:>12} {:>7}{per_head}  function", "insn", "share"));
        let shown = top.unwrap_or(usize::MAX);
        for f in self.functions.iter().take(shown) {
            let share = 100.0 * f.count as f64 / self.total.max(1) as f64;
            let per_col = per.map_or(String::new(), |(k, _)| {
                format!(" {:>10.1}", f.count as f64 / k)
            });
            let at = f.start.map_or(String::new(), |a| format!(" [{a:#x}]"));
            out.push(format!(
                "{:>12} {share:>6.1}%{per_col}  {}{at}",
                f.count, f.name
            ));
        }
        if self.functions.len() > shown {
            let rest: u64 = self.functions[shown..].iter().map(|f| f.count).sum();
            let per_col = per.map_or(String::new(), |(k, _)| {
                format!(" {:>10.1}", rest as f64 / k)
            });
            let more = self.functions.len() - shown;
            let plural = if more == 1 { "" } else { "s" };
            out.push(format!(
                "{rest:>12} {:>6.1}%{per_col}  ({more} more function{plural})",
                100.0 * rest as f64 / self.total.max(1) as f64,
            ));
        }
        out.push(
            "  (single-stepped: every kernel instruction was a trip to the VMM, so the guest ran far slower than usual: more timer ticks land in the span, and code that depends on timing, such as whether the device has answered yet, may take other paths than in a run without the profiler)"
                .into(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::symbols::Symbol;
    use super::*;

    fn symbols() -> Symbols {
        let sym = |start, end, name: &str| Symbol {
            start,
            end,
            name: name.into(),
        };
        Symbols::new(vec![
            sym(0x1000, 0x1100, "dispatch"),
            sym(0x2000, 0x2100, "fault"),
        ])
    }

    fn profile(counts: Vec<(u64, u64)>) -> Profile {
        Profile {
            mark: 1,
            spans: 1,
            unfinished: false,
            counts,
            user_steps: 0,
        }
    }

    #[test]
    fn instructions_add_up_per_function_biggest_first() {
        let p = profile(vec![
            (0x10, 5),
            (0x1000, 10),
            (0x1010, 20),
            (0x2000, 40),
            (0x9000, 1),
        ]);
        let r = Report::new(&p, &symbols());
        assert_eq!(r.total, 76);
        let got: Vec<(&str, u64)> = r
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.count))
            .collect();
        assert_eq!(got, vec![("fault", 40), ("dispatch", 30), (NO_SYMBOL, 6)]);
        assert_eq!(r.functions[0].start, Some(0x2000));
        assert_eq!(r.functions[2].start, None);
    }

    #[test]
    fn lines_give_shares_and_per_unit_figures_and_cut_at_top() {
        let p = profile(vec![(0x1000, 300), (0x2000, 100)]);
        let r = Report::new(&p, &symbols());
        let units = Units {
            count: 100,
            name: "fault".into(),
        };
        let lines = r.lines(Some(&units), Some(1));
        let text = lines.join("\n");
        assert!(
            lines[0].contains("400 kernel instructions in 2 functions"),
            "{text}"
        );
        assert!(text.contains("4.0 per fault (100 faults)"), "{text}");
        let row = lines.iter().find(|l| l.contains("dispatch")).unwrap();
        assert!(
            row.contains("300") && row.contains("75.0%") && row.contains(" 3.0"),
            "{row}"
        );
        assert!(row.contains("[0x1000]"), "{row}");
        assert!(!text.contains("  fault [0x2000]"), "{text}");
        let rest = lines
            .iter()
            .find(|l| l.contains("(1 more function)"))
            .unwrap();
        assert!(
            rest.contains("100") && rest.contains("25.0%") && rest.contains(" 1.0"),
            "{rest}"
        );
        // Without units or a limit: every function, no per-unit column.
        let all = r.lines(None, None).join("\n");
        assert!(
            all.contains("fault [0x2000]") && !all.contains("per "),
            "{all}"
        );
    }

    #[test]
    fn a_mark_never_reached_says_so() {
        let p = Profile {
            mark: 7,
            ..Profile::default()
        };
        let lines = Report::new(&p, &symbols()).lines(None, None);
        assert_eq!(
            lines,
            vec!["kernel profile: the guest never reached mark 7: nothing was profiled"]
        );
    }
}
