//! Everything that can stop the VMM, each with a message a user can act on.

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
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmVersion(i32),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("invalid memory size {0:?}: {1}")]
    MemorySize(String, &'static str),
    #[error("memory size {size} MiB is too small: the guest needs at least {min} MiB")]
    MemoryTooSmall { size: u64, min: u64 },
    #[error("memory size {0} bytes is not a multiple of the 4 KiB page size")]
    MemoryNotPageMultiple(u64),
    #[error("memory size {size} MiB is larger than the supported {max} MiB")]
    MemoryTooLarge { size: u64, max: u64 },
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
    #[error("boot setup: {0}")]
    Boot(String),
    #[error("--object {arg:?}: {why}")]
    Object { arg: String, why: String },
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
    PagerTimeout(String, &'static str),
    #[error("virtio-pager device: {0}")]
    PagerDevice(#[from] devices::pager::PagerDeviceError),
    #[error("the guest stopped: {0}")]
    Guest(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, VmmError>;

pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}
