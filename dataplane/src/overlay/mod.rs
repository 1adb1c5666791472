//! Overlay networks: a node's desired state ([`crate::node::DesiredState`]) is validated into a kernel
//! [`layout::Layout`], planned against what the kernel holds ([`layout::plan`]) and applied by
//! the netlink executor ([`Dataplane`]); encrypted networks' VXLAN traffic goes through the
//! WireGuard engine ([`wireguard`]).
//!
//! ```text
//!  node namespace (shoald)                 network namespace <root>/ov-<id>      task namespace
//!  ───────────────────────                 ────────────────────────────────      ──────────────
//!  data-path addr:4789  (plain VXLAN) ───> vxlan0 ─┐                              
//!                                                  br0 (gateway) ── vt<hash> ══════ eth0
//!  data-path addr:51820 (WireGuard UDP)            │
//!        ▲                                          
//!        │ engine: encrypt/decrypt                 tunnel namespace <root>/wg
//!        └──────────────────────────────────────── wg0 (TAP, data-path addr) ── encrypted networks'
//!                                                                              VXLAN sockets
//! ```
//!
//! A plain network's VXLAN device is created in the node's namespace, so its socket binds the
//! data-path address there, then moved into the network's namespace (as Docker's overlay driver
//! does). An encrypted network's VXLAN device is created in the tunnel namespace instead, whose
//! only route leads into the TAP device: its traffic cannot leave any other way than encrypted,
//! and plain networks' traffic never enters the tunnel.
//!
//! A task with a way out ([`model::WayOut`]) also has a veth on the node's `shoal_gw` bridge, its
//! default route through it, and source NAT to the node's address beyond ([`way_out`]).

pub mod affinity;
mod executor;
pub mod keys;
pub mod layout;
pub mod model;
pub mod netns;
pub mod offload;
pub mod vxlan_filter;
pub mod way_out;
pub mod wireguard;

pub use executor::{Applied, ApplyError, Dataplane, adopt_namespace, task_namespace};
pub(crate) use executor::{BRIDGE, VXLAN};
pub use keys::Key;
pub use layout::{Layout, LayoutStep, Observed, plan};
