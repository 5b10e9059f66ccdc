//! A thread: the unit of computation (paper §3.1). Its only state is its
//! processing state: the saved registers (a `TrapFrame` on its own kernel
//! stack) and the FPU area. It runs in its task's address space.

use crate::arch::gdt::{USER_CS, USER_DS};
use crate::arch::kstack::KernelStack;
use crate::arch::trap::TrapFrame;
use alloc::boxed::Box;
use guest_kernel::ipc::PortId;
use guest_kernel::kern::sched::{TaskId, ThreadId};
use guest_kernel::vm::types::ObjectId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Ready,
    Running,
    /// Blocked in task_wait on that task.
    Waiting(TaskId),
    /// Blocked until a memory object's pager answers its initialisation.
    ObjectInit(u32),
    /// Blocked until a device request for it completes; its frames are in
    /// the device's hands meanwhile, so its task's memory cannot go yet.
    Io,
    /// Blocked in mach_msg receive (see `Thread::wait`).
    MsgReceive,
    /// Blocked in mach_msg send on a full port; runs the trap again when
    /// there is room.
    MsgSend,
    /// A page fault (or a system call copying user memory, `syscall`)
    /// waits for a page of `object` in transit; it runs again from the
    /// faulting instruction or the `syscall` once the object changes.
    PageWait {
        object: ObjectId,
        syscall: bool,
    },
    /// A page fault found no free frame; it runs again from the faulting
    /// instruction once pageout's write-backs have freed some
    /// (kernel/vm/default_pager.rs).
    FrameWait,
    /// Stopped in an exception until its handler replies.
    Exception,
    Exited,
}

/// What a thread blocked in mach_msg receive asked for: where a sender
/// that finds it waiting delivers the message (the receiver's own buffer,
/// in its address space), so the receiver needs no second trap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvWait {
    pub buf: u64,
    pub size: u32,
    pub name: u32,
    pub options: u32,
}

/// FXSAVE area.
#[repr(C, align(16))]
pub struct FxArea(pub [u8; 512]);

impl FxArea {
    /// The state a fresh thread starts with: x87 control word 0x37f, MXCSR
    /// 0x1f80 (all exceptions masked), everything else clear.
    pub fn initial() -> Option<Box<FxArea>> {
        let mut a = crate::kern::heap::try_box(FxArea([0; 512])).ok()?;
        a.0[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        a.0[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        Some(a)
    }
}

/// Where a new thread starts in user mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserStart {
    pub rip: u64,
    pub rsp: u64,
    pub rdi: u64,
    pub rsi: u64,
}

pub struct Thread {
    pub id: ThreadId,
    pub task: TaskId,
    pub state: State,
    /// Saved context while not running; the entry code fills it.
    pub frame: *mut TrapFrame,
    /// None once taken by `take_stack` (the thread is ending).
    kstack: Option<KernelStack>,
    pub fx: Box<FxArea>,
    /// thread_suspend count: runnable only at 0.
    pub suspend: u32,
    /// Terminated while a device transfer of its own was in flight (its
    /// frames are the device's until then): it ends at the completion
    /// instead of running again.
    pub doomed: bool,
    /// Its port (a kernel object) and exception port.
    pub port: Option<PortId>,
    pub exception: Option<PortId>,
    /// Tick at which a timed wait ends (0: none).
    pub deadline: u64,
    pub recv: RecvWait,
}

impl Thread {
    /// A thread of `task` that will enter user mode at `start`. None when
    /// the kernel heap cannot hold its stack.
    pub fn new(id: ThreadId, task: TaskId, start: UserStart) -> Option<Thread> {
        let fx = FxArea::initial()?;
        let kstack = KernelStack::new()?;
        let top = kstack.top();
        let frame = (top as *mut TrapFrame).wrapping_sub(1);
        // SAFETY: the top of the fresh kernel stack.
        unsafe {
            frame.write(TrapFrame {
                rip: start.rip,
                cs: USER_CS as u64,
                rflags: 0x202,
                rsp: start.rsp,
                ss: USER_DS as u64,
                rdi: start.rdi,
                rsi: start.rsi,
                ..TrapFrame::default()
            })
        };
        Some(Thread {
            id,
            task,
            state: State::Ready,
            frame,
            kstack: Some(kstack),
            fx,
            suspend: 0,
            doomed: false,
            port: None,
            exception: None,
            deadline: 0,
            recv: RecvWait::default(),
        })
    }

    pub fn kstack_top(&self) -> u64 {
        self.kstack.as_ref().map_or(0, KernelStack::top)
    }

    /// Takes the kernel stack, which must outlive the trap path that ended
    /// the thread (it may be running on it).
    pub fn take_stack(&mut self) -> Option<KernelStack> {
        self.kstack.take()
    }
}
