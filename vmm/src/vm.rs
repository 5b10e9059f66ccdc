//! The KVM virtual machine: guest memory, in-kernel interrupt controller.

use crate::boot::layout::ram_ranges;
use crate::error::{Result, VmmError, kvm};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub mem: GuestMemoryMmap,
}

/// Where Intel VMX keeps its real-mode TSS; unused on AMD and PVM.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// KVM_GET_API_VERSION's answer: fixed at 12 since the API became stable.
const KVM_API_VERSION: i32 = 12;

/// Opens /dev/kvm, or the device named by `VMM_KVM_DEVICE` (for nested
/// or unusual setups), and checks that it is KVM.
pub fn open_kvm() -> Result<Kvm> {
    let path = std::env::var("VMM_KVM_DEVICE").unwrap_or_else(|_| "/dev/kvm".into());
    let cpath = std::ffi::CString::new(path.clone()).map_err(|_| VmmError::KvmOpen {
        path: path.clone(),
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|source| VmmError::KvmOpen {
        path: path.clone(),
        source,
    })?;
    // Any file opens; only KVM answers this ioctl. kvm-ioctls returns the
    // raw result, so a failure's errno (ENOTTY for /dev/null or a plain
    // file) is read straight after it.
    let version = kvm.get_api_version();
    if version < 0 {
        return Err(VmmError::NotKvm {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    if version != KVM_API_VERSION {
        return Err(VmmError::KvmVersion(version));
    }
    Ok(kvm)
}

impl Vm {
    pub fn new(mem_size: u64) -> Result<Vm> {
        let kvm_handle = open_kvm()?;
        let fd = kvm_handle.create_vm().map_err(kvm("create VM"))?;
        let ranges: Vec<_> = ram_ranges(mem_size)
            .into_iter()
            .map(|(a, s)| (a, s as usize))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)
            .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping lives as long as `mem`, which outlives the VM
            // fd's use of it (both are dropped together with `Vm`).
            unsafe { fd.set_user_memory_region(r) }.map_err(kvm("set memory region"))?;
        }
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(kvm("set TSS address"))?;
        fd.create_irq_chip()
            .map_err(kvm("create in-kernel irqchip"))?;
        Ok(Vm {
            kvm: kvm_handle,
            fd,
            mem,
        })
    }
}
