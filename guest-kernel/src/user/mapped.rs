//! A host object found by name and mapped into this task: how `sum`,
//! `fill` and `cat` reach one. The name server (this task's bootstrap
//! port) gives the object's memory object port; vm_map_pager maps it, so
//! every access to the mapping is served by page faults, each absent page
//! a data_request to the host's pager through the virtio-pager device.

use libmach::abi::{self, KERN_INVALID_NAME, KERN_PROTECTION_FAILURE};
use libmach::name_server;
use libmach::rpc::RpcError;
use libmach::traps::{self, KernError};
use libmach::vm;

pub struct Mapped {
    /// The memory object (our send right).
    port: abi::Name,
    task: abi::Name,
    at: u64,
    pub size: u64,
}

/// Why an object could not be mapped, as a user should read it.
pub fn explain(e: KernError) -> &'static str {
    match e.0 {
        KERN_INVALID_NAME => "no such object (not published by the name server)",
        KERN_PROTECTION_FAILURE => "the object is read-only: it cannot be mapped writable",
        _ => e.name(),
    }
}

fn rpc_error(e: RpcError) -> KernError {
    match e {
        RpcError::Kern(k) => k,
        _ => KernError(abi::KERN_FAILURE),
    }
}

// Shared by sum, fill and cat: each uses the accessors it needs.
#[allow(dead_code)]
impl Mapped {
    /// Looks `name` up and maps the whole object, writable or not. An
    /// empty object has nothing to map (`bytes` is empty).
    pub fn open(name: &[u8], writable: bool) -> Result<Mapped, KernError> {
        let mut ns = name_server::bootstrap()?;
        let port = ns.look_up(name).map_err(rpc_error)?;
        let mapped = Self::map(port, writable);
        if mapped.is_err() {
            let _ = traps::port_deallocate(port);
        }
        mapped
    }

    fn map(port: abi::Name, writable: bool) -> Result<Mapped, KernError> {
        let info = vm::host_object_info(port)?;
        let task = traps::task_self()?;
        let mut at = 0;
        if info.size > 0 {
            let prot = if writable {
                abi::VM_PROT_DEFAULT
            } else {
                abi::VM_PROT_READ
            };
            vm::vm_map_pager(task, &mut at, info.size, true, prot, port, 0)?;
        }
        Ok(Mapped {
            port,
            task,
            at,
            size: info.size,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        if self.size == 0 {
            return &[];
        }
        // SAFETY: the kernel mapped `size` bytes of the object at `at`,
        // ours until `close`.
        unsafe { core::slice::from_raw_parts(self.at as *const u8, self.size as usize) }
    }

    /// The mapping's bytes, writable; faults if it was mapped read-only.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        if self.size == 0 {
            return &mut [];
        }
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe { core::slice::from_raw_parts_mut(self.at as *mut u8, self.size as usize) }
    }

    /// Unmaps the object: its last mapping gone, the kernel writes its
    /// modified pages back to the host's pager.
    pub fn close(self) -> Result<(), KernError> {
        if self.size > 0 {
            vm::vm_deallocate(self.task, self.at, self.size)?;
        }
        traps::port_deallocate(self.port)
    }
}
