//! The cluster's certificate authority and join tokens, as SwarmKit has them.
//!
//! - The root CA is ECDSA P-256, valid 20 years, with common name `swarm-ca`.
//! - Node certificates carry the node ID (CN), its role (OU: `swarm-manager` or `swarm-worker`)
//!   and the cluster ID (O). They are valid 90 days by default and backdated 1 hour.
//! - A join token is `SWMTKN-1-<digest>-<secret>`:
//!   - the digest is the SHA-256 of the root certificate (DER), in base 36, 50 digits;
//!   - the secret is 16 random bytes, in base 36, 25 digits.
//!
//!   A joining node checks the manager's CA against the digest before it sends anything. The
//!   secret says which role it may join as.
//!
//! This module is the pure part: generation, parsing and signing. Who holds the key, and where
//! tokens are checked, belongs to the managers' API.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};

/// The root CA's common name (SwarmKit's).
pub const ROOT_CN: &str = "swarm-ca";
/// How long the root CA is valid.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a node certificate is valid by default (2160 h, SwarmKit's).
pub const NODE_VALIDITY: Duration = Duration::from_secs(2160 * 3600);
/// Certificates start this long before they are issued (clock skew between nodes).
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// A join token's prefix and version.
pub const TOKEN_PREFIX: &str = "SWMTKN-1-";
/// Base-36 digits of a token's CA digest (a 256-bit number).
pub const DIGEST_DIGITS: usize = 50;
/// Base-36 digits of a token's secret (a 128-bit number).
pub const SECRET_DIGITS: usize = 25;

/// What can go wrong with the CA, a certificate or a token.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Generating, parsing or signing failed.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: rcgen::Error,
    },
    /// The system's random source failed.
    #[error("reading random bytes: {0}")]
    Random(#[source] std::io::Error),
    /// Text that should hold a PEM certificate does not.
    #[error("not a PEM certificate: {0}")]
    Pem(&'static str),
    /// A join token that is not one.
    #[error(
        "invalid join token: {0} (a token looks like SWMTKN-1-<50 base-36 digits>-<25 base-36 digits>)"
    )]
    Token(String),
}

fn crypto(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Crypto { what, source }
}

/// A node's role: the swarm's, which its certificate carries as its OU.
pub use shoal_api::swarm::Role;

/// The certificate's organisational unit for `role` (SwarmKit's names).
pub const fn unit(role: Role) -> &'static str {
    match role {
        Role::Manager => "swarm-manager",
        Role::Worker => "swarm-worker",
    }
}

/// Who a node certificate is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    /// The node's ID (the certificate's CN).
    pub node_id: String,
    /// Its role (OU).
    pub role: Role,
    /// The cluster's ID (O).
    pub cluster_id: String,
}

/// The cluster's root CA: its certificate and its private key.
pub struct RootCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("RootCa")
            .field("digest", &self.digest())
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

/// The shape of every Shoal root: CN `swarm-ca`, an unconstrained CA, 20 years from an hour
/// ago.
fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, ROOT_CN);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, ROOT_VALIDITY);
    params
}

/// The shortest certificate lifetime `--cert-expiry` takes (SwarmKit's).
pub const MIN_NODE_VALIDITY: Duration = Duration::from_secs(3600);

/// `--cert-expiry` as stored (nanoseconds): below an hour (or unset), the default.
pub fn node_validity(nanos: u64) -> Duration {
    let asked = Duration::from_nanos(nanos);
    if asked < MIN_NODE_VALIDITY {
        NODE_VALIDITY
    } else {
        asked
    }
}

/// Checks `--cert-expiry` as a user gives it.
pub fn check_cert_expiry(seconds: u64) -> Result<(), String> {
    if Duration::from_secs(seconds) < MIN_NODE_VALIDITY {
        return Err("minimum certificate expiry time is: 1h0m0s".into());
    }
    if seconds > ROOT_VALIDITY.as_secs() {
        return Err("a certificate cannot outlive its root CA (20 years)".into());
    }
    Ok(())
}

/// When a certificate valid from `not_before` to `not_after` (Unix seconds) is renewed: at
/// `fraction` of its lifetime, which the caller draws at random in [0.5, 0.8) as SwarmKit does,
/// so that a swarm's nodes do not all renew at once.
pub fn renewal_time(not_before: i64, not_after: i64, fraction: f64) -> i64 {
    let fraction = fraction.clamp(0.5, 0.8);
    let lifetime = (not_after - not_before).max(0) as f64;
    not_before + (lifetime * fraction) as i64
}

/// A random fraction in [0.5, 0.8): where in its lifetime a certificate is renewed.
pub fn renewal_fraction() -> f64 {
    let mut bytes = [0_u8; 4];
    // Without randomness, the middle of the window: still renewed in time.
    if getrandom::getrandom(&mut bytes).is_err() {
        return 0.65;
    }
    0.5 + 0.3 * (f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0))
}

