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
//! A pin is applied by whichever comes second: the engine's configuration (to a thread that has
//! told its ID) or the thread's start (reading what is wanted), so none is lost to a race.

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};

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

/// No thread ID told yet, or no CPU wanted.
const NONE: i64 = -1;

/// One thread's ID and wanted CPU.
#[derive(Debug)]
struct Slot {
    tid: AtomicI32,
    cpu: AtomicI64,
}

/// The engine's threads' placement.
#[derive(Debug)]
pub(crate) struct Placement {
    /// The CPUs the process may run on when the engine started: an unpinned thread's set.
    allowed: CpuSet,
    slots: [Slot; 2],
}

impl Placement {
    /// Nothing pinned; `allowed` is the calling thread's set.
    pub(crate) fn new() -> std::io::Result<Self> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).map_err(std::io::Error::from)?;
        let slot = || Slot {
            tid: AtomicI32::new(0),
            cpu: AtomicI64::new(NONE),
        };
        Ok(Self {
            allowed,
            slots: [slot(), slot()],
        })
    }

    /// Called by `thread` as it starts: tells its ID and takes the CPU wanted for it, if any.
    pub(crate) fn started(&self, thread: IoThread) {
        let slot = &self.slots[thread as usize];
        slot.tid.store(gettid().as_raw(), Ordering::SeqCst);
        if slot.cpu.load(Ordering::SeqCst) != NONE {
            self.apply(thread);
        }
    }

    /// Pins the encrypting thread to `cpus[0]` and the decrypting one to `cpus[1]` (to `cpus[0]`
    /// as well when there is one; `[]` unpins both). The CPUs were checked by the state's
    /// resolution against the same allowed set.
    pub(crate) fn pin(&self, cpus: &[usize]) {
        for (thread, wanted) in [
            (IoThread::Encrypting, cpus.first()),
            (IoThread::Decrypting, cpus.get(1).or(cpus.first())),
        ] {
            let slot = &self.slots[thread as usize];
            let wanted = wanted.map_or(NONE, |&c| c as i64);
            if slot.cpu.swap(wanted, Ordering::SeqCst) != wanted {
                self.apply(thread);
            }
        }
    }

    /// Sets `thread`'s affinity to what is wanted for it, once its ID is known.
    fn apply(&self, thread: IoThread) {
        let slot = &self.slots[thread as usize];
        let tid = slot.tid.load(Ordering::SeqCst);
        if tid == 0 {
            return;
        }
        let set = match usize::try_from(slot.cpu.load(Ordering::SeqCst)) {
            Ok(cpu) => {
                let mut set = CpuSet::new();
                if let Err(e) = set.set(cpu) {
                    tracing::error!(cpu, error = %e, "pinning a WireGuard thread");
                    return;
                }
                set
            }
            Err(_) => self.allowed,
        };
        if let Err(e) = sched_setaffinity(Pid::from_raw(tid), &set) {
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
        Some(cpu) => {
            let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            Err(format!(
                "CPU {cpu} is not one this process may run on (it may run on {})",
                allowed.join(",")
            ))
        }
        None => Ok(()),
    }
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
            Err("CPU 7 is not one this process may run on (it may run on 0,1)".into())
        );
        assert_eq!(
            check(&[0, 1, 0], &[0, 1]),
            Err("3 CPUs listed: one pins both I/O threads, two pin the encrypting and the decrypting thread".into())
        );
    }
}
