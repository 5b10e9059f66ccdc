//! Integer formatting without `core::fmt`'s integer `Display`, which the
//! precompiled `core` builds with SSE (the kernel must stay SSE-free).

/// Decimal digits of `v` into `buf`; returns the used tail of `buf`.
pub fn dec(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// Signed decimal.
pub fn idec(v: i64, buf: &mut [u8; 21]) -> &[u8] {
    let mut tmp = [0u8; 20];
    let digits = dec(v.unsigned_abs(), &mut tmp);
    let start = 21 - digits.len() - (v < 0) as usize;
    buf[21 - digits.len()..].copy_from_slice(digits);
    if v < 0 {
        buf[start] = b'-';
    }
    &buf[start..]
}

/// `0x`-prefixed lowercase hex.
pub fn hex(mut v: u64, buf: &mut [u8; 18]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (v & 0xf) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    buf[i - 1] = b'x';
    buf[i - 2] = b'0';
    &buf[i - 2..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(dec(0, &mut [0; 20]), b"0");
        assert_eq!(dec(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        assert_eq!(idec(-42, &mut [0; 21]), b"-42");
        assert_eq!(idec(i64::MIN, &mut [0; 21]), b"-9223372036854775808");
        assert_eq!(idec(7, &mut [0; 21]), b"7");
        assert_eq!(hex(0, &mut [0; 18]), b"0x0");
        assert_eq!(hex(0xdead_beef, &mut [0; 18]), b"0xdeadbeef");
        assert_eq!(hex(u64::MAX, &mut [0; 18]), b"0xffffffffffffffff");
    }
}
