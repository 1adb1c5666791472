//! The cluster object as the managers keep it in the store ([`ClusterRecord`]): what `swarm
//! inspect` shows, and what only managers hold (the CA's key, a root rotation, the unlock key).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_api::swarm::Cluster;
use tonic::Status;

use super::{Inner, write::json_error};
use crate::{
    ca::{self, RootCa},
    store::{Kind, Object},
};

/// The cluster object's body: the view `swarm inspect` shows, and the CA's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// What `swarm inspect` shows.
    #[serde(flatten)]
    pub cluster: Cluster,
    /// The root CA's private key (PEM). Managers only: it lives in the raft store.
    #[serde(rename = "CAKey")]
    pub ca_key: String,
    /// A root rotation under way (`swarm ca --rotate`). Managers only.
    #[serde(
        rename = "RootRotation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub root_rotation: Option<RootRotation>,
    /// The unlock key (`SWMKEY-1-...`) while autolock is on: every manager keeps its data key
    /// sealed with it ([`crate::keys`]). Managers only; the raft store it lives in is sealed.
    #[serde(
        rename = "UnlockKey",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub unlock_key: String,
}

/// A root rotation under way: the new root, its key, and the new root cross-signed by the
/// current one (SwarmKit's). Until every node holds a certificate of the new root, nodes trust
/// both roots and certificates are signed by the new key with the cross-signed root along;
/// then the new root replaces the old, whose key is forgotten, and certificates under it are
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotation {
    /// The new root certificate (PEM).
    #[serde(rename = "CACert")]
    pub ca_cert: String,
    /// Its private key (PEM).
    #[serde(rename = "CAKey")]
    pub ca_key: String,
    /// The new root's key, certified by the current root (PEM).
    #[serde(rename = "CrossSignedCACert")]
    pub cross_signed: String,
}

impl ClusterRecord {
    /// The roots nodes are to trust: the current one, and the new one during a rotation (the
    /// current one first: join tokens pin it).
    pub fn trust_bundle(&self) -> String {
        match &self.root_rotation {
            None => self.cluster.tls_info.trust_root.clone(),
            Some(r) => format!("{}{}", self.cluster.tls_info.trust_root, r.ca_cert),
        }
    }

    /// The CA that signs certificates now (the new root during a rotation).
    pub(super) fn signer(&self) -> Result<(RootCa, String), Status> {
        let load = |cert: &str, key: &str| {
            RootCa::from_pem(cert, key)
                .map_err(|e| Status::internal(format!("loading the root CA: {e}")))
        };
        match &self.root_rotation {
            None => Ok((
                load(&self.cluster.tls_info.trust_root, &self.ca_key)?,
                String::new(),
            )),
            Some(r) => Ok((load(&r.ca_cert, &r.ca_key)?, r.cross_signed.clone())),
        }
    }

    /// How often nodes send heartbeats.
    pub fn heartbeat_period(&self) -> Duration {
        Some(Duration::from_nanos(
            self.cluster.spec.dispatcher.heartbeat_period,
        ))
        .filter(|p| !p.is_zero())
        .unwrap_or(DEFAULT_HEARTBEAT)
    }

    /// The identity (subject, public key) of the CA that signs certificates now.
    pub fn issuer(&self) -> (String, String) {
        let pem = self
            .root_rotation
            .as_ref()
            .map_or(&self.cluster.tls_info.trust_root, |r| &r.ca_cert);
        ca::certs_der(pem)
            .first()
            .and_then(|der| ca::issuer_identity(der))
            .unwrap_or_default()
    }
}

/// The cluster object and its record, as the store has it now.
pub(super) fn cluster(inner: &Inner) -> Result<(Object, ClusterRecord), Status> {
    let object = inner
        .store
        .view(|tx| tx.list(Kind::Cluster).next().cloned())
        .ok_or_else(|| Status::failed_precondition("the swarm has no cluster object yet"))?;
    let record: ClusterRecord = serde_json::from_value(object.body.clone()).map_err(json_error)?;
    Ok((object, record))
}

/// How often nodes send heartbeats, as the cluster says.
pub(super) fn heartbeat_period(inner: &Inner) -> Duration {
    cluster(inner).map_or(DEFAULT_HEARTBEAT, |(_, record)| record.heartbeat_period())
}

/// The heartbeat period of a swarm that says none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// The swarm's VXLAN port.
pub(super) fn data_path_port(inner: &Inner) -> u16 {
    cluster(inner).map_or(0, |(_, c)| c.cluster.data_path_port)
}
