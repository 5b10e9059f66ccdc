//! The kernel's task table and the switch between tasks: which frame the
//! trap path resumes, plus the CR3, kernel-stack and FPU state that go with
//! it. Policy (round robin) is the library's `RunQueue`.

use crate::arch::cpu::{self, fxrstor, fxsave, outl};
use crate::arch::entry::{KERNEL_RSP, Stack, idle_loop};
use crate::arch::gdt::{self, KERNEL_CS, KERNEL_DS};
use crate::arch::trap::{TrapFrame, exception_name};
use crate::kern::console::{Dec, Hex, IDec};
use crate::kern::task::{LoadError, Remains, State, Task};
use crate::kprint;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use guest_kernel::abi::{ERR_NO_SUCH_TASK, KILLED_BASE, PORT_EXIT};
use guest_kernel::addr::PhysAddr;
use guest_kernel::bootinfo::BootInfo;
use guest_kernel::kern::sched::{RunQueue, TaskId};
use guest_kernel::vm::frame::FrameAllocator;
use spin::Mutex;

pub static KERNEL: Mutex<Option<Kernel>> = Mutex::new(None);

const IDLE_STACK: usize = 16 * 1024;
#[unsafe(link_section = ".stack")]
static mut IDLE_STACK_MEM: Stack<IDLE_STACK> = Stack([0; IDLE_STACK]);

pub struct Kernel {
    pub boot: BootInfo,
    pub frames: FrameAllocator,
    pub kernel_root: PhysAddr,
    /// Boxed so a task never moves: `cur` points into it.
    tasks: BTreeMap<TaskId, Box<Task>>,
    runq: RunQueue,
    /// `None` while idle.
    current: Option<TaskId>,
    /// The running task's record (null while idle, or once it is gone), so
    /// the hot paths (every system call, every wake-up) need no map lookup.
    cur: *mut Task,
    idle_frame: *mut TrapFrame,
    /// Whose FPU state is in the registers (saved only when another task's
    /// is loaded; the kernel itself never touches the FPU).
    fpu_owner: Option<TaskId>,
    /// Whose page tables CR3 holds (`None`: the kernel's own).
    cr3_task: Option<TaskId>,
    next_id: u32,
    pub init: TaskId,
    pub need_resched: bool,
    pub ticks: u64,
    /// Exited tasks whose kernel stack or root might still be in use by the
    /// trap path that killed them; freed on the next kernel entry.
    graveyard: Vec<Remains>,
}

// SAFETY: one CPU; the raw frame pointers point into kernel stacks owned by
// the kernel state itself.
unsafe impl Send for Kernel {}

pub fn power_off(status: u32) -> ! {
    loop {
        outl(PORT_EXIT, status);
    }
}

impl Kernel {
    pub fn new(boot: BootInfo, frames: FrameAllocator, kernel_root: PhysAddr) -> Kernel {
        // Idle runs `idle_loop` in ring 0 on its own stack; its first frame
        // is built by hand, later ones by the CPU when the timer interrupts it.
        // SAFETY: the idle stack is used by nothing else.
        let idle_frame = unsafe {
            let top = (&raw mut IDLE_STACK_MEM) as u64 + IDLE_STACK as u64;
            let f = (top as *mut TrapFrame).wrapping_sub(1);
            f.write(TrapFrame {
                rip: idle_loop as *const () as u64,
                cs: KERNEL_CS as u64,
                rflags: 0x2,
                rsp: top,
                ss: KERNEL_DS as u64,
                ..TrapFrame::default()
            });
            f
        };
        Kernel {
            boot,
            frames,
            kernel_root,
            tasks: BTreeMap::new(),
            runq: RunQueue::new(),
            current: None,
            cur: core::ptr::null_mut(),
            idle_frame,
            fpu_owner: None,
            cr3_task: None,
            next_id: 1,
            init: TaskId(1),
            need_resched: false,
            ticks: 0,
            graveyard: Vec::new(),
        }
    }

