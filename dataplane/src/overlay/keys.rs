//! WireGuard keys: 32-byte X25519 keys written as base64, the way `wg genkey` and `wg pubkey`
//! print them.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;

/// A WireGuard key (private or public). Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

/// A string that is not a WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a WireGuard key: want 44 characters of base64 for 32 bytes, as `wg genkey` prints")]
pub struct BadKey;

impl Key {
    /// A new private key from the kernel's random source.
    pub fn generate() -> std::io::Result<Key> {
        let mut bytes = [0u8; 32];
        let mut filled = 0;
        while filled < bytes.len() {
            // SAFETY: the pointer and length describe the unfilled tail of `bytes`, which lives
            // for the whole call.
            let n = unsafe {
                libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
                continue;
            }
            filled += n as usize;
        }
        Ok(Key(bytes))
    }

    /// The public key of this private key.
    pub fn public(&self) -> Key {
        Key(x25519::PublicKey::from(&self.secret()).to_bytes())
    }

    /// This key as an X25519 private key.
    pub fn secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }

    /// This key as an X25519 public key.
    pub fn as_public(&self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl FromStr for Key {
    type Err = BadKey;

    fn from_str(s: &str) -> Result<Self, BadKey> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| BadKey)?;
        Ok(Key(bytes.try_into().map_err(|_| BadKey)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_derives_the_public_key_like_wg() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let private = Key(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            private.public().0,
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        let text = private.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<Key>(), Ok(private));
    }

    #[test]
    fn refuses_what_is_not_a_key() {
        for bad in [
            "",
            "abc",
            "!!!!",
            &STANDARD.encode([0u8; 31]),
            &STANDARD.encode([0u8; 33]),
        ] {
            assert_eq!(bad.parse::<Key>(), Err(BadKey), "{bad:?}");
        }
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(Key::generate().unwrap(), Key::generate().unwrap());
    }

    fn hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
