//! TLS for `tls` and `wss` listeners: the rustls server configuration built from a listener's
//! files (errors name the listener's field), reloadable at run time, and the identity a
//! verified client certificate gives.

use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{ConfigError, ListenerSpec, PeerCertAs, TlsVersion};

/// A problem with listener `index`'s field `field` (or the file it names).
fn bad(index: usize, field: &str, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError::Listener {
        field: format!("listeners[{index}].{field}"),
        problem: problem.to_string(),
    }
}

/// Reads every PEM certificate in `path`; at least one.
fn certificates(
    path: &Path,
    index: usize,
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(index, field, format!("{shown}: {e}")))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(index, field, format!("{shown}: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            index,
            field,
            format!("{shown}: no PEM certificate in the file"),
        ));
    }
    Ok(certs)
}

/// The client-certificate verifier of a listener with `verify_peer`: chains to `ca_file`,
/// within their validity, for client authentication, not revoked by `crl_file`.
fn client_verifier(
    spec: &ListenerSpec,
    index: usize,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ConfigError> {
    let ca_file = spec
        .ca_file
        .as_deref()
        .ok_or_else(|| bad(index, "ca_file", "is required"))?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(ca_file, index, "ca_file")? {
        roots
            .add(ca)
            .map_err(|e| bad(index, "ca_file", format!("{}: {e}", ca_file.display())))?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl_file) = &spec.crl_file {
        let shown = crl_file.display();
        let crls = CertificateRevocationListDer::pem_file_iter(crl_file)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(index, "crl_file", format!("{shown}: {e}")))?;
        builder = builder.with_crls(crls);
    }
    if !spec.fail_if_no_peer_cert {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map_err(|e| bad(index, "ca_file", format!("{}: {e}", ca_file.display())))
}

/// The rustls configuration of listener `index` (a `tls` or `wss` one), reading its files.
pub fn server_config(spec: &ListenerSpec, index: usize) -> Result<Arc<ServerConfig>, ConfigError> {
    let cert_file = spec
        .cert_file
        .as_deref()
        .ok_or_else(|| bad(index, "cert_file", "is required"))?;
    let key_file = spec
        .key_file
        .as_deref()
        .ok_or_else(|| bad(index, "key_file", "is required"))?;
    let certs = certificates(cert_file, index, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| bad(index, "key_file", format!("{}: {e}", key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static SupportedProtocolVersion> = spec
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls13 => &rustls::version::TLS13,
            TlsVersion::Tls12 => &rustls::version::TLS12,
        })
        .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| bad(index, "versions", e))?;
    let builder = match spec.verify_peer {
        true => builder.with_client_cert_verifier(client_verifier(spec, index, &provider)?),
        false => builder.with_no_client_auth(),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| bad(index, "key_file", format!("{}: {e}", key_file.display())))?;
    let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing_key);
    if let Err(e) = certified.keys_match() {
        let problem = format!(
            "{} does not belong to the certificate in {}: {e}",
            key_file.display(),
            cert_file.display()
        );
        return Err(bad(index, "key_file", problem));
    }
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad(index, "cert_file", format!("{}: {e}", cert_file.display())))?;
    Ok(Arc::new(config))
}

/// A listener's TLS configuration, swapped whole by [`Reloadable::reload`]; each handshake
/// uses the one current when it starts.
pub struct Reloadable {
    spec: ListenerSpec,
    index: usize,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    pub fn new(spec: &ListenerSpec, index: usize) -> Result<Reloadable, ConfigError> {
        Ok(Reloadable {
            current: RwLock::new(server_config(spec, index)?),
            spec: spec.clone(),
            index,
        })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Re-reads the files; on failure the old configuration stays and the error says why.
    /// Blocking file I/O: call it off the runtime's workers.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let config = server_config(&self.spec, self.index)?;
        *self.current.write() = config;
        Ok(())
    }
}

