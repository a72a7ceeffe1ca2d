//! The `ldap` authenticator: binds to the directory as the client, EMQX's "LDAP bind" method.
//!
//! The client's DN is `base_dn` with `${username}` replaced by its username, DN-escaped (so
//! that a username cannot name another entry). Each login opens one connection:
//! 1. as `bind_dn` (or anonymously), look the DN up — no such entry: the client is passed on;
//! 2. bind as the DN with the client's password — success allows it, a wrong password refuses
//!    it. An empty password is refused before the bind: LDAP treats a bind with an empty
//!    password as an anonymous bind, which succeeds.
//!
//! A server that cannot be reached, answers an error or exceeds `timeout_ms` passes the
//! client on, and is logged.

use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope};

use super::{Link, Verdict, VerdictFuture};
use crate::codec::Connect;
use crate::config::LdapSpec;
use crate::hooks::Identity;
use crate::protocol::Refusal;
use crate::transport::ConnInfo;

/// LDAP result codes (RFC 4511).
const SUCCESS: u32 = 0;
const NO_SUCH_OBJECT: u32 = 32;
const INVALID_CREDENTIALS: u32 = 49;

/// One `ldap` entry of the chain.
pub struct LdapAuth {
    index: usize,
    spec: LdapSpec,
}

/// What the directory said, before it becomes a verdict.
enum Answer {
    NoEntry,
    Bound,
    WrongPassword,
}

impl LdapAuth {
    pub fn open(index: usize, spec: &LdapSpec) -> Result<LdapAuth, String> {
        // ldap3 takes rustls's process default: the ring provider the listeners use.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(LdapAuth {
            index,
            spec: spec.clone(),
        })
    }

    /// Looks `dn` up and, if it exists and there is a password, binds as it.
    async fn ask(&self, dn: &str, password: Option<&str>) -> Result<Answer, String> {
        let timeout = Duration::from_millis(self.spec.timeout_ms);
        let settings = LdapConnSettings::new().set_conn_timeout(timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.spec.server)
            .await
            .map_err(|e| e.to_string())?;
        ldap3::drive!(conn);
        if let (Some(bind_dn), Some(bind_pw)) = (&self.spec.bind_dn, &self.spec.bind_password) {
            let r = ldap
                .simple_bind(bind_dn, bind_pw)
                .await
                .map_err(|e| e.to_string())?;
            if r.rc != SUCCESS {
                return Err(format!("bind as {bind_dn}: result {}", r.rc));
            }
        }
        let found = ldap
            .search(dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
            .await
            .map_err(|e| e.to_string())?;
        let answer = match found.1.rc {
            NO_SUCH_OBJECT => Answer::NoEntry,
            SUCCESS if found.0.is_empty() => Answer::NoEntry,
            SUCCESS => match password {
                None => Answer::WrongPassword,
                Some(pw) => match ldap
                    .simple_bind(dn, pw)
                    .await
                    .map_err(|e| e.to_string())?
                    .rc
                {
                    SUCCESS => Answer::Bound,
                    INVALID_CREDENTIALS => Answer::WrongPassword,
                    rc => return Err(format!("bind as {dn}: result {rc}")),
                },
            },
            rc => return Err(format!("lookup of {dn}: result {rc}")),
        };
        let _ = ldap.unbind().await;
        Ok(answer)
    }

    async fn verify(&self, username: &str, password: Option<&[u8]>) -> Verdict {
        let dn = self
            .spec
            .base_dn
            .replace("${username}", &ldap3::dn_escape(username));
        // An empty password would be an anonymous bind: never sent (refused if the entry exists).
        let password = password
            .and_then(|p| std::str::from_utf8(p).ok())
            .filter(|p| !p.is_empty() && p.len() <= keelmq_auth::MAX_PASSWORD_LEN);
        let timeout = Duration::from_millis(self.spec.timeout_ms);
        let asked = tokio::time::timeout(timeout, self.ask(&dn, password));
        let answer = match asked.await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match answer {
            Ok(Answer::NoEntry) => Verdict::Ignore,
            Ok(Answer::Bound) => Verdict::Allow(Identity {
                username: Some(username.to_string()),
                ..Identity::default()
            }),
            Ok(Answer::WrongPassword) => Verdict::Deny(Refusal::BadCredentials),
            Err(e) => {
                let server = &self.spec.server;
                tracing::warn!(%server, %dn, error = %e, "LDAP authentication gave no answer; passed on");
                Verdict::Ignore
            }
        }
    }
}

impl Link for LdapAuth {
    fn describe(&self) -> String {
        format!("auth.chain[{}] (ldap {})", self.index, self.spec.server)
    }

    fn check<'a>(&'a self, _info: &'a ConnInfo, connect: &'a Connect) -> VerdictFuture<'a> {
        Box::pin(async move {
            match connect.username.as_deref() {
                None => Verdict::Ignore,
                Some(username) => self.verify(username, connect.password.as_deref()).await,
            }
        })
    }

    fn reload(&self) -> Result<(), String> {
        Ok(()) // no files
    }
}
