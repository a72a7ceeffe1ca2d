//! Certificates made for a test with `rcgen` (ECDSA P-256): a CA, server certificates signed by
//! it, client certificates (valid, expired, from another CA), written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};

/// A CA that signs certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses); (certificate, key) PEM.
    pub fn server(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "keelmq test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with common name `cn` (and organisation "Fleet"), valid now or
    /// `expired` since 2021; (certificate, key) PEM.
    pub fn client(&self, cn: &str, expired: bool) -> (String, String) {
        self.client_numbered(cn, expired, None)
    }

    /// [`Self::client`] with serial number `serial` (to revoke it).
    pub fn client_numbered(
        &self,
        cn: &str,
        expired: bool,
        serial: Option<u64>,
    ) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.serial_number = serial.map(SerialNumber::from);
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Fleet");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        self.sign(params)
    }

    /// A CRL revoking the certificates with these serial numbers, PEM.
    pub fn crl(&self, revoked: &[u64]) -> String {
        let now = time_now();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::days(1),
            next_update: now + time::Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&n| RevokedCertParams {
                    serial_number: SerialNumber::from(n),
                    revocation_time: now - time::Duration::hours(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `pem` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// The files of one test's TLS setup.
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A server certificate for "wrong.example" only (by the same CA).
    pub wrong_name_cert: PathBuf,
    pub wrong_name_key: PathBuf,
    /// Client "car-17" (CA-signed), an expired one, and one from another CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
    pub other_ca: PathBuf,
    /// Client "car-13" (CA-signed, serial 4242) and a CRL of the CA that revokes it.
    pub revoked_cert: PathBuf,
    pub revoked_key: PathBuf,
    pub crl: PathBuf,
}

impl TlsFiles {
    /// A fresh set in `dir`; the server certificate names `localhost` and `127.0.0.1`.
    pub fn new(dir: &Path) -> TlsFiles {
        let ca = Ca::new("KeelMQ test CA");
        let other = Ca::new("Someone else's CA");
        let (server_cert, server_key) = ca.server(&["localhost", "127.0.0.1"]);
        let (wrong_cert, wrong_key) = ca.server(&["wrong.example"]);
        let (client_cert, client_key) = ca.client("car-17", false);
        let (expired_cert, expired_key) = ca.client("car-old", true);
        let (stranger_cert, stranger_key) = other.client("car-17", false);
        let (revoked_cert, revoked_key) = ca.client_numbered("car-13", false, Some(4242));
        TlsFiles {
            dir: dir.to_path_buf(),
            ca: write(dir, "ca.pem", &ca.pem),
            server_cert: write(dir, "server.pem", &server_cert),
            server_key: write(dir, "server.key", &server_key),
            wrong_name_cert: write(dir, "wrong.pem", &wrong_cert),
            wrong_name_key: write(dir, "wrong.key", &wrong_key),
            client_cert: write(dir, "client.pem", &client_cert),
            client_key: write(dir, "client.key", &client_key),
            expired_cert: write(dir, "expired.pem", &expired_cert),
            expired_key: write(dir, "expired.key", &expired_key),
            stranger_cert: write(dir, "stranger.pem", &stranger_cert),
            stranger_key: write(dir, "stranger.key", &stranger_key),
            other_ca: write(dir, "other-ca.pem", &other.pem),
            revoked_cert: write(dir, "revoked.pem", &revoked_cert),
            revoked_key: write(dir, "revoked.key", &revoked_key),
            crl: write(dir, "crl.pem", &ca.crl(&[4242])),
        }
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