/// What a certificate says of itself, for renewal and for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Valid from (Unix seconds).
    pub not_before: i64,
    /// Valid until (Unix seconds).
    pub not_after: i64,
}

impl CertFacts {
    /// Reads the first certificate of `pem`.
    pub fn of(pem: &str) -> Result<Self, CaError> {
        let der = cert_der(pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| CaError::Pem("the block is not an X.509 certificate"))?;
        Ok(Self {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// `not_after` as RFC 3339.
    pub fn expiry(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.not_after)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    }
}

/// Every certificate in `pem`, as DER, in order.
pub fn certs_der(pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut all = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            inside = true;
            body.clear();
        } else if line.starts_with("-----END CERTIFICATE-----") {
            inside = false;
            if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&body) {
                all.push(der);
            }
        } else if inside {
            body.push_str(line.trim());
        }
    }
    all
}

/// A CA certificate's identity as nodes report their issuer: (subject, public key), each the
/// base64 of its DER.
pub fn issuer_identity(ca_der: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let (_, cert) = x509_parser::parse_x509_certificate(ca_der).ok()?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    Some((b64(cert.subject().as_raw()), b64(cert.public_key().raw)))
}

/// The issuer of the certificate `chain` begins with: of the other certificates of `chain`
/// (a cross-signed root rides along during a rotation) and of `roots`, the one whose key
/// signed it; its identity as [`issuer_identity`] gives it.
pub fn signer_of(chain: &str, roots: &str) -> Option<(String, String)> {
    let certs = certs_der(chain);
    let (leaf, rest) = certs.split_first()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf).ok()?;
    rest.iter()
        .cloned()
        .chain(certs_der(roots))
        .find(|candidate| {
            x509_parser::parse_x509_certificate(candidate)
                .is_ok_and(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
        })
        .and_then(|ca| issuer_identity(&ca))
}

impl RootCa {
    /// A new root CA.
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(crypto("generating the root key"))?;
        let params = root_params();
        let cert = params
            .self_signed(&key)
            .map_err(crypto("signing the root certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// The CA from its certificate and key, as PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(crypto("reading the root key"))?;
        let der = cert_der(cert_pem)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der: der,
            key,
        })
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM (to keep it, encrypted, in the store).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The root certificate's digest as join tokens carry it.
    pub fn digest(&self) -> String {
        digest_of(&self.cert_der)
    }

    /// The identity nodes report for certificates this CA signs ([`issuer_identity`]).
    pub fn identity(&self) -> (String, String) {
        issuer_identity(&self.cert_der).unwrap_or_default()
    }

    /// `new`'s root certificate cross-signed by this CA: the same subject and key as `new`'s,
    /// issued by this one, with a serial of its own. A node that still trusts only this root
    /// accepts a certificate signed by `new` when this one rides along with it.
    pub fn cross_sign(&self, new: &RootCa) -> Result<String, CaError> {
        let mut params = root_params();
        let mut serial = [0_u8; 20];
        getrandom::getrandom(&mut serial).map_err(|e| CaError::Random(e.into()))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(crypto("reading the current root certificate"))?;
        let cert = params
            .signed_by(&new.key, &issuer)
            .map_err(crypto("cross-signing the new root"))?;
        Ok(cert.pem())
    }

    /// Signs a node's certificate request. The identity comes from the CA, not the request:
    /// only the request's public key is used.
    pub fn sign(
        &self,
        csr_pem: &str,
        node: &NodeIdentity,
        lifetime: Duration,
    ) -> Result<String, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(crypto("reading the certificate request"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.node_id.as_str());
        dn.push(DnType::OrganizationalUnitName, unit(node.role));
        dn.push(DnType::OrganizationName, node.cluster_id.as_str());
        csr.params.distinguished_name = dn;
        csr.params.is_ca = IsCa::NoCa;
        // The role and the node ID as DNS names: TLS clients check `swarm-manager` (a worker's
        // certificate cannot serve as a manager's).
        let dns = |name: &str| {
            rcgen::string::Ia5String::try_from(name)
                .map(rcgen::SanType::DnsName)
                .map_err(crypto("naming the node certificate"))
        };
        csr.params.subject_alt_names = vec![dns(unit(node.role))?, dns(&node.node_id)?];
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        csr.params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut csr.params, lifetime);
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(crypto("reading the root certificate"))?;
        let cert = csr
            .signed_by(&issuer)
            .map_err(crypto("signing the node certificate"))?;
        Ok(cert.pem())
    }
}

/// The DER of the first certificate in `pem`, checked to parse as a certificate.
fn cert_der(pem: &str) -> Result<Vec<u8>, CaError> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err(CaError::Pem("no BEGIN CERTIFICATE block"));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| CaError::Pem("the block is not base64"))?;
    x509_parser::parse_x509_certificate(&der)
        .map_err(|_| CaError::Pem("the block is not an X.509 certificate"))?;
    Ok(der)
}

