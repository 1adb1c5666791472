//! Bounds-checked access to packet memory: the only module that dereferences packet pointers.
//!
//! [`Packet::header`] checks once that `len` bytes starting at `offset` lie inside the packet and
//! returns a [`Header`]; reading a field of a `Header<N>` at a constant position `I` is checked at
//! compile time (`I + width <= N`). The verifier sees one comparison against `data_end` per header,
//! on the same pointer the reads use.

use aya_ebpf::programs::XdpContext;

/// The packet between `data` and `data_end`.
pub(crate) struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub(crate) fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// The `N` bytes at `offset`, if the packet holds them.
    #[inline(always)]
    pub(crate) fn header<const N: usize>(&self, offset: usize) -> Option<Header<N>> {
        let ptr = self.start + offset;
        if ptr + N > self.end {
            return None;
        }
        Some(Header {
            ptr: ptr as *mut u8,
        })
    }

    /// The packet's length in bytes.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the packet holds `len` bytes at `offset` (for variable-length parts that are
    /// skipped, not read: IPv4 options, TCP options, IPv6 extension header bodies).
    #[inline(always)]
    pub(crate) fn holds(&self, offset: usize, len: usize) -> bool {
        self.start + offset + len <= self.end
    }
}

/// `N` bytes of packet known to be in bounds.
pub(crate) struct Header<const N: usize> {
    ptr: *mut u8,
}

impl<const N: usize> Header<N> {
    /// The byte at `I`.
    #[inline(always)]
    pub(crate) fn u8<const I: usize>(&self) -> u8 {
        const { assert!(I < N, "read past the end of the header") };
        // SAFETY: `Packet::header` checked that `ptr..ptr + N` is inside the packet and I < N.
        unsafe { self.ptr.add(I).read() }
    }

    /// The big-endian `u16` at `I`.
    #[inline(always)]
    pub(crate) fn be16<const I: usize>(&self) -> u16 {
        const { assert!(I + 2 <= N, "read past the end of the header") };
        // SAFETY: as above, with I + 2 <= N; `read_unaligned` because packet fields are not
        // aligned for u16.
        u16::from_be_bytes(unsafe { self.ptr.add(I).cast::<[u8; 2]>().read_unaligned() })
    }

    /// The `u32` at `I` exactly as it sits in the packet (network byte order, loaded natively).
    #[inline(always)]
    pub(crate) fn raw32<const I: usize>(&self) -> u32 {
        const { assert!(I + 4 <= N, "read past the end of the header") };
        // SAFETY: as for `u8`, with I + 4 <= N; unaligned as packet fields are.
        unsafe { self.ptr.add(I).cast::<u32>().read_unaligned() }
    }

    /// The `u16` at `I` exactly as it sits in the packet.
    #[inline(always)]
    pub(crate) fn raw16<const I: usize>(&self) -> u16 {
        const { assert!(I + 2 <= N, "read past the end of the header") };
        // SAFETY: as for `raw32`, with I + 2 <= N.
        unsafe { self.ptr.add(I).cast::<u16>().read_unaligned() }
    }

    /// The six bytes at `I` (a MAC address).
    #[inline(always)]
    pub(crate) fn mac<const I: usize>(&self) -> [u8; 6] {
        const { assert!(I + 6 <= N, "read past the end of the header") };
        // SAFETY: as for `u8`, with I + 6 <= N.
        unsafe { self.ptr.add(I).cast::<[u8; 6]>().read_unaligned() }
    }

    /// Writes `value` at `I` as is (the packet's byte order is the caller's business).
    #[inline(always)]
    pub(crate) fn write<const I: usize, T: Copy>(&self, value: T) {
        const { assert!(I + size_of::<T>() <= N, "write past the end of the header") };
        // SAFETY: `Packet::header` checked the bounds, and the assertion above keeps the write
        // inside them; XDP packet memory is writable.
        unsafe { self.ptr.add(I).cast::<T>().write_unaligned(value) }
    }
}
