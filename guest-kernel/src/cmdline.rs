//! The kernel command line: `key=value` words, then `--` and the init
//! program's arguments. Example: `timer_hz=100 init=spawn -- spin:a spin:b`.

/// Iterates over the words before `--`.
pub fn options(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmdline
        .split(|&c| c == b' ')
        .filter(|w| !w.is_empty())
        .take_while(|w| *w != b"--")
}

/// The value of `key=value`, the last one if repeated.
pub fn value<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    options(cmdline)
        .filter_map(|w| {
            let eq = w.iter().position(|&c| c == b'=')?;
            (&w[..eq] == key).then(|| &w[eq + 1..])
        })
        .last()
}

/// Everything after the first ` -- ` (the init arguments), trimmed.
pub fn init_args(cmdline: &[u8]) -> &[u8] {
    let mut rest = cmdline;
    loop {
        let trimmed = trim_start(rest);
        if trimmed.is_empty() {
            return &[];
        }
        let end = trimmed
            .iter()
            .position(|&c| c == b' ')
            .unwrap_or(trimmed.len());
        if &trimmed[..end] == b"--" {
            return trim_start(&trimmed[end..]);
        }
        rest = &trimmed[end..];
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().position(|&c| c != b' ').unwrap_or(s.len());
    &s[n..]
}

/// Parses a decimal u64 (no sign, no overflow).
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        let d = c.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(d as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_values_and_args() {
        let c = b"timer_hz=250  init=spawn quiet -- spin:a  spin:b";
        assert_eq!(value(c, b"init"), Some(&b"spawn"[..]));
        assert_eq!(value(c, b"timer_hz"), Some(&b"250"[..]));
        assert_eq!(value(c, b"quiet"), None);
        assert_eq!(value(c, b"spin"), None);
        assert_eq!(init_args(c), b"spin:a  spin:b");
        assert_eq!(options(c).count(), 3);
    }

    #[test]
    fn no_args_and_repeats() {
        assert_eq!(init_args(b"init=a"), b"");
        assert_eq!(init_args(b"init=a --"), b"");
        assert_eq!(init_args(b"--x -- y"), b"y");
        assert_eq!(value(b"a=1 a=2", b"a"), Some(&b"2"[..]));
        assert_eq!(value(b"a=1 -- a=2", b"a"), Some(&b"1"[..]));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"100"), Some(100));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1x"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }
}
