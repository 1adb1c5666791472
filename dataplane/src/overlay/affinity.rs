//! Where the WireGuard engine's two I/O threads run, and where the kernel carries on with what
//! they hand it: the threads each on a CPU of its own when the desired state names them
//! (`wireguard.cpus`), else wherever the scheduler puts them; the kernel's side always by flow.
//!
//! Why it matters: what the decrypting thread writes to the TAP device would continue through
//! the kernel's per-CPU queues (the backlog, the VXLAN device's receive cells) on the CPU the
//! thread runs on. When the scheduler moves the thread while its earlier packets still wait in
//! the first CPU's queues, later packets can overtake them, and the tasks' TCP sees reordering
//! (spurious fast retransmits). So the TAP device steers what it takes in (RPS over the CPUs
//! `shoald` may use, [`steer_new_devices`]): each stream to the queue of the one CPU its hash
//! picks, whichever CPU the thread writes from. A pinned thread keeps its packets in order too,
//! but can no longer use another CPU when its own is busy (docs/dataplane.md has the figures).
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

/// The kernel's default RPS mask for devices created from now on in the calling thread's
/// network namespace (per namespace since Linux 6.7; see [`steer_new_devices`]).
const RPS_DEFAULT_MASK: &str = "/proc/sys/net/core/rps_default_mask";

/// `cpus` as the kernel writes a CPU mask: hexadecimal, most significant word first, words of
/// 32 CPUs separated by commas (`3` for CPUs 0 and 1, `1,00000000` for CPU 32).
pub fn cpu_mask(cpus: &[usize]) -> String {
    let words = cpus.iter().max().map_or(1, |&top| top / 32 + 1);
    let mut mask = vec![0u32; words];
    for &cpu in cpus {
        mask[cpu / 32] |= 1 << (cpu % 32);
    }
    let mut out = format!("{:x}", mask[words - 1]);
    for word in mask[..words - 1].iter().rev() {
        out.push_str(&format!(",{word:08x}"));
    }
    out
}

/// In the calling thread's network namespace (a fresh one, entered with `setns`), makes every
/// device created from now on steer what it receives to a CPU chosen by the flow's hash (RPS
/// over `cpus`), whatever CPU hands the packet in. Returns whether it did: before Linux 6.7 the
/// setting is the whole system's and only the host's namespace has it, so a kernel without it
/// in the namespace is left as it is.
pub(crate) fn steer_new_devices(cpus: &[usize]) -> std::io::Result<bool> {
    if cpus.is_empty() {
        return Ok(false);
    }
    match std::fs::write(RPS_DEFAULT_MASK, cpu_mask(cpus)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("writing {RPS_DEFAULT_MASK}: {e}"),
        )),
    }
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

    #[test]
    fn cpu_masks_are_written_as_the_kernel_reads_them() {
        assert_eq!(cpu_mask(&[0, 1]), "3");
        assert_eq!(cpu_mask(&[1, 3, 4]), "1a");
        assert_eq!(cpu_mask(&[31]), "80000000");
        assert_eq!(cpu_mask(&[0, 32]), "1,00000001");
        assert_eq!(cpu_mask(&[64]), "1,00000000,00000000");
        assert_eq!(cpu_mask(&[]), "0");
    }
}
