//! Secrets and configs: named data kept in the raft store (sealed at rest), handed only to the
//! nodes that run a task referring to it, and mounted into those tasks. A secret's data never
//! leaves the managers through the API; a config's does. The JSON is Docker's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// Which of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// `docker secret`: mounted at `/run/secrets/<target>`, never read back.
    Secret,
    /// `docker config`: mounted at its target path, readable through the API.
    Config,
}

impl DataKind {
    /// `secret` or `config`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Config => "config",
        }
    }

    /// The largest data Docker takes: 500 KiB for a secret, 1000 KiB for a config (SwarmKit's).
    pub fn max_data(self) -> usize {
        match self {
            Self::Secret => 500 * 1024,
            Self::Config => 1000 * 1024,
        }
    }
}

impl std::fmt::Display for DataKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user gives: `docker secret create NAME FILE`, `docker config create NAME FILE`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataSpec {
    /// Its name.
    pub name: String,
    /// `--label`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The data, base64 (absent when read back for a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// A secret or a config as `inspect` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataObject {
    /// Its ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its version.
    pub version: Version,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What was given.
    pub spec: DataSpec,
}

/// Where a task finds a secret or a config: Docker's `File` of a reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileTarget {
    /// The file's name under `/run/secrets` (secrets) or its path (configs).
    pub name: String,
    /// Its owner (a number, as text; Docker's default `0`).
    #[serde(rename = "UID", default)]
    pub uid: String,
    /// Its group (same).
    #[serde(rename = "GID", default)]
    pub gid: String,
    /// Its mode (Docker's default 0444).
    #[serde(default)]
    pub mode: u32,
}

/// A task's use of a secret: `--secret source=NAME,target=FILE,uid=,gid=,mode=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretReference {
    /// Where it appears.
    #[serde(rename = "File")]
    pub file: FileTarget,
    /// Its ID (filled in from the name by the managers when left empty).
    #[serde(rename = "SecretID", default)]
    pub secret_id: String,
    /// Its name.
    #[serde(rename = "SecretName", default)]
    pub secret_name: String,
}

/// A task's use of a config: `--config source=NAME,target=PATH,uid=,gid=,mode=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReference {
    /// Where it appears.
    #[serde(rename = "File")]
    pub file: FileTarget,
    /// Its ID (filled in from the name by the managers when left empty).
    #[serde(rename = "ConfigID", default)]
    pub config_id: String,
    /// Its name.
    #[serde(rename = "ConfigName", default)]
    pub config_name: String,
}

/// The data of a secret or config a node's tasks refer to, as its assignment carries it (its
/// `Debug` leaves the data out, so no log line holds it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Secret or config.
    pub kind: DataKind,
    /// Its ID.
    pub id: String,
    /// The data, base64.
    pub data: String,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A file target given to `--secret`/`--config` as `source=NAME,target=T,uid=U,gid=G,mode=M`
/// (or just `NAME`), read as Docker's CLI reads it. `default_target` is what `target` is when
/// left out.
pub fn parse_reference(
    text: &str,
    default_target: impl FnOnce(&str) -> String,
) -> Result<(String, FileTarget), String> {
    let mut source = String::new();
    let mut file = FileTarget {
        uid: "0".into(),
        gid: "0".into(),
        mode: 0o444,
        ..Default::default()
    };
    if !text.contains('=') {
        source = text.to_owned();
    } else {
        for field in text.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("invalid field {field:?}: must be a key=value pair"))?;
            match key.trim().to_ascii_lowercase().as_str() {
                "source" | "src" => source = value.to_owned(),
                "target" => file.name = value.to_owned(),
                "uid" => file.uid = value.to_owned(),
                "gid" => file.gid = value.to_owned(),
                "mode" => {
                    file.mode = u32::from_str_radix(value, 8)
                        .map_err(|_| format!("invalid mode {value:?}: want octal, e.g. 0400"))?;
                }
                other => return Err(format!("invalid field key {other:?}")),
            }
        }
    }
    if source.is_empty() {
        return Err(format!("invalid reference {text:?}: source is required"));
    }
    if file.name.is_empty() {
        file.name = default_target(&source);
    }
    Ok((source, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_dockers_cli_reads_them() {
        let (source, file) = parse_reference("s1", str::to_owned).unwrap();
        assert_eq!(source, "s1");
        assert_eq!(
            file,
            FileTarget {
                name: "s1".into(),
                uid: "0".into(),
                gid: "0".into(),
                mode: 0o444
            }
        );
        let (source, file) =
            parse_reference("source=c1,target=/etc/c1.conf,uid=33,mode=0400", |n| {
                format!("/{n}")
            })
            .unwrap();
        assert_eq!(source, "c1");
        assert_eq!(file.name, "/etc/c1.conf");
        assert_eq!(file.uid, "33");
        assert_eq!(file.gid, "0");
        assert_eq!(file.mode, 0o400);
        let (_, file) = parse_reference("source=c1", |n| format!("/{n}")).unwrap();
        assert_eq!(file.name, "/c1");
        assert!(parse_reference("target=x", str::to_owned).is_err());
        assert!(parse_reference("source=x,mode=rw", str::to_owned).is_err());
        assert!(parse_reference("source=x,color=red", str::to_owned).is_err());
    }
}
