//! `vmm run`'s exit code. init's status goes through the guest's exit port
//! as 32 bits, but a process exit code has 8: a status that does not fit
//! must not come out as another one, least of all as 0 (256 mod 256).

/// The VMM itself failed: a bad option, no KVM, a pager that cannot be
/// opened, a guest that stopped without a status (triple fault, KVM
/// error), or objects that failed to sync after init exited 0.
pub const VMM_FAILED: u8 = 1;

/// A VMM thread made a system call its seccomp filter refuses: 128 +
/// SIGSYS, what a shell shows for a death by SIGSYS (seccomp/report.rs).
pub const SECCOMP_REFUSED: u8 = 128 + libc::SIGSYS as u8;

/// init's status did not fit in 1..=255 (negative, or 256 and up).
pub const STATUS_OUT_OF_RANGE: u8 = 255;

/// `vmm run --help`'s table. The guest kernel's own statuses are
/// guest_kernel::abi's EXIT_* and KILLED_BASE.
pub const HELP: &str = "\
Exit status:
  0        init exited with status 0 and every object synced
  1-255    init's exit status, as it is; some values also mean:
  1        vmm failed (bad option, no KVM, a pager could not be opened, the
           guest stopped without a status: triple fault, KVM error), or init
           exited 0 but an object failed to sync; stderr says which
  2        the command line could not be parsed
  101      the guest kernel panicked
  102      the guest kernel took an exception in ring 0
  103      the guest kernel could not boot
  128+N    init was killed by CPU exception N (142: page fault)
  159      a VMM thread made a system call its seccomp filter refuses
           (stderr names the thread and the call; see --no-seccomp)
  255      init's status was 255 or did not fit in 1-255 (negative, or 256
           and up; stderr gives the status)";

/// The exit code for init's `status` as the exit port carried it: 1..=255
/// as themselves, 0 as 0, anything else STATUS_OUT_OF_RANGE.
pub fn from_guest_status(status: u32) -> u8 {
    u8::try_from(status).unwrap_or(STATUS_OUT_OF_RANGE)
}

/// The status as the guest wrote it: init returns an i32, so a value with
/// the top bit set is a negative status.
pub fn shown(status: u32) -> i32 {
    status as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_kernel::abi::{EXIT_BOOT_FAILED, EXIT_KERNEL_FAULT, EXIT_KERNEL_PANIC, KILLED_BASE};

    #[test]
    fn a_non_zero_status_never_exits_zero() {
        assert_eq!(from_guest_status(0), 0);
        for s in 1..=255u32 {
            assert_eq!(u32::from(from_guest_status(s)), s);
        }
        for s in [256, 512, 1 << 16, 1 << 31, u32::MAX, u32::MAX - 255] {
            assert_eq!(from_guest_status(s), STATUS_OUT_OF_RANGE, "{s}");
        }
        assert_eq!(shown(u32::MAX), -1);
        assert_eq!(shown(256), 256);
    }

    #[test]
    fn the_kernels_statuses_pass_through() {
        for s in [EXIT_KERNEL_PANIC, EXIT_KERNEL_FAULT, EXIT_BOOT_FAILED] {
            assert_eq!(u32::from(from_guest_status(s)), s);
            assert_ne!(from_guest_status(s), VMM_FAILED);
            assert_ne!(from_guest_status(s), STATUS_OUT_OF_RANGE);
        }
        // Page fault (14): the highest architectural vector is 31.
        assert_eq!(from_guest_status(KILLED_BASE as u32 + 14), 142);
        assert!(KILLED_BASE + 31 < i64::from(STATUS_OUT_OF_RANGE));
    }
}
