//! Why a call between nodes failed, in a form the program that made it can act on.
//!
//! A gRPC status carries a code and a message for people; the few failures a caller must tell
//! apart to decide what to do next also carry a [`Reason`], in the status's `shoal-reason`
//! metadata (sent as a trailer, passed on unchanged when a manager forwards a leader's answer):
//!
//! | reason | code | who acts on it |
//! |---|---|---|
//! | [`Reason::NoLeader`] | `UNAVAILABLE` | a manager forwarding a call passes it on as it came |
//! | [`Reason::NodeRemoved`] | `NOT_FOUND` | a node heartbeating leaves the swarm |
//! | [`Reason::Stale`] | `ABORTED` | a read-modify-write reads again and retries |
//! | [`Reason::Exists`] | `ALREADY_EXISTS` | a create-or-replace that lost a race retries |

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// The metadata key a reason travels under.
pub const REASON_KEY: &str = "shoal-reason";

/// Why a call failed (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The swarm has no leader this manager can reach.
    NoLeader,
    /// The calling node is no longer in the swarm: it was removed (`node rm`).
    NodeRemoved,
    /// A write was made from a version of an object that has changed since.
    Stale,
    /// A create named an ID that exists.
    Exists,
}

impl Reason {
    /// Every reason, for parsing.
    const ALL: [Self; 4] = [Self::NoLeader, Self::NodeRemoved, Self::Stale, Self::Exists];

    /// Its name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoLeader => "no-leader",
            Self::NodeRemoved => "node-removed",
            Self::Stale => "stale",
            Self::Exists => "exists",
        }
    }

    /// The gRPC code a status with this reason has.
    pub const fn code(self) -> Code {
        match self {
            Self::NoLeader => Code::Unavailable,
            Self::NodeRemoved => Code::NotFound,
            Self::Stale => Code::Aborted,
            Self::Exists => Code::AlreadyExists,
        }
    }

    /// A status saying `message`, carrying this reason.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(REASON_KEY, MetadataValue::from_static(self.as_str()));
        Status::with_metadata(self.code(), message, metadata)
    }

    /// The reason `status` carries, if any.
    pub fn of(status: &Status) -> Option<Self> {
        let value = status.metadata().get(REASON_KEY)?.to_str().ok()?;
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }
}
