//! Certificates, keys and the static token file of the local control plane.
//!
//! Everything is generated fresh for every start with `rcgen`: a throw-away CA, an API server
//! serving certificate for `127.0.0.1`/`localhost` signed by it, an ECDSA P-256 service-account
//! signing key, a random bearer token for the `admin` user (group `system:masters`) and one
//! for each development user ([`super::dev_users`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

use super::Error;
use super::data_dir::write_file;
use super::dev_users::{self, DevUser};

/// Subject alternative names of the API server serving certificate.
const SERVING_SANS: [&str; 7] = [
    "127.0.0.1",
    "localhost",
    "10.96.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Paths and secrets produced by [`generate`].
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    /// PEM of the CA certificate clients must trust.
    pub ca_pem: String,
    /// The CA certificate file.
    pub ca_cert: PathBuf,
    /// The API server serving certificate.
    pub serving_cert: PathBuf,
    /// The API server serving key.
    pub serving_key: PathBuf,
    /// The service-account signing key (PKCS#8 PEM).
    pub sa_private_key: PathBuf,
    /// The service-account verification key (SPKI PEM).
    pub sa_public_key: PathBuf,
    /// The `--token-auth-file` of the API server.
    pub token_file: PathBuf,
    /// The bearer token of the `admin` user.
    pub admin_token: String,
    /// The development users, also in the token file.
    pub dev_users: Vec<DevUser>,
    /// PEM of a client certificate of user `admin` in group `system:masters`, for servers
    /// that authenticate by certificate only (the CRD server).
    pub admin_client_cert_pem: String,
    /// PEM of the key of [`Pki::admin_client_cert_pem`].
    pub admin_client_key_pem: String,
}

/// Generates all credentials into `dir` (created if missing).
pub(crate) fn generate(dir: &Path) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let (ca_params, ca_key) = ca_params_and_key()?;
    let ca_cert = cert_error("the CA certificate", ca_params.self_signed(&ca_key))?;
    let issuer = Issuer::new(ca_params, ca_key);
    let serving_key = cert_error("the serving key", KeyPair::generate())?;
    let serving_cert = cert_error(
        "the serving certificate",
        serving_params()?.signed_by(&serving_key, &issuer),
    )?;
    let client_key = cert_error("the admin client key", KeyPair::generate())?;
    let client_cert = cert_error(
        "the admin client certificate",
        admin_client_params().signed_by(&client_key, &issuer),
    )?;
    let sa_key = cert_error("the service-account key", KeyPair::generate())?;
    let admin_token = random_token()?;
    let dev_users = dev_users::generate(random_token)?;

    let pki = Pki {
        ca_pem: ca_cert.pem(),
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_private_key: dir.join("sa.key"),
        sa_public_key: dir.join("sa.pub"),
        token_file: dir.join("tokens.csv"),
        admin_token,
        dev_users,
        admin_client_cert_pem: client_cert.pem(),
        admin_client_key_pem: client_key.serialize_pem(),
    };
    write_file(&pki.ca_cert, &pki.ca_pem, false)?;
    write_file(&pki.serving_cert, &serving_cert.pem(), false)?;
    write_file(&pki.serving_key, &serving_key.serialize_pem(), true)?;
    write_file(&pki.sa_private_key, &sa_key.serialize_pem(), true)?;
    write_file(&pki.sa_public_key, &sa_key.public_key_pem(), false)?;
    let tokens = token_file_line(&pki.admin_token) + &dev_users::token_file_lines(&pki.dev_users);
    write_file(&pki.token_file, &tokens, true)?;
    Ok(pki)
}

/// Parameters and key of the self-signed CA.
fn ca_params_and_key() -> Result<(CertificateParams, KeyPair), Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "streamspace-devcluster-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    let key = cert_error("the CA key", KeyPair::generate())?;
    Ok((params, key))
}

/// Parameters of the API server serving certificate.
fn serving_params() -> Result<CertificateParams, Error> {
    let sans: Vec<String> = SERVING_SANS.iter().map(|s| (*s).to_owned()).collect();
    let mut params = cert_error("the serving certificate SANs", CertificateParams::new(sans))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    Ok(params)
}

/// Parameters of the client certificate of `admin` (`O=system:masters`).
fn admin_client_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    params
}

/// A validity window comfortably around "now" that needs no clock arithmetic.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2000, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
}

/// The `--token-auth-file` line for the admin token: `token,user,uid,group`.
fn token_file_line(token: &str) -> String {
    format!("{token},admin,admin,system:masters\n")
}

/// 32 hex characters from the kernel's random source.
pub(crate) fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Attaches a description to an `rcgen` error.
fn cert_error<T>(what: &'static str, result: Result<T, rcgen::Error>) -> Result<T, Error> {
    result.map_err(|source| Error::Certificate { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_all_files_with_expected_formats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = generate(dir.path()).expect("generate");
        let read = |p: &Path| std::fs::read_to_string(p).expect("read");
        assert!(read(&pki.ca_cert).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(read(&pki.serving_cert).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(read(&pki.sa_private_key).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(read(&pki.sa_public_key).starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            read(&pki.token_file),
            format!("{},admin,admin,system:masters\n", pki.admin_token)
                + &dev_users::token_file_lines(&pki.dev_users)
        );
        assert_eq!(pki.dev_users.len(), dev_users::DEV_USERS.len());
        assert_eq!(pki.admin_token.len(), 32);
    }
}
