//! GDT and TSS. Selector values are fixed by the syscall MSR layout:
//! STAR expects user data at +8 and user code at +16 from its base.

use crate::arch::kstack;
use core::arch::asm;
use core::mem::size_of;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

/// IST slots (1-based as the IDT counts them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

#[repr(C, packed(4))]
pub struct Tss {
    _r0: u32,
    pub rsp0: u64,
    _rsp12: [u64; 2],
    _r1: u64,
    pub ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    iomap_base: u16,
}

static mut TSS: Tss = Tss {
    _r0: 0,
    rsp0: 0,
    _rsp12: [0; 2],
    _r1: 0,
    ist: [0; 7],
    _r2: 0,
    _r3: 0,
    iomap_base: size_of::<Tss>() as u16,
};

static mut GDT: [u64; 7] = [
    0,
    0x00af_9a00_0000_ffff, // kernel code, 64-bit
    0x00cf_9200_0000_ffff, // kernel data
    0x00cf_f200_0000_ffff, // user data
    0x00af_fa00_0000_ffff, // user code, 64-bit
    0,                     // TSS (two slots)
    0,
];

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

pub fn init() {
    // SAFETY: runs once at boot, before anything else uses the GDT/TSS.
    unsafe {
        for i in 0..3 {
            TSS.ist[i] = kstack::ist_top(i);
        }
        let base = &raw const TSS as u64;
        let limit = size_of::<Tss>() as u64 - 1;
        GDT[5] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit TSS available
            | ((base >> 24) & 0xff) << 56;
        GDT[6] = base >> 32;
        let ptr = Pointer {
            limit: (size_of::<[u64; 7]>() - 1) as u16,
            base: &raw const GDT as u64,
        };
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = const KERNEL_CS as u64,
            tmp = out(reg) _,
            ds = in(reg) KERNEL_DS as u64,
            tss = in(reg) TSS_SEL as u64,
        );
    }
}

/// The stack the CPU switches to on an interrupt or exception from ring 3.
pub fn set_kernel_stack(top: u64) {
    // SAFETY: single CPU with interrupts off in the kernel; the TSS is only
    // read by the CPU at the next ring 3 → ring 0 transition.
    unsafe { TSS.rsp0 = top };
}