/// A new key pair and certificate request for a node (the key stays with the node).
pub fn node_request() -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(crypto("generating the node key"))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(crypto("making the certificate request"))?;
    let pem = csr
        .pem()
        .map_err(crypto("encoding the certificate request"))?;
    Ok((pem, key.serialize_pem()))
}

/// `bytes` as a big-endian number, in base 36 (digits then lower-case letters), left-padded
/// with zeros to `width` digits.
fn base36(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::new();
    while number.iter().any(|&b| b != 0) {
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 36) as u8;
            remainder = value % 36;
        }
        digits.push(char::from_digit(remainder, 36).unwrap_or('0'));
    }
    while digits.len() < width {
        digits.push('0');
    }
    digits.iter().rev().collect()
}

/// The token digest of the first certificate in `pem`.
pub fn pem_digest(pem: &str) -> Result<String, CaError> {
    cert_der(pem).map(|der| digest_of(&der))
}

/// A random ID of 25 base-36 digits, as SwarmKit's node, cluster and task IDs.
pub fn random_id() -> Result<String, CaError> {
    let mut bytes = [0_u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| CaError::Random(e.into()))?;
    Ok(base36(&bytes, SECRET_DIGITS))
}

/// A random non-zero 64-bit number (raft IDs).
pub fn random_u64() -> Result<u64, CaError> {
    let mut bytes = [0_u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| CaError::Random(e.into()))?;
    Ok(u64::from_le_bytes(bytes).max(1))
}

/// The digest join tokens carry for a root certificate (DER).
pub fn digest_of(cert_der: &[u8]) -> String {
    base36(&Sha256::digest(cert_der), DIGEST_DIGITS)
}