    pub fn spawn(
        &mut self,
        name: &[u8],
        args: &[u8],
        parent: Option<TaskId>,
    ) -> Result<TaskId, SpawnError> {
        let module = *self.boot.module(name).ok_or(SpawnError::NoSuchProgram)?;
        let id = TaskId(self.next_id);
        let task = Task::load(
            id,
            parent,
            &module,
            args,
            self.kernel_root,
            &mut self.frames,
        )
        .map_err(SpawnError::Load)?;
        self.next_id += 1;
        self.tasks.insert(id, Box::new(task));
        self.runq.push(id);
        Ok(id)
    }

    pub fn current(&mut self) -> Option<&mut Task> {
        // SAFETY: `cur` is null or points at the boxed record of the running
        // task, cleared before that record is dropped.
        unsafe { self.cur.as_mut() }
    }

    fn remove_task(&mut self, id: TaskId) {
        if self.current == Some(id) {
            self.cur = core::ptr::null_mut();
        }
        self.tasks.remove(&id);
    }

    /// Called first on every kernel entry: remember where the interrupted
    /// context's frame is, and free what exited tasks left behind.
    pub fn enter(&mut self, frame: *mut TrapFrame) {
        match self.current() {
            Some(t) => t.frame = frame,
            None => self.idle_frame = frame,
        }
        if self.graveyard.is_empty() {
            return;
        }
        for r in core::mem::take(&mut self.graveyard) {
            r.release(&mut self.frames);
        }
    }

