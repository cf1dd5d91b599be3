//! A certificate authority made for one test (or benchmark run): TLS on the services'
//! listeners and on NATS, and client certificates for mTLS.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA that signs certificates for 127.0.0.1 and localhost.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// Its certificate, PEM: what clients trust.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for 127.0.0.1 and localhost named `name`, and its key, PEM.
    pub fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate it signed to `dir`/server.{crt,key}, each file
    /// replaced at once (written aside, then renamed), as cert-manager does.
    pub fn issue_server(&self, dir: &Path) {
        let (cert, key) = self.leaf("taskwire-server");
        for (name, pem) in [("server.key", key), ("server.crt", cert)] {
            let tmp = dir.join(format!("{name}.new"));
            std::fs::write(&tmp, pem).expect("write");
            std::fs::rename(&tmp, dir.join(name)).expect("rename");
        }
    }
}
