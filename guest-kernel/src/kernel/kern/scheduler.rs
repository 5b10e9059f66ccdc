//! The kernel's task and thread tables and the switch between threads:
//! which frame the trap path resumes, plus the CR3, kernel-stack and FPU
//! state that go with it. Policy (round robin) is the library's `RunQueue`.
//!
//! A thread that waits blocks in a `State`; whoever ends the wait writes the
//! system call's result into its saved frame (`wake_with`) and makes it
//! runnable.

use crate::arch::cpu::{self, fxrstor, fxsave, outl};
use crate::arch::entry::{KERNEL_RSP, idle_loop};
use crate::arch::gdt::{self, KERNEL_CS, KERNEL_DS};
use crate::arch::kstack::KernelStack;
use crate::arch::trap::{TrapFrame, exception_name};
use crate::kern::console::{Dec, Hex, IDec};
use crate::kern::heap::try_box;
use crate::kern::task::{LoadError, MAX_THREADS, Remains, Task};
use crate::kern::thread::{State, Thread, UserStart};
use crate::kprint;
use crate::vm::Parts;
use crate::vm::machine::Vm;
use crate::vm::pager::HostPaging;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use guest_kernel::abi::{ERR_NO_SUCH_TASK, KILLED_BASE, PORT_EXIT};
use guest_kernel::addr::PhysAddr;
use guest_kernel::bootinfo::BootInfo;
use guest_kernel::ipc::{Effects, Ipc, KObject, Limits, Waiter};
use guest_kernel::kern::sched::{RunQueue, TaskId, ThreadId};
use guest_kernel::vm::frame::FrameAllocator;
use guest_kernel::vm::types::ObjectId;
use libmach::abi::KERN_FAILURE;
use spin::Mutex;

pub static KERNEL: Mutex<Option<Kernel>> = Mutex::new(None);

/// Tasks alive at once (docs/mach-ipc.md §6).
pub const MAX_TASKS: usize = 64;

pub struct Kernel {
    pub boot: BootInfo,
    pub frames: FrameAllocator,
    pub kernel_root: PhysAddr,
    /// Every port and name space (the rules are guest_kernel::ipc).
    pub ipc: Ipc,
    /// The VM's objects, resident pages and reverse maps (guest_kernel::vm).
    pub vm: Vm,
    /// Page transfers with the virtio-pager device (kernel/vm/pager.rs).
    pub paging: HostPaging,
    /// Objects whose pagers are guest tasks (kernel/vm/user_pager.rs).
    pub user_pagers: crate::vm::user_pager::UserPagers,
    tasks: BTreeMap<TaskId, Box<Task>>,
    /// The task `ipc_and_vm` last found, so the fault path (every user
    /// page fault asks for its task's map) costs no tree search: the
    /// record is boxed, so it never moves; cleared wherever a task record
    /// may be dropped (`forget_task`, the insert in `spawn`, the `retain`
    /// that collects orphans).
    task_hint: Option<(TaskId, *mut Task)>,
    /// Boxed so a thread never moves: `cur` points into it.
    threads: BTreeMap<ThreadId, Box<Thread>>,
    runq: RunQueue,
    /// `None` while idle.
    current: Option<ThreadId>,
    /// The running thread's record (null while idle, or once it is gone),
    /// so the hot paths (every system call, every wake-up) need no lookup.
    cur: *mut Thread,
    /// The page-table root CR3 holds: the running thread's task's (kept in
    /// step with every CR3 load, so the VM needs no lookup to know it).
    cur_root: PhysAddr,
    idle_frame: *mut TrapFrame,
    /// Whose FPU state is in the registers (saved only when another
    /// thread's is loaded; the kernel itself never touches the FPU).
    fpu_owner: Option<ThreadId>,
    /// Whose page tables CR3 holds (`None`: the kernel's own).
    cr3_task: Option<TaskId>,
    next_task: u32,
    next_thread: u32,
    pub init: TaskId,
    pub need_resched: bool,
    pub ticks: u64,
    /// What exited threads and tasks leave that the trap path ending them
    /// may still be running on; freed on the next kernel entry.
    graveyard: Vec<(Option<KernelStack>, Option<Remains>)>,
    /// Timed waits, soonest first: (deadline tick, thread). At most one per
    /// thread, so bounded by the thread count.
    timeouts: Vec<(u64, ThreadId)>,
    /// A thread to run next without a trip through the run queue (an RPC
    /// hand-off from sender to receiver).
    handoff: Option<ThreadId>,
    /// Some thread may be in `State::PageWait` (set when one blocks so,
    /// cleared by a scan that finds none left): every finished page
    /// transfer asks, and most find no one waiting.
    page_waiters: bool,
    /// Calls of `wake_page_waiters`, counted whether anyone waited: a fault
    /// that looks for its answer before it sleeps compares it.
    page_wakes: u64,
    pub timer_hz: u64,
    /// The TSC's rate, from the timer ticks.
    pub tsc: crate::kern::clock::TscRate,
    /// Print the VM's statistics when init exits (`vm_stats=1`, which
    /// `vmm run --stats` passes).
    pub report_vm_stats: bool,
    /// An empty wake list keeping its capacity, so the IPC hot path's
    /// `Effects` need no heap allocation per message (ipc::effects).
    pub fx_spare: Vec<(guest_kernel::ipc::Waiter, guest_kernel::ipc::Wake)>,
}

