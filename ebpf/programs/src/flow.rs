//! The life of a balanced flow: its state from TCP flags (or UDP traffic each way), its expiry,
//! where it is kept, and the translated port it holds.
//!
//! ```text
//!   new flow (a TCP SYN, any UDP datagram) ─> CONNS_NEW + REPLIES_NEW (LRU: a flood evicts only
//!        its own kind) ── SYN-ACK then ACK / a reply then more ──> CONNS + REPLIES (hash:
//!        nothing evicts them) ── FIN, RST, silence ──> expired ──> removed, port free
//! ```
//!
//! - A TCP packet that is not the SYN of a new flow and has no flow gets no state: it goes to
//!   the node's stack, which resets it. A handshake that ends (FIN, RST) before it completes is
//!   closed where it is, never moved to the established maps; a SYN on a closed flow's tuple
//!   starts a new flow.
//! - Both entries of a flow (its connection and its way back) are removed together, and a way
//!   back only by the flow it belongs to: a port is free when its holder is gone or expired,
//!   never while the holder lives. A new flow whose way back was evicted (the LRU maps evict
//!   each on its own) is gone: its next packet goes to the stack.
//! - When every candidate port of a new flow is held, a handshake older than
//!   [`Timeouts::takeover`] yields its port (conntrack's early drop of unassured entries): a
//!   flood of spoofed SYNs holds ports for a second, not for the whole half-open timeout.
//! - A backend's packet for a handshake must acknowledge the client's SYN; one that does not
//!   belongs to the port's earlier holder and is never delivered (the stack resets it).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_COMMON_LRU, BPF_NOEXIST},
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use shoal_abi::mesh::{
    Conn, FIN_BACKEND, FIN_CLIENT, FlowKey, MAX_CONNS, MAX_NEW_CONNS, MAX_NEW_REPLIES, MAX_REPLIES,
    Rewrite, Timeouts, state,
};

/// Per-CPU LRU lists: inserting a new connection takes no lock shared between CPUs (a CPU evicts
/// from its own list; entries stay visible to every CPU).
pub(crate) const LRU_FLAGS: u32 = BPF_F_NO_COMMON_LRU;

#[map(name = "MESH_CONNS")]
pub(crate) static CONNS: HashMap<FlowKey, Conn> = HashMap::with_max_entries(MAX_CONNS, 0);

#[map(name = "MESH_REPLIES")]
pub(crate) static REPLIES: HashMap<FlowKey, Rewrite> = HashMap::with_max_entries(MAX_REPLIES, 0);

#[map(name = "MESH_CONNS_NEW")]
pub(crate) static CONNS_NEW: LruHashMap<FlowKey, Conn> =
    LruHashMap::with_max_entries(MAX_NEW_CONNS, LRU_FLAGS);

#[map(name = "MESH_REPLIES_NEW")]
pub(crate) static REPLIES_NEW: LruHashMap<FlowKey, Rewrite> =
    LruHashMap::with_max_entries(MAX_NEW_REPLIES, LRU_FLAGS);

#[map(name = "MESH_TIMEOUTS")]
static TIMEOUTS: Array<Timeouts> = Array::with_max_entries(1, 0);

/// TCP flags.
pub(crate) const FIN: u8 = 0x01;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const RST: u8 = 0x04;
pub(crate) const ACK: u8 = 0x10;

/// Seconds of the kernel's coarse monotonic clock.
#[inline(always)]
pub(crate) fn now() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// Used until userspace has written [`TIMEOUTS`].
static DEFAULT_TIMEOUTS: Timeouts = Timeouts::DEFAULT;

#[inline(always)]
pub(crate) fn timeouts() -> &'static Timeouts {
    TIMEOUTS.get(0).unwrap_or(&DEFAULT_TIMEOUTS)
}

/// Whether a flow has expired.
#[inline(always)]
pub(crate) fn expired(conn: &Conn, now: u32) -> bool {
    now >= conn.expires
}

/// The expiry of a flow in its state, from now; written only when it moves (a packet a
/// second per flow writes, not every packet).
#[inline(always)]
pub(crate) fn refresh(conn: &mut Conn, now: u32, timeouts: &Timeouts) {
    let expires = now.saturating_add(timeouts.of(conn.state));
    // A closed flow's expiry is not pushed back by its stragglers.
    let wanted = if conn.state == state::TCP_CLOSED {
        conn.expires.min(expires)
    } else {
        expires
    };
    if wanted != conn.expires {
        conn.expires = wanted;
    }
}

/// The state after a TCP packet with `flags` from the client (`from_client`) or the backend.
#[inline(always)]
pub(crate) fn tcp_step(conn: &mut Conn, flags: u8, from_client: bool) {
    // A reset, or a FIN before the handshake completed: closed, never established.
    if flags & RST != 0
        || (flags & FIN != 0 && matches!(conn.state, state::TCP_SYN_SENT | state::TCP_SYN_RECV))
    {
        conn.state = state::TCP_CLOSED;
        return;
    }
    if flags & FIN != 0 {
        conn.fins |= if from_client { FIN_CLIENT } else { FIN_BACKEND };
        conn.state = if conn.fins == FIN_CLIENT | FIN_BACKEND {
            state::TCP_CLOSED
        } else {
            state::TCP_CLOSING
        };
    }
}

