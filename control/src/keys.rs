//! Encryption at rest: what a manager writes under its data root is sealed.
//!
//! - The **data key** (DEK, 256 bits, random per manager) seals every raft log record and every
//!   snapshot with XChaCha20-Poly1305 (a random 192-bit nonce per message, the message's purpose
//!   as associated data, so a log record cannot pass for a snapshot). The raft store holds the
//!   cluster's CA key, the unlock key, services' environments, secrets and configs: none of it
//!   reaches the disk in the clear.
//! - The data key lives in `<raft dir>/keys.json` (0600). Without autolock it is stored as is
//!   (Docker does the same: the key sits beside the data, and what it buys is that no file on
//!   its own gives the store away). With **autolock** (`swarm init --autolock`, `swarm update
//!   --autolock=true`) it is stored sealed with the **key-encryption key**, the cluster's unlock
//!   key (`SWMKEY-1-...`, 256 random bits), which is kept only in the raft store and in the
//!   operator's hands. A manager that restarts then finds its data key sealed and stays
//!   *locked* until `swarm unlock` gives the key back.
//! - Every manager re-seals its own data key when the cluster's unlock key changes (autolock
//!   on or off, `swarm unlock-key --rotate`): [`DataKeys::set_unlock_key`].
//! - Under autolock the manager's TLS key (`swarm/certs/node.key`) is sealed too, with the data
//!   key ([`DataKeys::also_seal`]), as Docker encrypts it: a copy of a locked manager's data root
//!   holds no usable key. Sealing it with the data key rather than the unlock key keeps a crash
//!   at any point recoverable: the data key only changes sealing when autolock is turned on or
//!   off, and the order of the two writes leaves a state the next start can read.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use serde::{Deserialize, Serialize};

/// The file holding a manager's data key, in its raft directory.
pub const KEYS_FILE: &str = "keys.json";
/// The version of [`KEYS_FILE`]'s and the sealed records' format.
const FORMAT: u32 = 1;
const NONCE: usize = 24;
/// Bytes sealing adds to a message: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = NONCE + 16;
/// Docker's prefix for unlock keys.
const UNLOCK_PREFIX: &str = "SWMKEY-1-";

/// What a sealed message is for: the associated data, so one cannot be read as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A raft log record.
    LogRecord,
    /// A raft snapshot file.
    Snapshot,
    /// The data key, sealed with the unlock key.
    DataKey,
    /// A PEM key file, sealed with the data key.
    KeyFile,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Self::LogRecord => b"shoal raft log record v1",
            Self::Snapshot => b"shoal raft snapshot v1",
            Self::DataKey => b"shoal data key v1",
            Self::KeyFile => b"shoal key file v1",
        }
    }
}

/// Why sealed data could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The data key is sealed with an unlock key and none was given.
    #[error(
        "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"shoal swarm unlock\" (or \"docker swarm unlock\") to unlock it."
    )]
    Locked,
    /// The unlock key given does not open the data key.
    #[error("swarm could not be unlocked: invalid key provided")]
    InvalidKey,
    /// Text that is not an unlock key.
    #[error("invalid unlock key: {0}")]
    Malformed(String),
    /// A raft directory written before encryption at rest.
    #[error(
        "{0} holds a raft log written by a shoald without encryption at rest; this version cannot read it: leave the swarm on this node (`shoal swarm leave --force`) and join it again"
    )]
    Unencrypted(PathBuf),
    /// The key file is damaged or of another format.
    #[error("{path}: {why}")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0_u8; N];
    getrandom::getrandom(&mut bytes).map_err(io::Error::other)?;
    Ok(bytes)
}

fn seal_with(key: &[u8; 32], purpose: Purpose, plain: &[u8]) -> io::Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce: [u8; NONCE] = random()?;
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: purpose.aad(),
            },
        )
        .map_err(|_| io::Error::other("sealing failed"))?;
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open_with(key: &[u8; 32], purpose: Purpose, sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, body) = sealed.split_at_checked(NONCE)?;
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: purpose.aad(),
            },
        )
        .ok()
}

/// A manager's data key: seals what raft writes.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A new random key.
    pub fn generate() -> io::Result<Self> {
        random().map(Self)
    }

    /// `plain` sealed: nonce, ciphertext and tag.
    pub fn seal(&self, purpose: Purpose, plain: &[u8]) -> io::Result<Vec<u8>> {
        seal_with(&self.0, purpose, plain)
    }

    /// What [`DataKey::seal`] sealed for `purpose`; `None` if the bytes were not sealed by this
    /// key for this purpose, or were changed.
    pub fn open(&self, purpose: Purpose, sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.0, purpose, sealed)
    }
}