// SAFETY: one CPU; the raw frame pointers point into kernel stacks owned by
// the kernel state itself.
unsafe impl Send for Kernel {}

pub fn power_off(status: u32) -> ! {
    loop {
        outl(PORT_EXIT, status);
    }
}

#[derive(Debug)]
pub enum SpawnError {
    NoSuchProgram,
    Load(LoadError),
    /// The task or thread bound is reached, or the heap is full.
    NoResources,
}

impl Kernel {
    pub fn new(
        boot: BootInfo,
        frames: FrameAllocator,
        kernel_root: PhysAddr,
        heap_bytes: u64,
    ) -> Kernel {
        // Idle runs `idle_loop` in ring 0 on its own stack; its first frame
        // is built by hand, later ones by the CPU when an interrupt comes.
        // SAFETY: the idle stack is used by nothing else.
        let idle_frame = unsafe {
            let top = crate::arch::kstack::idle_top();
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
        // Queued messages and the out-of-line data copied for them live in
        // the kernel heap: each may take a quarter of it. Out-of-line data
        // mapped copy-on-write is not heap (it is pages the sender made),
        // so only the copied part is sized from the heap.
        let quarter = (heap_bytes / 4) as usize;
        let limits = Limits {
            kmsg_bytes_total: quarter,
            ool_copied_total: quarter as u64,
            ool_copied_per_space: (quarter as u64).min(Limits::default().ool_copied_per_space),
            spaces_total: MAX_TASKS as u32,
            ..Limits::default()
        };
        let vm = Vm::new(frames.total_frames(), heap_bytes);
        Kernel {
            boot,
            vm,
            paging: HostPaging::default(),
            user_pagers: Default::default(),
            frames,
            kernel_root,
            ipc: Ipc::new(limits),
            tasks: BTreeMap::new(),
            task_hint: None,
            threads: BTreeMap::new(),
            runq: RunQueue::new(),
            current: None,
            cur: core::ptr::null_mut(),
            cur_root: kernel_root,
            idle_frame,
            fpu_owner: None,
            cr3_task: None,
            next_task: 1,
            next_thread: 1,
            init: TaskId(1),
            need_resched: false,
            ticks: 0,
            graveyard: Vec::new(),
            timeouts: Vec::new(),
            handoff: None,
            page_waiters: false,
            page_wakes: 0,
            timer_hz: 100,
            tsc: Default::default(),
            report_vm_stats: false,
            fx_spare: Vec::new(),
        }
    }

    /// Ticks covering `ms` milliseconds, at least one.
    pub fn ticks_for_ms(&self, ms: u64) -> u64 {
        ms.saturating_mul(self.timer_hz).div_ceil(1000).max(1)
    }

    /// Ends the current thread's wait at `ticks_from_now` ticks from now
    /// (`timed_out` is called then unless the wait ended first). False if
    /// the timeout list cannot grow (the caller fails the call).
    pub fn set_timeout(&mut self, ticks_from_now: u64) -> bool {
        let Some(id) = self.current else {
            return false;
        };
        let at = self.ticks.saturating_add(ticks_from_now);
        if self.timeouts.try_reserve(1).is_err() {
            return false;
        }
        let pos = self.timeouts.partition_point(|&(t, _)| t <= at);
        self.timeouts.insert(pos, (at, id));
        if let Some(t) = self.current() {
            t.deadline = at;
        }
        true
    }

    /// Forgets `id`'s timed wait (it ended some other way).
    pub fn clear_timeout(&mut self, id: ThreadId) {
        if let Some(t) = self.threads.get_mut(&id) {
            if t.deadline == 0 {
                return;
            }
            t.deadline = 0;
        }
        self.timeouts.retain(|&(_, x)| x != id);
    }

    /// Timer tick: the threads whose timed wait is over, removed from the
    /// list (the caller ends their waits).
    pub fn expired(&mut self, out: &mut Vec<ThreadId>) {
        let n = self.timeouts.partition_point(|&(t, _)| t <= self.ticks);
        if n == 0 || out.try_reserve(n).is_err() {
            return;
        }
        for (_, id) in self.timeouts.drain(..n) {
            if let Some(t) = self.threads.get_mut(&id) {
                t.deadline = 0;
            }
            out.push(id);
        }
    }

    /// Runs `id` next, before anything in the run queue.
    pub fn hand_off(&mut self, id: ThreadId) {
        self.handoff = Some(id);
        self.need_resched = true;
    }

    pub fn thread(&mut self, id: ThreadId) -> Option<&mut Thread> {
        self.threads.get_mut(&id).map(|t| &mut **t)
    }

    pub fn thread_state(&self, id: ThreadId) -> Option<State> {
        self.threads.get(&id).map(|t| t.state)
    }

    /// thread_suspend: the thread stops running (at once if it is ready;
    /// after its wait if it is blocked) until as many resumes.
    pub fn suspend(&mut self, id: ThreadId) -> bool {
        let Some(t) = self.threads.get_mut(&id) else {
            return false;
        };
        t.suspend = t.suspend.saturating_add(1);
        if t.state == State::Running {
            self.need_resched = true;
        }
        self.runq.remove(id);
        true
    }

    /// thread_resume. False if it was not suspended.
    pub fn resume(&mut self, id: ThreadId) -> bool {
        let Some(t) = self.threads.get_mut(&id) else {
            return false;
        };
        if t.suspend == 0 || t.doomed {
            return false;
        }
        t.suspend -= 1;
        if t.suspend == 0 && t.state == State::Ready {
            self.runq.push(id);
        }
        true
    }

    /// Threads of a task (for task_suspend / task_resume / task ports).
    pub fn task_threads(&self, id: TaskId) -> &[ThreadId] {
        self.tasks.get(&id).map_or(&[], |t| &t.threads[..])
    }

    /// Starts the built-in program `name` as a new task with one thread.
    pub fn spawn(
        &mut self,
        name: &[u8],
        args: &[u8],
        parent: Option<TaskId>,
        inherit_memory: bool,
    ) -> Result<TaskId, SpawnError> {
        let module = *self.boot.module(name).ok_or(SpawnError::NoSuchProgram)?;
        if self.tasks.len() >= MAX_TASKS {
            return Err(SpawnError::NoResources);
        }
        let id = TaskId(self.next_task);
        let (task, start) = Task::load(parent, &module, args, self.kernel_root, &mut self.frames)
            .map_err(SpawnError::Load)?;
        let task = match try_box(task) {
            Ok(t) => t,
            Err(mut task) => {
                self.destroy_address_space(&mut task);
                return Err(SpawnError::NoResources);
            }
        };
        self.next_task += 1;
        // An insert over a record (an id reused) would drop it.
        self.task_hint = None;
        self.tasks.insert(id, task);
        let ports = self.make_task_ports(id, parent);
        let memory = match parent {
            Some(p) if inherit_memory => self.inherit_memory(id, p),
            _ => Ok(()),
        };
        if ports.is_err() || memory.is_err() || self.create_thread(id, start).is_err() {
            let mut fx = Effects::default();
            self.drop_task_ports(id, &mut fx);
            if let Some(mut t) = self.forget_task(id) {
                self.destroy_address_space(&mut t);
            }
            crate::ipc::apply(self, fx);
            return Err(SpawnError::NoResources);
        }
        Ok(id)
    }

    /// A new task's name space and port; its bootstrap port is its
    /// parent's (as in Mach), so a child can find the name server at once.
    fn make_task_ports(&mut self, id: TaskId, parent: Option<TaskId>) -> Result<(), u32> {
        let space = self.ipc.space_create()?;
        let bootstrap = parent
            .and_then(|p| self.tasks.get(&p))
            .and_then(|p| p.bootstrap);
        let port = self.ipc.kernel_port(KObject::Task(id.0));
        let t = self.tasks.get_mut(&id).ok_or(KERN_FAILURE)?;
        t.space = Some(space);
        t.bootstrap = bootstrap;
        t.port = Some(port?);
        Ok(())
    }

    /// The task's name space and port go: its receive rights die (their
    /// holders get dead names and notifications), and so does its port.
    fn drop_task_ports(&mut self, id: TaskId, fx: &mut Effects) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let (space, port) = (t.space.take(), t.port.take());
        t.bootstrap = None;
        t.exception = None;
        if let Some(s) = space {
            self.ipc.space_destroy(s, fx);
        }
        if let Some(p) = port {
            self.ipc.destroy_kernel_port(p, fx);
        }
    }

