//! The C memory functions the compiler may call. The host target's
//! `compiler_builtins` leaves them to libc, which a freestanding image does
//! not have. String instructions in asm cannot be turned back into calls to
//! these functions by the optimiser.

use core::arch::asm;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees non-overlapping valid ranges.
    unsafe {
        asm!("rep movsq", "mov rcx, {rest}", "rep movsb",
             rest = in(reg) n & 7,
             inout("rcx") n / 8 => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // Forward copy is safe: dst is below src or past its end.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: overlapping with dst above src: copy backwards.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _,
             inout("rdi") dst.add(n).wrapping_sub(1) => _,
             inout("rsi") src.add(n).wrapping_sub(1) => _,
             options(nostack));
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    let pattern = (c as u8 as u64) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees a valid range.
    unsafe {
        asm!("rep stosq", "mov rcx, {rest}", "rep stosb",
             rest = in(reg) n & 7,
             inout("rcx") n / 8 => _, inout("rdi") dst => _, in("rax") pattern,
             options(nostack, preserves_flags));
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let r: i32;
    // SAFETY: the caller guarantees valid ranges. `repe cmpsb` stops after
    // the first difference (or at the end); the bytes just compared sit at
    // rsi-1 and rdi-1, and their difference is the result.
    unsafe {
        asm!("repe cmpsb",
             "movzx eax, byte ptr [rsi - 1]",
             "movzx edx, byte ptr [rdi - 1]",
             "sub eax, edx",
             inout("rcx") n => _, inout("rsi") a => _, inout("rdi") b => _,
             out("eax") r, out("edx") _,
             options(nostack, readonly));
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` refers to this; nothing here ever unwinds.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
