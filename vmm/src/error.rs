//! Everything that can stop the VMM, each with a message a user can act on.

use pager_backends::size::{ByteSize, SizeError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VmmError {
    #[error(
        "cannot open {path}: {source}. Is KVM available (kvm_intel or kvm_amd loaded) and may you use it (kvm group)?"
    )]
    KvmOpen {
        path: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{path} is not a KVM device: KVM_GET_API_VERSION failed: {source}")]
    NotKvm {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmVersion(i32),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("invalid memory size {0:?}: {1}")]
    MemorySize(String, SizeError),
    #[error("memory size {size} is too small: the guest needs at least {min}")]
    MemoryTooSmall { size: ByteSize, min: ByteSize },
    #[error("memory size {0} is not a multiple of the 4 KiB page size")]
    MemoryNotPageMultiple(ByteSize),
    /// `size` as given when it does not even fit in 64 bits.
    #[error("memory size {size} is larger than the supported {max}")]
    MemoryTooLarge { size: String, max: ByteSize },
    #[error("cannot allocate guest memory: {0}")]
    GuestMemory(String),
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid kernel ELF {path}: {why}")]
    KernelInvalid { path: String, why: String },
    #[error("kernel {path} is {kind}, not a regular file")]
    KernelNotRegular { path: String, kind: &'static str },
    #[error(
        "kernel {path} is {size} bytes, over the {mib} MiB ({max}-byte) kernel file limit",
        mib = .max >> 20
    )]
    KernelTooLarge { path: String, size: u64, max: u64 },
    #[error("unknown init program {name:?}; built-in programs are: {known}")]
    UnknownInit { name: String, known: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Bytes: the user's `--cmdline` (trimmed), init's arguments with their
    /// ` -- ` separator, what the VMM adds (`init=NAME`, its own words and
    /// the spaces between), and the most the kernel command line holds.
    #[error("{}", cmdline_too_long(*given, *args, *added, *limit))]
    CmdlineTooLong {
        given: usize,
        args: usize,
        added: usize,
        limit: usize,
    },
    #[error("boot setup: {0}")]
    Boot(String),
    #[error("--object {arg:?}: {why}")]
    Object { arg: String, why: String },
    #[error("{option} {given:?}: {why}")]
    BadSize {
        option: &'static str,
        given: String,
        why: String,
    },
    #[error("--swap {0:?}: {1}")]
    SwapSize(String, String),
    #[error("--object {arg:?}: cannot open: {source}")]
    ObjectOpen {
        arg: String,
        #[source]
        source: pager_backends::PagerError,
    },
    #[error("--object given {count} times; the device's object table holds at most {max}")]
    TooManyObjects { count: usize, max: usize },
    #[error("invalid --pager-timeout {0:?}: {1}")]
    PagerTimeout(String, String),
    #[error("virtio-pager device: {0}")]
    PagerDevice(#[from] devices::pager::PagerDeviceError),
    #[error("--kernel-profile: {0}")]
    KernelProfile(String),
    #[error("the guest stopped: {0}")]
    Guest(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn cmdline_too_long(given: usize, args: usize, added: usize, limit: usize) -> String {
    let holds = format!(
        "the kernel command line holds {limit} bytes, and the VMM adds {added} of its own (init=PROGRAM, its options, spaces)"
    );
    if given == 0 {
        return format!(
            "init's arguments take {args} bytes of the kernel command line (with the ' -- ' before them), but at most {} fit: {holds}",
            limit.saturating_sub(added)
        );
    }
    let room = limit.saturating_sub(added + args);
    let args = if args > 0 {
        format!("; init's arguments take {args} (with the ' -- ' before them)")
    } else {
        String::new()
    };
    format!("--cmdline is {given} bytes, but at most {room} fit: {holds}{args}")
}

pub type Result<T> = std::result::Result<T, VmmError>;

pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}