/// Whether `reply` (a way back as kept) belongs to the flow `key`.
#[inline(always)]
pub(crate) fn belongs(reply: &Rewrite, key: &FlowKey) -> bool {
    reply.back_key(key.proto) == *key
}

/// Forgets a flow kept with the established ones: its connection, and its way back if it is
/// still this flow's.
#[inline(always)]
pub(crate) fn forget(key: &FlowKey, conn: &Conn) {
    let back = conn.rewrite.back_key(key.proto);
    let _ = CONNS.remove(key);
    // SAFETY: a map value read in place, for the length of this call.
    if unsafe { REPLIES.get(back) }.is_some_and(|r| belongs(r, key)) {
        let _ = REPLIES.remove(back);
    }
}

/// Forgets a flow kept with the new ones (as [`forget`]).
#[inline(always)]
pub(crate) fn forget_new(key: &FlowKey, conn: &Conn) {
    let back = conn.rewrite.back_key(key.proto);
    let _ = CONNS_NEW.remove(key);
    // SAFETY: as above.
    if unsafe { REPLIES_NEW.get(back) }.is_some_and(|r| belongs(r, key)) {
        let _ = REPLIES_NEW.remove(back);
    }
}

/// Whether the new flow `key` still holds its way back (an LRU map may have evicted it, and
/// another flow may have claimed the port since).
#[inline(always)]
pub(crate) fn holds_way_back(key: &FlowKey, conn: &Conn) -> bool {
    // SAFETY: a map value read in place, for the length of this call.
    unsafe { REPLIES_NEW.get(conn.rewrite.back_key(key.proto)) }.is_some_and(|r| belongs(r, key))
}

/// What a claim on a translated port came to.
pub(crate) enum Claim {
    /// The port is this flow's.
    Mine,
    /// A new flow took it from a handshake older than the takeover age.
    TakenOver,
    /// A live flow holds it.
    Held,
}

/// Claims the way back `key` (a translated port) for the flow whose reply translation is
/// `reply`: free when nobody holds it, or its holder is gone or expired; taken from a
/// handshake older than `timeouts.takeover` only when `take_over` (the last resort).
#[inline(always)]
pub(crate) fn claim(
    key: &FlowKey,
    reply: &Rewrite,
    now: u32,
    timeouts: &Timeouts,
    take_over: bool,
) -> Claim {
    let proto = key.proto;
    // An established flow's claim: held while it lives.
    // SAFETY: a map value read in place, for the length of this call.
    if let Some(old) = unsafe { REPLIES.get(key) } {
        if old == reply {
            return Claim::Mine;
        }
        let holder = old.back_key(proto);
        // SAFETY: as above.
        match unsafe { CONNS.get(holder) } {
            Some(c) if !expired(c, now) => return Claim::Held,
            _ => {
                let _ = CONNS.remove(holder);
                let _ = REPLIES.remove(key);
            }
        }
    }
    if REPLIES_NEW
        .insert(key, reply, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return Claim::Mine;
    }
    // SAFETY: as above.
    let Some(old) = (unsafe { REPLIES_NEW.get(key) }) else {
        // Evicted meanwhile: take the place.
        return match REPLIES_NEW.insert(key, reply, u64::from(BPF_NOEXIST)) {
            Ok(()) => Claim::Mine,
            Err(_) => Claim::Held,
        };
    };
    if old == reply {
        return Claim::Mine;
    }
    let holder = old.back_key(proto);
    // SAFETY: as above.
    let outcome = match unsafe { CONNS_NEW.get(holder) } {
        // Gone (evicted) or expired: the port is free.
        None => Claim::Mine,
        Some(c) if expired(c, now) => Claim::Mine,
        // Never from a flow answered both ways (one kept here because the established maps
        // were full).
        Some(c)
            if take_over
                && !state::assured(c.state)
                && now.wrapping_sub(c.born) >= timeouts.takeover =>
        {
            Claim::TakenOver
        }
        Some(_) => Claim::Held,
    };
    if matches!(outcome, Claim::Held) {
        return outcome;
    }
    let _ = CONNS_NEW.remove(holder);
    if REPLIES_NEW.insert(key, reply, u64::from(BPF_ANY)).is_err() {
        return Claim::Held;
    }
    outcome
}

/// Moves a flow from the new ones to the established ones: its connection, then its way back
/// (a backend's packet in between still finds the way back with the new ones). The connection
/// as now kept; `None` when the established maps are full (the flow stays with the new ones).
/// The caller has checked that the flow holds its way back ([`holds_way_back`]).
#[inline(always)]
pub(crate) fn promote(key: &FlowKey, conn: *mut Conn) -> Option<*mut Conn> {
    // SAFETY: a map value the caller holds, for the length of this call.
    let back = unsafe { &(*conn).rewrite }.back_key(key.proto);
    // SAFETY: as above; the helper copies the value into the other map.
    let reply = unsafe { REPLIES_NEW.get(back) }?;
    // SAFETY: as above; by reference, so the connection is never copied onto the BPF stack.
    let conn_ref: &Conn = unsafe { &*conn };
    CONNS.insert(key, conn_ref, u64::from(BPF_ANY)).ok()?;
    if REPLIES.insert(back, reply, u64::from(BPF_ANY)).is_err() {
        let _ = CONNS.remove(key);
        return None;
    }
    let _ = CONNS_NEW.remove(key);
    let _ = REPLIES_NEW.remove(back);
    CONNS.get_ptr_mut(key)
}