/// The cluster's unlock key (the key-encryption key under autolock), written
/// `SWMKEY-1-<base64>` as Docker writes it.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey([u8; 32]);

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

impl UnlockKey {
    /// A new random key.
    pub fn generate() -> io::Result<Self> {
        random().map(Self)
    }
}

impl fmt::Display for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{UNLOCK_PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0)
        )
    }
}

impl FromStr for UnlockKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let body = text.strip_prefix(UNLOCK_PREFIX).ok_or_else(|| {
            KeyError::Malformed(format!("it does not start with {UNLOCK_PREFIX}"))
        })?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body.trim_end_matches('='))
            .map_err(|e| KeyError::Malformed(format!("not base64 after the prefix: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::Malformed(format!("{} bytes, want 32", b.len())))?;
        Ok(Self(bytes))
    }
}

/// [`KEYS_FILE`]'s content.
#[derive(Debug, Serialize, Deserialize)]
struct KeysFile {
    format: u32,
    /// The data key, base64, when no unlock key seals it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_key: Option<String>,
    /// The data key sealed with the unlock key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_data_key: Option<String>,
}

/// A manager's data key and how it is kept on disk. Clones share it.
#[derive(Debug, Clone)]
pub struct DataKeys {
    path: PathBuf,
    key: DataKey,
    /// The unlock key sealing the file now, if any.
    unlock: Arc<Mutex<Option<UnlockKey>>>,
    /// Key files sealed with the data key while an unlock key is set.
    also: Arc<Mutex<Vec<PathBuf>>>,
}

/// The armour of a key file sealed with a data key.
const SEALED_BEGIN: &str = "-----BEGIN SHOAL SEALED KEY-----";
const SEALED_END: &str = "-----END SHOAL SEALED KEY-----";

/// Whether the key file at `path` is sealed.
pub fn is_sealed_key_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(SEALED_BEGIN))
}

/// The PEM in the key file at `path`: as is, or opened with `key` when sealed.
pub fn read_key_file(path: &Path, key: Option<&DataKey>) -> io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let Some(body) = text.strip_prefix(SEALED_BEGIN) else {
        return Ok(text);
    };
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let key = key.ok_or_else(|| invalid("sealed, and the swarm is locked"))?;
    let body: String = body
        .trim()
        .strip_suffix(SEALED_END)
        .ok_or_else(|| invalid("a sealed key without its end line"))?
        .split_whitespace()
        .collect();
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| invalid("a sealed key that is not base64"))?;
    let plain = key
        .open(Purpose::KeyFile, &sealed)
        .ok_or_else(|| invalid("does not open with this manager's data key"))?;
    String::from_utf8(plain).map_err(|_| invalid("a sealed key that is not text"))
}

