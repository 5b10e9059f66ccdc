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
    #[error("unknown init program {name:?}; built-in programs are: {known}")]
    UnknownInit { name: String, known: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
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
    #[error("the guest stopped: {0}")]
    Guest(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, VmmError>;

pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}
