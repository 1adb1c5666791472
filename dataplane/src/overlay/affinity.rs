//! Where the WireGuard engine's two I/O threads run: each on a CPU of its own when the desired
//! state names them (`wireguard.cpus`), else wherever the scheduler puts them.
//!
//! Why pin at all: what the decrypting thread writes to the TAP device continues through the
//! kernel's per-CPU queues (the backlog, the VXLAN device's receive cells) on the CPU the thread
//! runs on. When the scheduler moves the thread while its earlier packets still wait in the first
//! CPU's queues, later packets can overtake them, and the tasks' TCP sees reordering (spurious
//! fast retransmits). A thread that stays on one CPU keeps its packets in order. The price is
//! that the thread can no longer use another CPU when its own is busy (docs/dataplane.md has the
//! figures).
//!
//! A thread tells its ID as it starts and takes the CPU wanted for it; a configuration records the
//! CPUs wanted and pins the threads that have told their IDs. Both happen under one lock held
//! across the system call, so neither a pin nor a start is lost, and an older pin never lands
//! after a newer one. A thread that ends takes its ID back, so that no later pin reaches a
//! thread ID the system has reused.

use std::sync::Mutex;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::{Pid, gettid};

/// The engine's I/O threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoThread {
    /// Reads the TAP device and encrypts.
    Encrypting = 0,
    /// Receives datagrams and decrypts into the TAP device.
    Decrypting = 1,
}

/// One thread's ID, while it runs, and the CPU wanted for it.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    tid: Option<Pid>,
    cpu: Option<usize>,
}

/// The engine's threads' placement.
#[derive(Debug)]
pub(crate) struct Placement {
    /// The CPUs the process may run on when the engine started: an unpinned thread's set.
    allowed: CpuSet,
    slots: Mutex<[Slot; 2]>,
}

/// Held by a running I/O thread: its ID is given back when it ends, however it ends.
pub(crate) struct Running<'a> {
    placement: &'a Placement,
    thread: IoThread,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.placement.lock()[self.thread as usize].tid = None;
    }
}

impl Placement {
    /// Nothing pinned; `allowed` is the calling thread's set.
    pub(crate) fn new() -> std::io::Result<Self> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).map_err(std::io::Error::from)?;
        Ok(Self {
            allowed,
            slots: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Slot; 2]> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by `thread` as it starts: tells its ID and takes the CPU wanted for it, if any.
    /// The ID is given back when the result is dropped.
    pub(crate) fn started(&self, thread: IoThread) -> Running<'_> {
        let mut slots = self.lock();
        let slot = &mut slots[thread as usize];
        slot.tid = Some(gettid());
        if slot.cpu.is_some() {
            self.apply(thread, *slot);
        }
        Running {
            placement: self,
            thread,
        }
    }

    /// Pins the encrypting thread to `cpus[0]` and the decrypting one to `cpus[1]` (to `cpus[0]`
    /// as well when there is one; `[]` unpins both). The CPUs were checked by the state's
    /// resolution against the same allowed set.
    pub(crate) fn pin(&self, cpus: &[usize]) {
        let mut slots = self.lock();
        for (thread, wanted) in [
            (IoThread::Encrypting, cpus.first()),
            (IoThread::Decrypting, cpus.get(1).or(cpus.first())),
        ] {
            let slot = &mut slots[thread as usize];
            if slot.cpu != wanted.copied() {
                slot.cpu = wanted.copied();
                self.apply(thread, *slot);
            }
        }
    }

    /// Sets the affinity of `slot`'s thread, if it runs, to its CPU or to every allowed one.
    fn apply(&self, thread: IoThread, slot: Slot) {
        let Some(tid) = slot.tid else {
            return;
        };
        let set = match slot.cpu {
            Some(cpu) => {
                let mut set = CpuSet::new();
                if let Err(e) = set.set(cpu) {
                    tracing::error!(cpu, error = %e, "pinning a WireGuard thread");
                    return;
                }
                set
            }
            None => self.allowed,
        };
        if let Err(e) = sched_setaffinity(tid, &set) {
            tracing::error!(?thread, error = %e, "setting a WireGuard thread's CPUs");
        }
    }
}

/// The CPUs the calling thread may run on, in order.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(std::io::Error::from)?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Whether `cpus` can pin the engine's threads in a process that may run on `allowed`: one or
/// two CPUs, each of them allowed. Otherwise, what is wrong.
pub fn check(cpus: &[usize], allowed: &[usize]) -> Result<(), String> {
    if cpus.len() > 2 {
        return Err(format!(
            "{} CPUs listed: one pins both I/O threads, two pin the encrypting and the decrypting thread",
            cpus.len()
        ));
    }
    match cpus.iter().find(|c| !allowed.contains(c)) {
        Some(cpu) => Err(format!(
            "CPU {cpu} is not one shoald may run on (it may run on {})",
            ranges(allowed)
        )),
        None => Ok(()),
    }
}

/// CPUs in the kernel's list format: `0-3,6`.
fn ranges(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_two_allowed_cpus_pin_and_anything_else_is_refused_naming_it() {
        assert_eq!(check(&[], &[0, 1]), Ok(()));
        assert_eq!(check(&[1], &[0, 1]), Ok(()));
        assert_eq!(check(&[0, 1], &[0, 1]), Ok(()));
        assert_eq!(
            check(&[0, 7], &[0, 1]),
            Err("CPU 7 is not one shoald may run on (it may run on 0-1)".into())
        );
        assert_eq!(
            check(&[5], &[0, 1, 2, 3, 6, 8, 9]),
            Err("CPU 5 is not one shoald may run on (it may run on 0-3,6,8-9)".into())
        );
        assert_eq!(
            check(&[0, 1, 0], &[0, 1]),
            Err("3 CPUs listed: one pins both I/O threads, two pin the encrypting and the decrypting thread".into())
        );
    }
}
