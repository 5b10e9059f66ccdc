//! The kernel's only assembly: boot entry, trap entry stubs, the system
//! call entry, and the common save/restore path. Every entry builds the
//! same `TrapFrame` on the current task's kernel stack and calls
//! `trap::dispatch`, which returns the frame to resume (maybe another
//! task's): that return value is the whole context switch.

use crate::arch::kstack::{BOOT_STACK, BOOT_STACK_SIZE, GUARD_SIZE};
use crate::arch::trap::{SYSCALL_VECTOR, dispatch};
use core::arch::global_asm;

/// The kernel stack top of the running task; the syscall entry switches to
/// it. (Per-CPU once there is more than one CPU.)
#[unsafe(no_mangle)]
pub static mut KERNEL_RSP: u64 = 0;
/// Scratch for the user stack pointer during the syscall entry.
#[unsafe(no_mangle)]
pub static mut SYSCALL_USER_RSP: u64 = 0;

unsafe extern "C" {
    /// Start of the entry stub for vector `v` is `TRAP_STUBS[v]`.
    pub static TRAP_STUBS: [u64; 34];
    pub fn spurious_stub();
    pub fn syscall_entry();
    /// Resumes the frame at `rsp` (restores registers, iretq).
    pub fn trap_return(frame: u64) -> !;
    pub fn idle_loop() -> !;
}

// Boot. The VMM enters in 64-bit mode with paging on (identity map of low
// memory plus the kernel's higher-half mapping), rsi = physical address of
// the PVH start_info.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    lea rsp, [rip + {stack} + {guard} + {stack_size}]
    mov rdi, rsi
    xor ebp, ebp
    call {kmain}
    ud2
    "#,
    stack = sym BOOT_STACK,
    guard = const GUARD_SIZE,
    stack_size = const BOOT_STACK_SIZE,
    kmain = sym crate::kmain,
);

// PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): any PVH loader may start the kernel
// here in 32-bit protected mode, paging off, ebx = start_info. Switch to
// long mode on static page tables (identity and direct map of the first
// GiB, the image at KERNEL_BASE), then join the 64-bit entry. The tables are
// initialised data, so this path runs no loops in ring 0. The `*_phys`
// symbols are defined in kernel.ld (link address minus KERNEL_BASE).
global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start32_phys

    .section .text.entry, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    mov esi, ebx
    lgdt [pvh_gdt_ptr_phys]
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    mov eax, offset pvh_pml4_phys
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x900
    wrmsr
    mov eax, cr0
    or eax, 0x80010023
    mov cr0, eax
    .byte 0xea
    .long pvh_start64_phys
    .word 0x08
    .code64
    .global pvh_start64
pvh_start64:
    mov esi, esi
    movabs rax, offset _start
    jmp rax

    .section .data.pvh, "aw"
    .balign 4096
    .global pvh_pml4
pvh_pml4:
    .quad pvh_pdpt_low_phys + 3
    .fill 255, 8, 0
    .quad pvh_pdpt_low_phys + 3
    .fill 254, 8, 0
    .quad pvh_pdpt_kernel_phys + 3
    .global pvh_pdpt_low
pvh_pdpt_low:
    .quad pvh_pd_phys + 3
    .fill 511, 8, 0
    .global pvh_pdpt_kernel
pvh_pdpt_kernel:
    .fill 510, 8, 0
    .quad pvh_pd_phys + 3
    .fill 1, 8, 0
    .global pvh_pd
pvh_pd:
    .set pvh_i, 0
    .rept 512
    .quad (pvh_i << 21) | 0x83
    .set pvh_i, pvh_i + 1
    .endr
    .balign 8
    .global pvh_gdt
pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .global pvh_gdt_ptr
pvh_gdt_ptr:
    .word 23
    .long pvh_gdt_phys
    "#
);

// Exception and interrupt stubs: push a zero error code where the CPU does
// not push one, then the vector, and join the common path.
global_asm!(
    r#"
    .section .text
    .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31,32,33
trap_stub_\v:
    push 0
    push \v
    jmp trap_common
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
trap_stub_\v:
    push \v
    jmp trap_common
    .endr

    .global spurious_stub
spurious_stub:
    push 0
    push 255
    jmp trap_common

    .section .rodata
    .balign 8
    .global TRAP_STUBS
TRAP_STUBS:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33
    .quad trap_stub_\v
    .endr

    .section .text
    // Hardware syscall: rcx = user rip, r11 = user rflags, still on the user
    // stack. Build an interrupt-shaped frame on the kernel stack.
    .global syscall_entry
syscall_entry:
    mov [rip + SYSCALL_USER_RSP], rsp
    mov rsp, [rip + KERNEL_RSP]
    push 0x1b
    push qword ptr [rip + SYSCALL_USER_RSP]
    push r11
    push 0x23
    push rcx
    push 0
    push {syscall_vector}

trap_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call {dispatch}
    mov rdi, rax

    .global trap_return
trap_return:
    mov rsp, rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq

    // Runs in ring 0 with interrupts on when nothing else can run.
    .global idle_loop
idle_loop:
    sti
    hlt
    jmp idle_loop
    "#,
    syscall_vector = const SYSCALL_VECTOR,
    dispatch = sym dispatch,
);