    /// A new runnable thread in `task`, starting at `start`.
    pub fn create_thread(
        &mut self,
        task: TaskId,
        start: UserStart,
    ) -> Result<ThreadId, SpawnError> {
        let t = self.tasks.get_mut(&task).ok_or(SpawnError::NoResources)?;
        if t.exited.is_some() || t.threads.len() >= MAX_THREADS {
            return Err(SpawnError::NoResources);
        }
        t.threads
            .try_reserve(1)
            .map_err(|_| SpawnError::NoResources)?;
        let id = ThreadId(self.next_thread);
        let mut th = Thread::new(id, task, start).ok_or(SpawnError::NoResources)?;
        th.port = Some(
            self.ipc
                .kernel_port(KObject::Thread(id.0))
                .map_err(|_| SpawnError::NoResources)?,
        );
        let th = match try_box(th) {
            Ok(th) => th,
            Err(mut th) => {
                let mut fx = Effects::default();
                if let Some(p) = th.port.take() {
                    self.ipc.destroy_kernel_port(p, &mut fx);
                }
                crate::ipc::apply(self, fx);
                return Err(SpawnError::NoResources);
            }
        };
        self.next_thread += 1;
        let Some(t) = self.tasks.get_mut(&task) else {
            return Err(SpawnError::NoResources);
        };
        t.threads.push(id);
        self.threads.insert(id, th);
        self.runq.push(id);
        Ok(id)
    }