/// The subject's Common Name and whole Distinguished Name (RFC 4514 order: most specific
/// first, e.g. `CN=car-17,O=Fleet,C=DE`) of a DER certificate.
pub fn subject_names(der: &[u8]) -> Option<(Option<String>, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let rdns: Vec<String> = subject.iter_rdn().map(rdn_to_string).collect();
    let dn = rdns.into_iter().rev().collect::<Vec<_>>().join(",");
    Some((cn, dn))
}

fn rdn_to_string(rdn: &x509_parser::x509::RelativeDistinguishedName<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    rdn.iter()
        .map(|atv| {
            let oid = atv.attr_type();
            let key = x509_parser::objects::oid2abbrev(oid, registry)
                .map(str::to_string)
                .unwrap_or_else(|_| oid.to_id_string());
            let value = atv
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|_| format!("#{}", hex(atv.attr_value().data)));
            format!("{key}={}", escape_dn_value(&value))
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a verified leaf certificate names, per `PeerCertAs`.
pub fn name_from_cert(der: &[u8], part: PeerCertAs) -> Option<String> {
    let (cn, dn) = match part {
        PeerCertAs::None => return None,
        _ => subject_names(der)?,
    };
    match part {
        PeerCertAs::Cn => cn,
        PeerCertAs::Dn => Some(dn),
        PeerCertAs::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ListenerKind;
    use rcgen::{CertificateParams, KeyPair};

    /// A self-signed certificate and its key, PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn spec(dir: &Path, cert: &str, key: &str) -> ListenerSpec {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        ListenerSpec {
            kind: ListenerKind::Tls,
            cert_file: Some(dir.join("cert.pem")),
            key_file: Some(dir.join("key.pem")),
            ..ListenerSpec::default()
        }
    }

    fn problem(spec: &ListenerSpec) -> String {
        match server_config(spec, 2) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_files_name_the_listener_field() {
        let dir = std::env::temp_dir().join(format!("keelmq-tls-unit-{}", std::process::id()));
        let (cert, key) = self_signed("a.example");
        let (_, other_key) = self_signed("b.example");
        assert_eq!(problem(&spec(&dir, &cert, &key)), "accepted");
        let e = problem(&spec(&dir, &cert, &other_key));
        assert!(
            e.contains("listeners[2].key_file") && e.contains("does not belong"),
            "{e}"
        );
        let e = problem(&spec(&dir, "not a certificate", &key));
        assert!(e.contains("listeners[2].cert_file"), "{e}");
        let e = problem(&spec(&dir, &cert, "not a key"));
        assert!(e.contains("listeners[2].key_file"), "{e}");
        let mut s = spec(&dir, &cert, &key);
        s.cert_file = Some(dir.join("missing.pem"));
        assert!(problem(&s).contains("listeners[2].cert_file"));
        let mut s = spec(&dir, &cert, &key);
        std::fs::write(dir.join("ca.pem"), "-----BEGIN NONSENSE-----\n").unwrap();
        (s.verify_peer, s.ca_file) = (true, Some(dir.join("ca.pem")));
        let e = problem(&s);
        assert!(e.contains("listeners[2].ca_file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn subject_names_in_rfc4514_order() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "DE");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Fleet, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "car-17");
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let (cn, dn) = subject_names(&der).unwrap();
        assert_eq!(cn.as_deref(), Some("car-17"));
        // Every attribute, the comma inside a value escaped (the order is the certificate's,
        // reversed).
        for part in ["CN=car-17", "O=Fleet\\, Inc", "C=DE"] {
            assert!(dn.contains(part), "{dn}");
        }
        assert_eq!(dn.matches(',').count(), 3, "{dn}");
        assert_eq!(
            name_from_cert(&der, PeerCertAs::Cn).as_deref(),
            Some("car-17")
        );
        assert_eq!(name_from_cert(&der, PeerCertAs::None), None);
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("a,b"), "a\\,b");
        assert_eq!(escape_dn_value("#x "), "\\#x\\ ");
        assert_eq!(escape_dn_value("plain"), "plain");
    }
}
