//! The routing mesh's counters: per service and per published port, one value per CPU, written
//! by the XDP and TC programs where a packet is balanced, read and summed by userspace. All of
//! them are left out (folded away by the verifier) when `shoal_abi::mesh::COUNTERS_GLOBAL` is
//! 0, which is how their cost is measured.

use aya_ebpf::{Global, macros::map, maps::PerCpuArray};
use shoal_abi::mesh::{MAX_FRONTENDS, MAX_SERVICES, PortStats, ServiceStats};

#[map(name = "MESH_STATS")]
static STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "MESH_PORT_STATS")]
static PORT_STATS: PerCpuArray<PortStats> = PerCpuArray::with_max_entries(MAX_FRONTENDS, 0);

/// `shoal_abi::mesh::COUNTERS_GLOBAL`: 0 counts nothing (the counters' cost, measured).
#[unsafe(no_mangle)]
static MESH_COUNTERS: Global<u32> = Global::new(1);

/// A service's counters on this CPU (none when counting is off).
#[inline(always)]
pub(crate) fn stats(service: u32) -> Option<&'static mut ServiceStats> {
    if MESH_COUNTERS.load() == 0 {
        return None;
    }
    let stats = STATS.get_ptr_mut(service)?;
    // SAFETY: this CPU's own value, from the map lookup; XDP and TC run with preemption
    // disabled, so nothing else writes it meanwhile.
    Some(unsafe { &mut *stats })
}

/// A published port's counters on this CPU (none when counting is off).
#[inline(always)]
pub(crate) fn port_stats(slot: u32) -> Option<&'static mut PortStats> {
    if MESH_COUNTERS.load() == 0 {
        return None;
    }
    let stats = PORT_STATS.get_ptr_mut(slot)?;
    // SAFETY: as for `stats`: this CPU's own value, preemption disabled.
    Some(unsafe { &mut *stats })
}

/// Counts a packet refused for lack of backends, against its service and its port.
#[inline(always)]
pub(crate) fn count_refused(service: u32, port_slot: u32) {
    if let Some(s) = stats(service) {
        s.refused += 1;
    }
    if let Some(p) = port_stats(port_slot) {
        p.refused += 1;
    }
}