    /// Drops task `id`'s record (and the lookup hint that may name it).
    fn forget_task(&mut self, id: TaskId) -> Option<Box<Task>> {
        self.task_hint = None;
        self.tasks.remove(&id)
    }

    /// The running thread.
    pub fn current(&mut self) -> Option<&mut Thread> {
        // SAFETY: `cur` is null or points at the boxed record of the running
        // thread, cleared before that record is dropped.
        unsafe { self.cur.as_mut() }
    }

    pub fn current_thread(&self) -> Option<ThreadId> {
        self.current
    }

    /// The running thread's task and its page-table root.
    pub fn current_task(&mut self) -> Option<(TaskId, PhysAddr)> {
        let task = self.current()?.task;
        Some((task, self.cur_root))
    }

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id).map(|t| &**t)
    }

    pub fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(&id).map(|t| &mut **t)
    }

    /// A blocked thread runs its system call again (a sender that now has
    /// room): back to the `syscall` instruction, rax still its number.
    pub fn restart_syscall(&mut self, id: ThreadId) {
        let Some(t) = self.threads.get_mut(&id) else {
            return;
        };
        // SAFETY: a blocked thread's frame is valid until it runs again.
        unsafe { (*t.frame).rip = (*t.frame).rip.wrapping_sub(2) };
        self.make_ready(id);
    }

    /// A thread stopped in an exception goes on (at the faulting
    /// instruction, or wherever its handler set it).
    pub fn resume_excepted(&mut self, id: ThreadId) {
        self.make_ready(id);
    }

    fn make_ready(&mut self, id: ThreadId) {
        let Some(t) = self.threads.get_mut(&id) else {
            return;
        };
        if matches!(t.state, State::Ready | State::Running | State::Exited) {
            return;
        }
        t.state = State::Ready;
        let (suspended, timed) = (t.suspend > 0, t.deadline != 0);
        if timed {
            self.clear_timeout(id);
        }
        if !suspended {
            self.runq.push(id);
        }
    }

    /// thread_terminate: the thread ends (its task with it, if it was the
    /// last). A thread in device I/O ends when the request completes.
    pub fn terminate_thread(&mut self, id: ThreadId) {
        let Some(t) = self.threads.get(&id) else {
            return;
        };
        let task = t.task;
        let last = self.tasks.get(&task).is_some_and(|x| x.threads.len() <= 1);
        if last {
            self.terminate_task(task, 0);
            return;
        }
        if t.state == State::Io {
            // Ends at its completion (`wake_with`); until then it cannot
            // run or be resumed, and its port is gone.
            self.suspend(id);
            if let Some(t) = self.threads.get_mut(&id) {
                t.doomed = true;
                if let Some(p) = t.port.take() {
                    let mut fx = Effects::default();
                    self.ipc.destroy_kernel_port(p, &mut fx);
                    crate::ipc::apply(self, fx);
                }
            }
            return;
        }
        self.end_thread(id);
        if let Some(x) = self.tasks.get_mut(&task) {
            x.threads.retain(|&th| th != id);
        }
    }

    /// Called first on every kernel entry: remember where the interrupted
    /// context's frame is, and free what exited threads left behind.
    pub fn enter(&mut self, frame: *mut TrapFrame) {
        match self.current() {
            Some(t) => t.frame = frame,
            None => self.idle_frame = frame,
        }
        if self.graveyard.is_empty() {
            return;
        }
        for (stack, root) in core::mem::take(&mut self.graveyard) {
            drop(stack);
            if let Some(r) = root {
                r.release(&mut self.frames);
            }
        }
    }

    /// The running thread's task is done with `status`: all its threads end.
    pub fn exit_current(&mut self, status: i64) {
        let Some((task, _)) = self.current_task() else {
            return;
        };
        self.terminate_task(task, status);
    }

    /// Ends every thread of `id` and, once no device still holds its frames,
    /// its address space. Wakes whoever waits for it.
    pub fn terminate_task(&mut self, id: TaskId, status: i64) {
        if id == self.init {
            kprint!("init exited with status ", IDec(status), "\n");
            crate::kern::console::lock().flush();
            // Page-ins still in flight land first (a copy-in may have
            // started one nobody waits for), while their objects exist;
            // then every mapping goes, so modified pages of host objects
            // are written back before the pagers are told to sync.
            crate::vm::pager::drain_at_power_off(self);
            self.release_all_maps();
            // Objects their pagers let the kernel cache keep their
            // modified pages past the last mapping: they end now too.
            crate::vm::pager::uncache_all(self);
            crate::vm::pager::drain_at_power_off(self);
            if self.report_vm_stats {
                crate::vm::report_statistics(self);
            }
            crate::dev::virtio_pager::shutdown();
            power_off(status as u32);
        }
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.exited.is_some() {
            return;
        }
        t.exited = Some(status);
        let threads = core::mem::take(&mut t.threads);
        let mut keep = Vec::new();
        for th in threads {
            let in_io = self.threads.get(&th).is_some_and(|x| x.state == State::Io);
            if in_io {
                // Its frames are in the device's hands: it ends when the
                // request completes (`wake_with`), and the memory with it.
                if keep.try_reserve(1).is_ok() {
                    keep.push(th);
                }
            } else {
                self.end_thread(th);
            }
        }
        let parent = match self.tasks.get_mut(&id) {
            Some(t) => {
                t.threads = keep;
                t.parent
            }
            None => return,
        };
        let mut fx = Effects::default();
        self.drop_task_ports(id, &mut fx);
        crate::ipc::apply(self, fx);
        self.reap_memory(id);
        // Wake whoever waits for it; the first waiter collects the status.
        let waiters: Vec<ThreadId> = self
            .threads
            .iter()
            .filter(|(_, w)| w.state == State::Waiting(id))
            .map(|(&w, _)| w)
            .collect();
        for (i, w) in waiters.into_iter().enumerate() {
            let r = if i == 0 { status } else { ERR_NO_SUCH_TASK };
            self.wake_with(w, r);
        }
        let parent_alive =
            parent.is_some_and(|p| self.tasks.get(&p).is_some_and(|pt| pt.exited.is_none()));
        let collected = self
            .tasks
            .get(&id)
            .is_some_and(|t| t.exited.is_some() && t.threads.is_empty());
        if !parent_alive && collected {
            // Nobody can wait for it any more.
            self.forget_task(id);
        }
        // Its own exited children can no longer be waited for.
        self.task_hint = None;
        self.tasks
            .retain(|_, c| !(c.parent == Some(id) && c.exited.is_some() && c.threads.is_empty()));
    }

    /// Frees the address space of an exited task once no thread of it is
    /// left (threads in device I/O keep it alive).
    fn reap_memory(&mut self, id: TaskId) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.exited.is_none() || !t.threads.is_empty() || t.root.0 == 0 {
            return;
        }
        if self.cr3_task == Some(id) {
            // Its tables go now; the kernel half is in every root.
            // SAFETY: the kernel root maps everything the kernel uses.
            unsafe { cpu::set_cr3(self.kernel_root.0) };
            self.cr3_task = None;
            self.cur_root = self.kernel_root;
        }
        // CR3 no longer holds its root (switched above), so no invlpg.
        let loaded = self.kernel_root;
        crate::vm::destroy_map(
            &mut t.map,
            &mut self.vm,
            &mut self.paging,
            &mut self.frames,
            t.root,
            loaded,
        );
        t.release_memory(&mut self.frames);
        let root = t.take_root();
        self.graveyard.push((None, Some(root)));
    }

    /// Removes a thread; its stack waits in the graveyard (the trap path
    /// may be running on it).
    fn end_thread(&mut self, id: ThreadId) {
        if self.fpu_owner == Some(id) {
            self.fpu_owner = None;
        }
        if self.current == Some(id) {
            self.cur = core::ptr::null_mut();
        }
        self.runq.remove(id);
        self.timeouts.retain(|&(_, x)| x != id);
        if self.handoff == Some(id) {
            self.handoff = None;
        }
        self.ipc.cancel_wait(Waiter(u64::from(id.0)));
        if let Some(mut th) = self.threads.remove(&id) {
            if let Some(p) = th.port.take() {
                let mut fx = Effects::default();
                self.ipc.destroy_kernel_port(p, &mut fx);
                crate::ipc::apply(self, fx);
            }
            th.state = State::Exited;
            let stack = th.take_stack();
            drop(th);
            self.graveyard.push((stack, None));
        }
    }

    /// The running thread sleeps in `state` until `wake_with`; its system
    /// call result comes from whoever wakes it.
    pub fn block_current(&mut self, state: State) {
        if let Some(t) = self.current() {
            t.state = state;
            if matches!(state, State::PageWait { .. }) {
                self.page_waiters = true;
            }
        }
    }

    /// Wakes every thread blocked in `state`, each with `result`.
    pub fn wake_all(&mut self, state: State, result: i64) {
        let ids: Vec<ThreadId> = self
            .threads
            .iter()
            .filter(|(_, t)| t.state == state)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.wake_with(id, result);
        }
    }

    /// Makes a blocked thread runnable with `result` as its system call's.
    /// Does nothing to a thread that is not blocked (a stale completion).
    /// A thread whose task exited while it waited ends here instead.
    pub fn wake_with(&mut self, id: ThreadId, result: i64) {
        let Some(t) = self.threads.get_mut(&id) else {
            return;
        };
        if matches!(t.state, State::Ready | State::Running | State::Exited) {
            return;
        }
        let task = t.task;
        if self.tasks.get(&task).is_none_or(|x| x.exited.is_some()) {
            self.end_thread(id);
            if let Some(x) = self.tasks.get_mut(&task) {
                x.threads.retain(|&th| th != id);
            }
            self.reap_memory(task);
            return;
        }
        if t.doomed {
            // Terminated during its transfer: it ends now, and its task
            // with it if it was the last thread (as thread_terminate does).
            self.end_thread(id);
            let left = self.tasks.get_mut(&task).map(|x| {
                x.threads.retain(|&th| th != id);
                x.threads.len()
            });
            if left == Some(0) {
                self.terminate_task(task, 0);
            }
            return;
        }
        // SAFETY: a blocked thread's frame is valid until it runs again.
        unsafe { (*t.frame).rax = result as u64 };
        t.state = State::Ready;
        let (suspended, timed) = (t.suspend > 0, t.deadline != 0);
        if timed {
            self.clear_timeout(id);
        }
        if !suspended {
            self.runq.push(id);
        }
    }

    /// An exception in user mode kills the task, and the kernel goes on.
    pub fn kill_current(&mut self, vector: u64, error: u64, rip: u64, cr2: u64) {
        let Some((id, _)) = self.current_task() else {
            return;
        };
        let name = self.tasks.get(&id).map_or(&b"?"[..], |t| t.name());
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

    /// Nobody will task_wait for `id` (a Mach task_create child: its death
    /// is seen through its port), so its record goes as soon as it ends
    /// instead of lingering for a parent's wait that never comes.
    pub fn detach(&mut self, id: TaskId) {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.parent = None;
        }
    }

    /// task_wait: `Some(status)` now, or `None` after blocking the caller.
    pub fn wait(&mut self, target: TaskId) -> Result<Option<i64>, i64> {
        let (me, _) = self.current_task().ok_or(ERR_NO_SUCH_TASK)?;
        let t = self.tasks.get(&target).ok_or(ERR_NO_SUCH_TASK)?;
        if t.parent != Some(me) {
            return Err(ERR_NO_SUCH_TASK);
        }
        if let (Some(s), true) = (t.exited, t.threads.is_empty()) {
            self.forget_task(target);
            return Ok(Some(s));
        }
        self.block_current(State::Waiting(target));
        Ok(None)
    }

    /// Picks what runs next and returns the frame to resume.
    pub fn schedule(&mut self) -> *mut TrapFrame {
        let cur_running = self.current().is_some_and(|t| t.state == State::Running);
        // A tick asks for a reschedule, but with nothing else to run (and
        // the running thread neither suspended nor handing off) the pass
        // would put it on the run queue and take it straight back.
        if cur_running
            && (!self.need_resched
                || (self.runq.is_empty()
                    && self.handoff.is_none()
                    && self.current().is_some_and(|t| t.suspend == 0)))
        {
            self.need_resched = false;
            let idle = self.idle_frame;
            return self.current().map_or(idle, |t| t.frame);
        }
        self.need_resched = false;
        if cur_running && let Some(t) = self.current() {
            t.state = State::Ready;
            let (id, suspended) = (t.id, t.suspend > 0);
            if !suspended {
                self.runq.push(id);
            }
        }
        if let Some(h) = self.handoff.take()
            && let Some(t) = self.threads.get_mut(&h)
            && t.state == State::Ready
            && t.suspend == 0
        {
            self.runq.remove(h);
            let p = &mut **t as *mut Thread;
            return self.switch_to(Some(p));
        }
        let next = loop {
            let Some(id) = self.runq.pop() else {
                break None;
            };
            if let Some(t) = self.threads.get_mut(&id)
                && t.state == State::Ready
                && t.suspend == 0
            {
                break Some(&mut **t as *mut Thread);
            }
        };
        self.switch_to(next)
    }

    /// `next` points at a record in `threads` (one lookup, in `schedule`).
    fn switch_to(&mut self, next: Option<*mut Thread>) -> *mut TrapFrame {
        // SAFETY: `next` was just taken from the thread table.
        let next = next.and_then(|p| unsafe { p.as_mut() });
        self.current = next.as_ref().map(|t| t.id);
        self.cur = core::ptr::null_mut();
        let Some(t) = next else {
            // Idle runs on whatever address space is loaded (the kernel
            // half is in all of them; a dead task's was left at its exit),
            // so a thread that blocks and is woken costs no CR3 reload.
            return self.idle_frame;
        };
        let id = t.id;
        if self.fpu_owner != Some(id) {
            if let Some(owner) = self.fpu_owner.and_then(|o| self.threads.get_mut(&o)) {
                // SAFETY: a 16-byte aligned 512-byte area owned by the thread.
                unsafe { fxsave(owner.fx.0.as_mut_ptr()) };
            }
            // SAFETY: the thread's saved (or initial) FXSAVE image.
            unsafe { fxrstor(t.fx.0.as_ptr()) };
            self.fpu_owner = Some(id);
        }
        self.cur = &mut *t;
        t.state = State::Running;
        let top = t.kstack_top();
        gdt::set_kernel_stack(top);
        // SAFETY: read by the syscall entry only while this thread runs.
        unsafe { KERNEL_RSP = top };
        if self.cr3_task != Some(t.task) {
            let root = self.tasks.get(&t.task).map_or(self.kernel_root, |x| x.root);
            // SAFETY: the task's root maps the kernel half like every root.
            unsafe { cpu::set_cr3(root.0) };
            self.cr3_task = Some(t.task);
            self.cur_root = root;
        }
        t.frame
    }

    /// Tears down every task's address map (at power-off).
    fn release_all_maps(&mut self) {
        let loaded = self.loaded_root();
        for t in self.tasks.values_mut() {
            crate::vm::destroy_map(
                &mut t.map,
                &mut self.vm,
                &mut self.paging,
                &mut self.frames,
                t.root,
                loaded,
            );
        }
    }

    /// The page-table root CR3 holds now.
    pub fn loaded_root(&self) -> PhysAddr {
        self.cur_root
    }

    /// Task `id`'s map beside the VM state, for one VM operation (None once
    /// its address space is gone).
    pub fn vm_parts(&mut self, id: TaskId) -> Option<Parts<'_>> {
        self.ipc_and_vm(id).map(|(_, p)| p)
    }

    /// [`Kernel::vm_parts`] beside the IPC state: a message's out-of-line
    /// data is read from the sender's map, or placed in the receiver's,
    /// while the IPC layer works on the message.
    pub fn ipc_and_vm(&mut self, id: TaskId) -> Option<(&mut Ipc, Parts<'_>)> {
        let loaded = self.loaded_root();
        let t = match self.task_hint {
            // SAFETY: the hint points into a boxed record `tasks` still
            // holds (it is cleared wherever a record is dropped), and
            // `tasks` is not otherwise borrowed while `t` lives.
            Some((hint, p)) if hint == id => unsafe { &mut *p },
            _ => {
                let t = &mut **self.tasks.get_mut(&id)?;
                self.task_hint = Some((id, t as *mut Task));
                t
            }
        };
        if t.root.0 == 0 {
            return None;
        }
        let parts = Parts {
            map: &mut t.map,
            vm: &mut self.vm,
            paging: &mut self.paging,
            frames: &mut self.frames,
            root: t.root,
            loaded,
        };
        Some((&mut self.ipc, parts))
    }

    /// The VM state with no task's map: for pager replies.
    pub fn vm_global(&mut self) -> (&mut Vm, &mut FrameAllocator, &mut HostPaging, PhysAddr) {
        let loaded = self.loaded_root();
        (&mut self.vm, &mut self.frames, &mut self.paging, loaded)
    }

    /// Faults sleeping on `object` (its page in transit) run again: they
    /// retry the faulting instruction, or their system call, from the map.
    pub fn wake_page_waiters(&mut self, object: ObjectId) {
        self.page_wakes += 1;
        if !self.page_waiters {
            return;
        }
        let mut others = false;
        let ids: Vec<(ThreadId, bool)> = self
            .threads
            .iter()
            .filter_map(|(&id, t)| match t.state {
                State::PageWait { object: o, syscall } if o == object => Some((id, syscall)),
                State::PageWait { .. } => {
                    others = true;
                    None
                }
                _ => None,
            })
            .collect();
        self.page_waiters = others;
        for (id, syscall) in ids {
            if syscall {
                self.restart_syscall(id);
            } else {
                self.make_ready(id);
            }
        }
    }

    /// How many times page waiters were woken (see `page_wakes`).
    pub fn page_wakes(&self) -> u64 {
        self.page_wakes
    }

    /// Whether a thread waits for an object read or write into its own
    /// pages (their frames are the device's until it completes).
    pub fn any_in_io(&self) -> bool {
        self.threads.values().any(|t| t.state == State::Io)
    }

    /// Pageout freed frames: faults waiting for them run again.
    pub fn wake_frame_waiters(&mut self) {
        let ids: Vec<ThreadId> = self
            .threads
            .iter()
            .filter_map(|(&id, t)| (t.state == State::FrameWait).then_some(id))
            .collect();
        for id in ids {
            self.make_ready(id);
        }
    }

    /// task_create's memory inheritance (§3.1): the child's VM window is
    /// built from the parent's by each region's inheritance.
    fn inherit_memory(&mut self, id: TaskId, p: TaskId) -> Result<(), ()> {
        if self.tasks.get(&p).is_none_or(|t| t.map.is_empty()) {
            return Ok(());
        }
        let child = crate::vm::with_task(self, p, |map, objs, _, m| {
            let range = map.range();
            map.fork(range, objs, &mut m.pmap())
        });
        let Some(Ok(map)) = child else {
            return Err(());
        };
        // The child was inserted by the caller and runs nothing yet.
        let t = self.tasks.get_mut(&id).ok_or(())?;
        t.map = map;
        Ok(())
    }

    fn destroy_address_space(&mut self, t: &mut Task) {
        let loaded = self.loaded_root();
        crate::vm::destroy_map(
            &mut t.map,
            &mut self.vm,
            &mut self.paging,
            &mut self.frames,
            t.root,
            loaded,
        );
        t.release_memory(&mut self.frames);
        t.take_root().release(&mut self.frames);
    }
}
