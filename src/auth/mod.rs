//! Authentication as configured by `[auth]` (and authorization by `[authz]`, in [`acl`]): a [`Chain`] of authenticators behind the
//! [`Authenticator`] hook, with EMQX's semantics — an authenticator that does not know the
//! client ([`Verdict::Ignore`]) passes it to the next, one that knows it decides; when none
//! knows it, `allow_anonymous` decides. A client whose verified certificate names it
//! (`peer_cert_as_username`) is authenticated by the TLS handshake and skips the chain.
//!
//! Failed logins are counted per client address ([`failures::Failures`]); an address that keeps
//! failing waits before each answer, so guessing passwords is slow and cheap for the broker.
//! Password verification runs on blocking threads, a bounded number at a time.

pub mod acl;
pub mod failures;
pub mod http;
pub mod jwt;
pub mod ldap;
pub mod password_file;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::codec::Connect;
use std::collections::HashMap;

use crate::config::{AuthConfig, AuthenticatorSpec, Config};
use crate::hooks::{AuthFuture, Authenticator, Identity};
use crate::protocol::Refusal;
use crate::transport::ConnInfo;

/// What one authenticator of the chain says about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It knows the client and lets it in as this identity.
    Allow(Identity),
    /// It knows the client and refuses it (wrong password, invalid token).
    Deny(Refusal),
    /// It does not know the client: the next authenticator decides.
    Ignore,
}

/// A boxed [`Verdict`] future (authenticators are trait objects).
pub type VerdictFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// One authenticator of the chain.
pub trait Link: Send + Sync {
    /// What the configuration calls it (`auth.chain[i]` and its kind), for logs.
    fn describe(&self) -> String;
    fn check<'a>(&'a self, info: &'a ConnInfo, connect: &'a Connect) -> VerdictFuture<'a>;
    /// Re-reads its files; on an error it keeps what it had.
    fn reload(&self) -> Result<(), String>;
}

/// The configured chain.
pub struct Chain {
    links: Vec<Box<dyn Link>>,
    anonymous: bool,
    failures: failures::Failures,
}

impl Chain {
    /// The chain `[auth]` describes; its files are read now, and a bad one is an error that
    /// names it.
    pub fn from_config(config: &AuthConfig, prefix: &str) -> anyhow::Result<Chain> {
        let mut links: Vec<Box<dyn Link>> = Vec::new();
        for (i, spec) in config.chain.iter().enumerate() {
            match spec {
                AuthenticatorSpec::PasswordFile { path } => {
                    let link = password_file::PasswordFileAuth::open(i, path).map_err(|e| {
                        anyhow::anyhow!("config field `{prefix}.chain[{i}].path`: {e}")
                    })?;
                    links.push(Box::new(link));
                }
                AuthenticatorSpec::Http(spec) => {
                    let link = http::HttpAuth::open(i, spec)
                        .map_err(|e| anyhow::anyhow!("config field `{prefix}.chain[{i}]`: {e}"))?;
                    links.push(Box::new(link));
                }
                AuthenticatorSpec::Ldap(spec) => {
                    let link = ldap::LdapAuth::open(i, spec)
                        .map_err(|e| anyhow::anyhow!("config field `{prefix}.chain[{i}]`: {e}"))?;
                    links.push(Box::new(link));
                }
                AuthenticatorSpec::Jwt(spec) => {
                    let link = jwt::JwtAuth::open(i, spec)
                        .map_err(|e| anyhow::anyhow!("config field `{prefix}.chain[{i}]`: {e}"))?;
                    links.push(Box::new(link));
                }
            }
        }
        Ok(Chain {
            links,
            anonymous: config.anonymous_allowed(),
            failures: failures::Failures::new(config),
        })
    }

    /// Re-reads every authenticator's files; the problems of those that kept their old state.
    pub fn reload(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for link in &self.links {
            if let Err(e) = link.reload() {
                problems.push(format!("{}: {e}", link.describe()));
            }
        }
        problems
    }

    async fn decide(&self, info: &ConnInfo, connect: &Connect) -> Verdict {
        if let Some(username) = &info.username_from_cert {
            return Verdict::Allow(Identity {
                username: Some(username.clone()),
                superuser: false,
                ..Identity::default()
            });
        }
        for link in &self.links {
            match link.check(info, connect).await {
                Verdict::Ignore => continue,
                decided => return decided,
            }
        }
        match self.anonymous {
            // Nobody vouched for a username the client may have claimed: it is anonymous.
            true => Verdict::Allow(Identity::default()),
            false => Verdict::Deny(match connect.username {
                Some(_) => Refusal::BadCredentials,
                None => Refusal::NotAuthorized,
            }),
        }
    }
}

impl Authenticator for Chain {
    fn authenticate<'a>(&'a self, info: &'a ConnInfo, connect: &'a Connect) -> AuthFuture<'a> {
        Box::pin(async move {
            let address = info.peer.ip();
            self.failures.wait_turn(address).await;
            match self.decide(info, connect).await {
                Verdict::Allow(identity) => {
                    self.failures.succeeded(address);
                    Ok(identity)
                }
                Verdict::Deny(refusal) => {
                    self.failures.failed(address);
                    Err(refusal)
                }
                Verdict::Ignore => Err(Refusal::NotAuthorized),
            }
        })
    }
}

/// The chains: the broker's, and those of listeners with their own `auth`.
pub struct Chains {
    /// `None`: the broker authenticates nobody (no chain, anonymous allowed).
    default: Option<Chain>,
    by_listener: HashMap<String, Chain>,
}

impl Chains {
    /// Re-reads every chain's files; the problems of those that kept their old state.
    pub fn reload(&self) -> Vec<String> {
        let chains = self.default.iter().chain(self.by_listener.values());
        chains.flat_map(Chain::reload).collect()
    }
}

impl Authenticator for Chains {
    fn authenticate<'a>(&'a self, info: &'a ConnInfo, connect: &'a Connect) -> AuthFuture<'a> {
        match self
            .by_listener
            .get(&*info.listener)
            .or(self.default.as_ref())
        {
            Some(chain) => chain.authenticate(info, connect),
            // A listener with no chain of its own while another listener authenticates: its
            // clients are admitted as anonymous — a username they claim is not trusted (it
            // would otherwise own sessions and match `%u` and `user` rules).
            // (A name from a verified certificate is trusted.)
            None => Box::pin(std::future::ready(Ok(Identity {
                username: info.username_from_cert.clone(),
                ..Identity::default()
            }))),
        }
    }
}

/// The authenticator the configuration asks for (its files read now, blocking): none of its
/// own (the hook's allow-all default) when neither the broker nor a listener authenticates.
pub fn authenticator(config: &Config) -> anyhow::Result<Option<Arc<Chains>>> {
    if !config.authenticates() {
        return Ok(None);
    }
    let auth = &config.auth;
    let default = match auth.chain.is_empty() && auth.anonymous_allowed() {
        true => None,
        false => Some(Chain::from_config(auth, "auth")?),
    };
    let mut by_listener = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(a) = &l.auth {
            let chain = Chain::from_config(a, &format!("listeners[{i}].auth"))?;
            by_listener.insert(l.name().to_string(), chain);
        }
    }
    Ok(Some(Arc::new(Chains {
        default,
        by_listener,
    })))
}