    /// The running task is done with `status`.
    pub fn exit_current(&mut self, status: i64) {
        let Some(id) = self.current else { return };
        if id == self.init {
            kprint!("init exited with status ", IDec(status), "\n");
            crate::kern::console::lock().flush();
            crate::dev::virtio_pager::shutdown();
            power_off(status as u32);
        }
        // SAFETY: as in `current`; the record stays until `remove_task`
        // below, and only its own fields and the frame allocator are used.
        let Some(t) = (unsafe { self.cur.as_mut() }) else {
            return;
        };
        t.state = State::Exited(status);
        t.release_memory(&mut self.frames);
        let remains = t.take_remains();
        self.graveyard.push(remains);
        if self.fpu_owner == Some(id) {
            self.fpu_owner = None;
        }
        if self.cr3_task == Some(id) {
            // Its tables are freed on the next kernel entry: leave them now.
            // SAFETY: the kernel root maps everything the kernel uses.
            unsafe { cpu::set_cr3(self.kernel_root.0) };
            self.cr3_task = None;
        }
        // Wake whoever waits for it; the first waiter collects the status.
        let waiters: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, w)| w.state == State::Waiting(id))
            .map(|(&w, _)| w)
            .collect();
        for (i, w) in waiters.into_iter().enumerate() {
            let r = if i == 0 { status } else { ERR_NO_SUCH_TASK };
            self.wake_with(w, r);
        }
        if self
            .tasks
            .get(&id)
            .is_some_and(|t| t.state == State::Exited(status))
            && self.collected(id)
        {
            self.remove_task(id);
        }
        // Its own exited children can no longer be waited for.
        self.tasks
            .retain(|_, c| !(c.parent == Some(id) && matches!(c.state, State::Exited(_))));
    }

    fn collected(&self, id: TaskId) -> bool {
        // A task nobody can wait for any more (its parent is gone) is dropped
        // at exit; otherwise the record stays until task_wait collects it.
        let parent = self.tasks.get(&id).and_then(|t| t.parent);
        !parent.is_some_and(|p| {
            self.tasks
                .get(&p)
                .is_some_and(|pt| !matches!(pt.state, State::Exited(_)))
        })
    }

    /// The running task sleeps in `state` until `wake_with`; its system
    /// call result comes from whoever wakes it.
    pub fn block_current(&mut self, state: State) {
        if let Some(t) = self.current() {
            t.state = state;
        }
    }

    /// Wakes every task blocked in `state`, each with `result`.
    pub fn wake_all(&mut self, state: State, result: i64) {
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state == state)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.wake_with(id, result);
        }
    }

    /// Makes a blocked task runnable with `result` as its system call's.
    /// Does nothing to a task that is not blocked (a stale completion).
    pub fn wake_with(&mut self, id: TaskId, result: i64) {
        if let Some(t) = self.tasks.get_mut(&id) {
            if matches!(t.state, State::Ready | State::Running | State::Exited(_)) {
                return;
            }
            // SAFETY: a blocked task's frame is valid until it runs again.
            unsafe { (*t.frame).rax = result as u64 };
            t.state = State::Ready;
            self.runq.push(id);
        }
    }

    /// An exception in user mode kills the task, and the kernel goes on.
    pub fn kill_current(&mut self, vector: u64, error: u64, rip: u64, cr2: u64) {
        let Some(t) = self.current() else { return };
        let (id, name) = (t.id, t.name());
        if vector == 14 {
            kprint!(
                "task ",
                Dec(id.0 as u64),
                " (",
                name,
                ") killed: page fault at ",
                Hex(cr2),
                " (error ",
                Hex(error),
                ", rip ",
                Hex(rip),
                ")\n"
            );
        } else {
            kprint!(
                "task ",
                Dec(id.0 as u64),
                " (",
                name,
                ") killed: ",
                exception_name(vector),
                " (vector ",
                Dec(vector),
                ", error ",
                Hex(error),
                ", rip ",
                Hex(rip),
                ")\n"
            );
        }
        self.exit_current(KILLED_BASE + vector as i64);
    }

    /// task_wait: `Some(status)` now, or `None` after blocking the caller.
    pub fn wait(&mut self, target: TaskId) -> Result<Option<i64>, i64> {
        let me = self.current.ok_or(ERR_NO_SUCH_TASK)?;
        let t = self.tasks.get(&target).ok_or(ERR_NO_SUCH_TASK)?;
        if t.parent != Some(me) {
            return Err(ERR_NO_SUCH_TASK);
        }
        if let State::Exited(s) = t.state {
            self.remove_task(target);
            return Ok(Some(s));
        }
        if let Some(t) = self.current() {
            t.state = State::Waiting(target);
        }
        Ok(None)
    }

    /// Picks what runs next and returns the frame to resume.
    pub fn schedule(&mut self) -> *mut TrapFrame {
        let cur_running = self.current().is_some_and(|t| t.state == State::Running);
        if cur_running && !self.need_resched {
            let idle = self.idle_frame;
            return self.current().map_or(idle, |t| t.frame);
        }
        self.need_resched = false;
        if cur_running && let Some(t) = self.current() {
            t.state = State::Ready;
            let id = t.id;
            self.runq.push(id);
        }
        let next = loop {
            let Some(id) = self.runq.pop() else {
                break None;
            };
            if let Some(t) = self.tasks.get_mut(&id)
                && t.state == State::Ready
            {
                break Some(&mut **t as *mut Task);
            }
        };
        self.switch_to(next)
    }

    /// `next` points at a record in `tasks` (one lookup, in `schedule`).
    fn switch_to(&mut self, next: Option<*mut Task>) -> *mut TrapFrame {
        // SAFETY: `next` was just taken from the task table.
        let next = next.and_then(|p| unsafe { p.as_mut() });
        self.current = next.as_ref().map(|t| t.id);
        self.cur = core::ptr::null_mut();
        let Some(t) = next else {
            // Idle runs on whatever address space is loaded (the kernel
            // half is in all of them; a dead task's was left at its exit),
            // so a task that blocks and is woken costs no CR3 reload.
            return self.idle_frame;
        };
        let id = t.id;
        if self.fpu_owner != Some(id) {
            if let Some(owner) = self.fpu_owner.and_then(|o| self.tasks.get_mut(&o)) {
                // SAFETY: a 16-byte aligned 512-byte area owned by the task.
                unsafe { fxsave(owner.fx.0.as_mut_ptr()) };
            }
            // SAFETY: the task's saved (or initial) FXSAVE image.
            unsafe { fxrstor(t.fx.0.as_ptr()) };
            self.fpu_owner = Some(id);
        }
        self.cur = &mut *t;
        t.state = State::Running;
        let top = t.kstack_top();
        gdt::set_kernel_stack(top);
        // SAFETY: read by the syscall entry only while this task runs.
        unsafe { KERNEL_RSP = top };
        if self.cr3_task != Some(id) {
            // SAFETY: the task's root maps the kernel half like every root.
            unsafe { cpu::set_cr3(t.root.0) };
            self.cr3_task = Some(id);
        }
        t.frame
    }
}

#[derive(Debug)]
pub enum SpawnError {
    NoSuchProgram,
    Load(LoadError),
}
