//! The lab: a Shoal cluster on one machine, in network namespaces, for the end-to-end tests
//! (`tests/tests/*.rs`, one binary per area) and for people (`cargo xtask lab up|down|status`,
//! `cargo xtask demo`), driven by the same code.
//!
//! ```text
//!            shoal<ID>-sw  (the switches: two bridges in their own namespace)
//!        ┌──────── br-pub 172.20.<ID>.0/24 ────────┬──────────────┐
//!        │               (public / control)        │              │
//!   eth0 .11          eth0 .12   ...          eth0 .1N        eth0 .2
//!   shoal<ID>-n1      shoal<ID>-n2            shoal<ID>-nN    shoal<ID>-c (client)
//!   eth1 .11          eth1 .12   ...          eth1 .1N
//!        └──────── br-data 172.21.<ID>.0/24 ───────┘
//!                        (data path)
//! ```
//!
//! Everything a lab creates carries its prefix `shoal<ID>` (namespaces, the state directory
//! `/tmp/shoal-lab/shoal<ID>`, addresses in `172.20.<ID>.0/24` and `172.21.<ID>.0/24`); the root
//! namespace is not touched. A [`Lab`] tears itself down on drop (also after a failed assertion):
//! it kills every process inside its namespaces, deletes the namespaces (their links go with
//! them) and its directory. Labs whose owner died without dropping them are swept by the next
//! [`Lab::up`] or by `cargo xtask lab down --all`.
//!
//! Start with [`Lab::up`], [`Lab::spawn_shoald`] and [`wait_until`].

pub mod browser;
pub mod docker;
mod error;
mod lab;
pub mod mesh;
mod netns;
pub mod overlay;
pub mod service;
pub mod swarm;
mod wait;

pub use error::{LabError, binary};
pub use lab::{
    CGROUP_ROOTS, Host, Lab, LabSpec, LabStatus, down, down_all, labs, output_text, sweep_orphans,
};
pub use netns::{Netns, create_mount_ns, in_host, in_netns, links, remove_mount_ns, within};
pub use wait::{Deadline, wait_until};
