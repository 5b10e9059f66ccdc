//! The boot vCPU's state, for either entry: PVH (32-bit protected mode,
//! paging off, ebx = start_info, as the PVH spec says) or direct 64-bit
//! (long mode on the VMM's boot page tables, rsi = start_info). CPUID as
//! KVM supports it.

use super::layout::{GDT, PML4, START_INFO};
use crate::error::{Result, VmmError, kvm};
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2, kvm_fpu, kvm_regs, kvm_segment,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestMemoryMmap};

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Null, 64-bit code (0x08), data (0x10): what the kernel expects at entry.
const BOOT_GDT: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];

/// Where and how the vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// PVH: 32-bit physical entry from the ELF note.
    Pvh32(u64),
    /// 64-bit virtual entry (ELF e_entry) with the boot page tables.
    Long64(u64),
}

/// The hypervisor CPUID range's timing leaf (as VMware and QEMU's
/// `vmware-cpuid-freq` define it): EAX the TSC's rate in kHz, EBX the
/// local APIC timer's (0: not stated).
pub const TIMING_LEAF: u32 = 0x4000_0010;
const HYPERVISOR_BASE: u32 = 0x4000_0000;

/// Adds the timing leaf with `khz` to `cpuid`, and raises the hypervisor
/// range's highest leaf to it. Left as it is if the range is absent (no
/// KVM signature to extend), `khz` is 0 or the table is full: the guest
/// then measures the rate itself.
pub fn state_tsc_khz(cpuid: &mut CpuId, khz: u32) {
    let has = |cpuid: &CpuId, f: u32| cpuid.as_slice().iter().any(|e| e.function == f);
    if khz == 0 || !has(cpuid, HYPERVISOR_BASE) {
        return;
    }
    if !has(cpuid, TIMING_LEAF) && cpuid.push(timing_leaf(khz)).is_err() {
        return;
    }
    for e in cpuid.as_mut_slice() {
        match e.function {
            HYPERVISOR_BASE => e.eax = e.eax.max(TIMING_LEAF),
            TIMING_LEAF => *e = timing_leaf(khz),
            _ => {}
        }
    }
}

fn timing_leaf(khz: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: TIMING_LEAF,
        eax: khz,
        ..Default::default()
    }
}

fn segment(selector: u16, code: bool, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: if code && long { 0 } else { 1 },
        s: 1,
        l: if code && long { 1 } else { 0 },
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

pub fn setup(kvm_handle: &Kvm, vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: Entry) -> Result<()> {
    let long = matches!(entry, Entry::Long64(_));
    let mut cpuid = kvm_handle
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("get supported CPUID"))?;
    // The guest's TSC rate, so the kernel's time bounds (a fault's spin,
    // the pager-event budget) need no calibration against its own timer,
    // whose ticks arrive late where ring 0 is emulated. Without it the
    // kernel falls back to measuring.
    if let Ok(khz) = vcpu.get_tsc_khz() {
        state_tsc_khz(&mut cpuid, khz);
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;

    let gdt: Vec<u8> = BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt, GDT)
        .map_err(|e| VmmError::Boot(format!("GDT: {e}")))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm("get sregs"))?;
    sregs.gdt.base = GDT.0;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment(0x08, true, long);
    let data = segment(0x10, false, long);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    if long {
        sregs.cr3 = PML4.0;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    } else {
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.cr0 = CR0_PE | CR0_ET;
        sregs.efer = 0;
    }
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set FPU"))?;

    let regs = match entry {
        Entry::Long64(rip) => kvm_regs {
            rip,
            rsi: START_INFO.0,
            rflags: 0x2,
            ..Default::default()
        },
        Entry::Pvh32(rip) => kvm_regs {
            rip,
            rbx: START_INFO.0,
            rflags: 0x2,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(kvm("set regs"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ..Default::default()
        }
    }

    fn table(leaves: &[kvm_cpuid_entry2]) -> CpuId {
        CpuId::from_entries(leaves).unwrap()
    }

    fn eax(cpuid: &CpuId, function: u32) -> Option<u32> {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function)
            .map(|e| e.eax)
    }

    #[test]
    fn the_timing_leaf_is_added_and_the_range_raised_to_it() {
        let mut c = table(&[leaf(0, 0xd), leaf(HYPERVISOR_BASE, 0x4000_0001)]);
        state_tsc_khz(&mut c, 2_100_000);
        assert_eq!(eax(&c, TIMING_LEAF), Some(2_100_000));
        assert_eq!(eax(&c, HYPERVISOR_BASE), Some(TIMING_LEAF));
        assert_eq!(c.as_slice().len(), 3);
    }

    #[test]
    fn an_existing_timing_leaf_is_replaced_not_doubled() {
        let mut c = table(&[leaf(HYPERVISOR_BASE, 0x4000_0010), leaf(TIMING_LEAF, 5)]);
        state_tsc_khz(&mut c, 1_000_000);
        assert_eq!(eax(&c, TIMING_LEAF), Some(1_000_000));
        assert_eq!(c.as_slice().len(), 2);
    }

    #[test]
    fn nothing_is_stated_without_a_hypervisor_range_or_a_rate() {
        let mut c = table(&[leaf(0, 0xd)]);
        state_tsc_khz(&mut c, 2_100_000);
        assert_eq!(eax(&c, TIMING_LEAF), None);
        let mut c = table(&[leaf(HYPERVISOR_BASE, 0x4000_0001)]);
        state_tsc_khz(&mut c, 0);
        assert_eq!(eax(&c, TIMING_LEAF), None);
        assert_eq!(eax(&c, HYPERVISOR_BASE), Some(0x4000_0001));
    }
}