/// A join token: the digest of the CA to trust, and the secret of a role.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The root CA's digest.
    pub digest: String,
    /// The secret.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is a credential: never in logs.
        f.debug_struct("JoinToken")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new token for `ca` with a fresh random secret.
    pub fn generate(ca: &RootCa) -> Result<Self, CaError> {
        let mut secret = [0_u8; 16];
        getrandom::getrandom(&mut secret).map_err(|e| CaError::Random(e.into()))?;
        Ok(Self {
            digest: ca.digest(),
            secret: base36(&secret, SECRET_DIGITS),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.digest, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = CaError;

    fn from_str(token: &str) -> Result<Self, CaError> {
        let token = token.trim();
        let Some(rest) = token.strip_prefix("SWMTKN-") else {
            return Err(CaError::Token("it does not start with SWMTKN-".into()));
        };
        let Some(rest) = rest.strip_prefix("1-") else {
            let version = rest.split('-').next().unwrap_or_default();
            return Err(CaError::Token(format!(
                "version {version:?} is not supported (only 1)"
            )));
        };
        let parts: Vec<&str> = rest.split('-').collect();
        let [digest, secret] = parts[..] else {
            return Err(CaError::Token(format!(
                "expected two parts after SWMTKN-1-, found {}",
                parts.len()
            )));
        };
        let base36_digits = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        };
        for (what, part, digits) in [
            ("CA digest", digest, DIGEST_DIGITS),
            ("secret", secret, SECRET_DIGITS),
        ] {
            if part.len() != digits || !base36_digits(part) {
                return Err(CaError::Token(format!(
                    "its {what} must be {digits} base-36 digits (0-9, a-z), not {} characters",
                    part.len()
                )));
            }
        }
        Ok(Self {
            digest: digest.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_pads_and_converts() {
        assert_eq!(base36(&[0], 3), "000");
        assert_eq!(base36(&[35], 1), "z");
        assert_eq!(base36(&[1, 0], 4), "0074"); // 256 = 7*36 + 4
        assert_eq!(
            base36(&[0xff; 32], 0).len(),
            DIGEST_DIGITS,
            "2^256 - 1 has 50 digits"
        );
        assert_eq!(
            base36(&[0xff; 16], 0).len(),
            SECRET_DIGITS,
            "2^128 - 1 has 25 digits"
        );
    }

    #[test]
    fn tokens_round_trip_and_name_what_is_wrong() {
        let ca = RootCa::generate().expect("a CA");
        let token = JoinToken::generate(&ca).expect("a token");
        let text = token.to_string();
        assert!(text.starts_with("SWMTKN-1-"));
        assert_eq!(text.len(), 9 + 50 + 1 + 25);
        assert_eq!(text.parse::<JoinToken>().expect("parses"), token);
        assert_eq!(token.digest, ca.digest());
        let cases = [
            ("nonsense", "does not start with SWMTKN-"),
            ("SWMTKN-2-abc-def", "version \"2\" is not supported"),
            ("SWMTKN-1-abc", "expected two parts"),
            (
                &text[..text.len() - 1],
                "its secret must be 25 base-36 digits",
            ),
            (
                &text.replacen("SWMTKN-1-", "SWMTKN-1-X", 1)[..],
                "its CA digest must be 50",
            ),
        ];
        for (input, message) in cases {
            let err = input.parse::<JoinToken>().expect_err(input).to_string();
            assert!(err.contains(message), "{input}: {err}");
            assert!(err.starts_with("invalid join token"), "{err}");
        }
        assert!(
            !format!("{token:?}").contains(&token.secret),
            "the secret stays out of logs"
        );
    }

    #[test]
    fn a_cross_signed_root_bridges_old_trust_to_new_certificates() {
        let old = RootCa::generate().expect("the old CA");
        let new = RootCa::generate().expect("the new CA");
        let cross = old.cross_sign(&new).expect("cross-signed");
        let cross_der = certs_der(&cross);
        let (_, cross_cert) = x509_parser::parse_x509_certificate(&cross_der[0]).expect("parses");
        let (_, new_cert) = x509_parser::parse_x509_certificate(&new.cert_der).expect("parses");
        let (_, old_cert) = x509_parser::parse_x509_certificate(&old.cert_der).expect("parses");
        // The new root's subject and key, issued and signed by the old root, its own serial.
        assert_eq!(cross_cert.subject(), new_cert.subject());
        assert_eq!(cross_cert.public_key().raw, new_cert.public_key().raw);
        assert_ne!(cross_cert.raw_serial(), new_cert.raw_serial());
        cross_cert
            .verify_signature(Some(old_cert.public_key()))
            .expect("signed by the old root");
        // A leaf of the new root, with the cross-signed root along: its signer is the new key,
        // whichever roots are trusted.
        let (csr, _key) = node_request().expect("a request");
        let node = NodeIdentity {
            node_id: "n".into(),
            role: Role::Worker,
            cluster_id: "c".into(),
        };
        let leaf = new.sign(&csr, &node, NODE_VALIDITY).expect("signed");
        let chain = format!("{leaf}{cross}");
        assert_eq!(signer_of(&chain, old.cert_pem()), Some(new.identity()));
        assert_eq!(signer_of(&leaf, new.cert_pem()), Some(new.identity()));
        assert_eq!(signer_of(&leaf, old.cert_pem()), None);
        let old_leaf = old.sign(&csr, &node, NODE_VALIDITY).expect("signed");
        let both = format!("{}{}", old.cert_pem(), new.cert_pem());
        assert_eq!(signer_of(&old_leaf, &both), Some(old.identity()));
    }

    #[test]
    fn certificates_renew_between_half_and_four_fifths_of_their_lifetime() {
        let (from, to) = (1_000, 1_000 + 100 * 3600);
        assert_eq!(renewal_time(from, to, 0.5), from + 50 * 3600);
        assert_eq!(renewal_time(from, to, 0.0), from + 50 * 3600);
        assert_eq!(renewal_time(from, to, 1.0), from + 80 * 3600);
        for _ in 0..1_000 {
            let f = renewal_fraction();
            assert!((0.5..0.8).contains(&f), "{f}");
        }
        assert_eq!(node_validity(0), NODE_VALIDITY);
        assert_eq!(node_validity(3_600_000_000_000), MIN_NODE_VALIDITY);
        assert!(check_cert_expiry(3_599).is_err());
        assert!(check_cert_expiry(3_600).is_ok());
    }

    #[test]
    fn node_certificates_carry_the_identity_the_ca_gives_and_chain_to_the_root() {
        let ca = RootCa::generate().expect("a CA");
        let (csr, _key) = node_request().expect("a request");
        let node = NodeIdentity {
            node_id: "n0d3id".into(),
            role: Role::Manager,
            cluster_id: "c1u5t3r".into(),
        };
        let pem = ca.sign(&csr, &node, NODE_VALIDITY).expect("signed");
        let der = cert_der(&pem).expect("a certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parses");
        let subject = cert.subject().to_string();
        for part in ["CN=n0d3id", "OU=swarm-manager", "O=c1u5t3r"] {
            assert!(subject.contains(part), "{subject}");
        }
        assert_eq!(cert.issuer().to_string(), "CN=swarm-ca");
        let ca_der = cert_der(ca.cert_pem()).expect("the root");
        let (_, root) = x509_parser::parse_x509_certificate(&ca_der).expect("parses");
        cert.verify_signature(Some(root.public_key()))
            .expect("signed by the root CA");
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, (NODE_VALIDITY + BACKDATE).as_secs() as i64);
        // Reloaded from PEM, the CA is the same CA.
        let again = RootCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reloads");
        assert_eq!(again.digest(), ca.digest());
    }
}