/// Writes `pem` to `path` (0600, whole and durable): sealed with `key`, or as is.
pub fn write_key_file(path: &Path, pem: &str, key: Option<&DataKey>) -> io::Result<()> {
    let text = match key {
        None => pem.to_owned(),
        Some(key) => {
            let sealed = b64(&key.seal(Purpose::KeyFile, pem.as_bytes())?);
            let mut lines = String::new();
            for chunk in sealed.as_bytes().chunks(64) {
                lines.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                lines.push('\n');
            }
            format!("{SEALED_BEGIN}\n{lines}{SEALED_END}\n")
        }
    };
    crate::durable::write_durable(path, text.as_bytes(), crate::durable::FILE_MODE)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl DataKeys {
    /// Opens the data key in `raft_dir`, or makes one if the directory holds no raft data yet.
    /// A sealed key needs `unlock`.
    pub fn open(raft_dir: &Path, unlock: Option<&UnlockKey>) -> Result<Self, KeyError> {
        let path = raft_dir.join(KEYS_FILE);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if has_raft_data(raft_dir) {
                    return Err(KeyError::Unencrypted(raft_dir.to_path_buf()));
                }
                std::fs::create_dir_all(raft_dir).map_err(io_err(raft_dir))?;
                let keys = Self {
                    path: path.clone(),
                    key: DataKey::generate().map_err(io_err(&path))?,
                    unlock: Arc::default(),
                    also: Arc::default(),
                };
                keys.write(None).map_err(io_err(&path))?;
                return Ok(keys);
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let corrupt = |why: String| KeyError::Corrupt {
            path: path.clone(),
            why,
        };
        let file: KeysFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.format != FORMAT {
            return Err(corrupt(format!(
                "format {}; this shoald reads format {FORMAT}",
                file.format
            )));
        }
        let decode = |text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| corrupt(format!("not base64: {e}")))
        };
        let (raw, unlock) = match (&file.data_key, &file.sealed_data_key) {
            (Some(plain), None) => (decode(plain)?, None),
            (None, Some(sealed)) => {
                let unlock = unlock.ok_or(KeyError::Locked)?;
                let raw = open_with(&unlock.0, Purpose::DataKey, &decode(sealed)?)
                    .ok_or(KeyError::InvalidKey)?;
                (raw, Some(unlock.clone()))
            }
            _ => {
                return Err(corrupt(
                    "want exactly one of data_key and sealed_data_key".into(),
                ));
            }
        };
        let key: [u8; 32] = raw
            .try_into()
            .map_err(|_| corrupt("the data key is not 32 bytes".into()))?;
        Ok(Self {
            path,
            key: DataKey(key),
            unlock: Arc::new(Mutex::new(unlock)),
            also: Arc::default(),
        })
    }

    /// Keeps the key file at `path` sealed with the data key while an unlock key is set (and as
    /// is otherwise), from now on; brings it to that state at once.
    pub fn also_seal(&self, path: PathBuf) -> io::Result<()> {
        self.match_sealing(&path, self.sealing())?;
        self.also
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path);
        Ok(())
    }

    /// Whether key files are sealed now (an unlock key is set).
    pub fn sealing(&self) -> bool {
        self.unlock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Key files sealed or opened to match `sealing`.
    fn reseal_files(&self, sealing: bool) -> io::Result<()> {
        let files = self.also.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for path in files {
            self.match_sealing(&path, sealing)?;
        }
        Ok(())
    }

    /// The key file at `path` sealed with the data key, or in the clear, as `sealing` says;
    /// written only when that changes it.
    fn match_sealing(&self, path: &Path, sealing: bool) -> io::Result<()> {
        if sealing == is_sealed_key_file(path) {
            return Ok(());
        }
        let pem = read_key_file(path, Some(&self.key))?;
        write_key_file(path, &pem, sealing.then_some(&self.key))
    }

    /// Whether the data key in `raft_dir` is sealed with an unlock key (so opening it needs one).
    pub fn is_sealed(raft_dir: &Path) -> bool {
        std::fs::read(raft_dir.join(KEYS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<KeysFile>(&b).ok())
            .is_some_and(|f| f.sealed_data_key.is_some())
    }

    /// The data key.
    pub fn key(&self) -> &DataKey {
        &self.key
    }

    /// Keeps the data key sealed with `unlock` (or in the clear with `None`) from now on; writes
    /// the file only when that changes.
    pub fn set_unlock_key(&self, unlock: Option<&UnlockKey>) -> io::Result<()> {
        let mut current = self.unlock.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() == unlock {
            return Ok(());
        }
        // Autolock on: the key files sealed before the data key is; off: the data key in the
        // clear before the key files are. A crash between the two leaves files the data key
        // opens, and a data key the next start can reach.
        if unlock.is_some() {
            self.reseal_files(true)?;
        }
        self.write(unlock)?;
        if unlock.is_none() {
            self.reseal_files(false)?;
        }
        *current = unlock.cloned();
        Ok(())
    }

    fn write(&self, unlock: Option<&UnlockKey>) -> io::Result<()> {
        let file = match unlock {
            None => KeysFile {
                format: FORMAT,
                data_key: Some(b64(&self.key.0)),
                sealed_data_key: None,
            },
            Some(unlock) => KeysFile {
                format: FORMAT,
                data_key: None,
                sealed_data_key: Some(b64(&seal_with(&unlock.0, Purpose::DataKey, &self.key.0)?)),
            },
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        crate::durable::write_durable(&self.path, &bytes, crate::durable::FILE_MODE)
    }
}

/// Whether `raft_dir` holds a log or a snapshot.
fn has_raft_data(raft_dir: &Path) -> bool {
    ["log", "snapshots"].iter().any(|sub| {
        std::fs::read_dir(raft_dir.join(sub)).is_ok_and(|mut entries| entries.next().is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_purpose() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(Purpose::LogRecord, b"marker-123").unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"marker-123"));
        assert_eq!(
            key.open(Purpose::LogRecord, &sealed).as_deref(),
            Some(&b"marker-123"[..])
        );
        assert_eq!(key.open(Purpose::Snapshot, &sealed), None);
        assert_eq!(
            DataKey::generate()
                .unwrap()
                .open(Purpose::LogRecord, &sealed),
            None
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(Purpose::LogRecord, &flipped), None);
        assert_eq!(key.open(Purpose::LogRecord, &sealed[..10]), None);
    }

    #[test]
    fn unlock_keys_read_back_as_docker_writes_them() {
        let key = UnlockKey::generate().unwrap();
        let text = key.to_string();
        assert!(text.starts_with("SWMKEY-1-"), "{text}");
        assert_eq!(text.len(), "SWMKEY-1-".len() + 43);
        assert_eq!(format!(" {text}\n").parse::<UnlockKey>().unwrap(), key);
        for bad in [
            "",
            "SWMKEY-1-",
            "SWMKEY-2-abc",
            "SWMKEY-1-!!!",
            "SWMKEY-1-AAAA",
        ] {
            assert!(
                matches!(bad.parse::<UnlockKey>(), Err(KeyError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_data_key_is_sealed_with_the_unlock_key_and_opens_only_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = DataKeys::open(dir.path(), None).unwrap();
        let sealed = keys.key().seal(Purpose::Snapshot, b"state").unwrap();
        assert!(!DataKeys::is_sealed(dir.path()));

        let unlock = UnlockKey::generate().unwrap();
        keys.set_unlock_key(Some(&unlock)).unwrap();
        assert!(DataKeys::is_sealed(dir.path()));
        let text = std::fs::read_to_string(dir.path().join(KEYS_FILE)).unwrap();
        assert!(!text.contains(&b64(&keys.key().0)), "{text}");
        assert!(matches!(
            DataKeys::open(dir.path(), None),
            Err(KeyError::Locked)
        ));
        assert!(matches!(
            DataKeys::open(dir.path(), Some(&UnlockKey::generate().unwrap())),
            Err(KeyError::InvalidKey)
        ));
        let reopened = DataKeys::open(dir.path(), Some(&unlock)).unwrap();
        assert_eq!(
            reopened.key().open(Purpose::Snapshot, &sealed).as_deref(),
            Some(&b"state"[..])
        );

        // Autolock off again: the key opens without one.
        reopened.set_unlock_key(None).unwrap();
        let plain = DataKeys::open(dir.path(), None).unwrap();
        assert!(plain.key().open(Purpose::Snapshot, &sealed).is_some());
    }

    #[test]
    fn key_files_are_sealed_with_the_data_key_while_autolock_is_on() {
        let dir = tempfile::tempdir().unwrap();
        let node_key = dir.path().join("node.key");
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQ\n-----END PRIVATE KEY-----\n";
        std::fs::write(&node_key, pem).unwrap();
        let keys = DataKeys::open(&dir.path().join("raft"), None).unwrap();
        keys.also_seal(node_key.clone()).unwrap();
        assert_eq!(std::fs::read_to_string(&node_key).unwrap(), pem);

        let unlock = UnlockKey::generate().unwrap();
        keys.set_unlock_key(Some(&unlock)).unwrap();
        let sealed = std::fs::read_to_string(&node_key).unwrap();
        assert!(
            is_sealed_key_file(&node_key) && !sealed.contains("PRIVATE KEY"),
            "{sealed}"
        );
        assert!(read_key_file(&node_key, None).is_err());
        assert_eq!(read_key_file(&node_key, Some(keys.key())).unwrap(), pem);
        // A new unlock key leaves the file as it is (the data key does not change).
        keys.set_unlock_key(Some(&UnlockKey::generate().unwrap()))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&node_key).unwrap(), sealed);
        keys.set_unlock_key(None).unwrap();
        assert_eq!(std::fs::read_to_string(&node_key).unwrap(), pem);
    }

    #[test]
    fn a_raft_directory_from_before_encryption_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        std::fs::write(dir.path().join("log/00000000000000000001.seg"), b"x").unwrap();
        let err = DataKeys::open(dir.path(), None).unwrap_err();
        assert!(matches!(err, KeyError::Unencrypted(_)), "{err}");
        assert!(err.to_string().contains("swarm leave --force"), "{err}");
    }
}
