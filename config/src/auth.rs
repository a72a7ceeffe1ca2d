//! `[auth]`: who may connect. A chain of authenticators asked in order (EMQX's semantics): one
//! that does not know the client passes it on, one that knows it decides; when none knows it,
//! `allow_anonymous` decides.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{Config, ConfigError};

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether a client that no authenticator of the chain knows may connect (as anonymous).
    /// Unset means yes — but then a listener on an address other than loopback with an empty
    /// chain refuses to start (Mosquitto 2's rule): write `true` to mean it.
    pub allow_anonymous: Option<bool>,
    /// `[[auth.chain]]`: the authenticators, asked in order.
    pub chain: Vec<AuthenticatorSpec>,
    /// After this many failed logins from one client address (in a row, within
    /// `failure_window_secs`), every further CONNECT from it waits before its answer, twice as
    /// long for every further failure up to `max_failure_delay_ms`.
    pub failures_before_delay: u32,
    pub max_failure_delay_ms: u64,
    pub failure_window_secs: u64,
}

impl AuthConfig {
    /// Whether anonymous clients are let in when no authenticator knows them.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(true)
    }
}

/// One authenticator of the chain.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthenticatorSpec {
    /// A Mosquitto-format password file (`keelmq passwd` writes one). A client whose username
    /// the file lacks (or that sent none) is passed on; a wrong password refuses it.
    PasswordFile { path: PathBuf },
    /// A JSON Web Token in the password (or username): verified with `secret` (HS256/384/512),
    /// `public_key_file` (PEM; RS*/PS*, ES256/384 or EdDSA by the key) or `jwks_file` (a JWK set,
    /// by the token's `kid`) — exactly one. A token for other keys, or no token, is passed on;
    /// a bad signature, `exp` or `nbf` passed or not reached, or a claim of `verify_claims`
    /// that differs refuses the client.
    Jwt(JwtSpec),
    /// An HTTP service: POST `{clientid, username, password, peerhost, cert_cn, listener}` as
    /// JSON to `url`; it answers `{"result": "allow"|"deny"|"ignore", "is_superuser": bool,
    /// "acl": [...]}` (the JWT ACL claim's forms). An error, a timeout or an answer that is not
    /// such a 200 passes the client on (logged), as EMQX does.
    Http(HttpSpec),
    /// An LDAP directory: the client binds as `base_dn` (with `${username}` replaced by its
    /// username, DN-escaped) with its password. A username with no entry (looked up first,
    /// anonymously or as `bind_dn`) is passed on; a wrong or empty password refuses; a server
    /// that cannot be reached passes the client on (logged).
    Ldap(LdapSpec),
}

/// `kind = "ldap"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LdapSpec {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub server: String,
    pub base_dn: String,
    /// A DN and password to look users up as (otherwise anonymously).
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    #[serde(default = "http_timeout_ms")]
    pub timeout_ms: u64,
}

/// `kind = "http"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    pub url: String,
    #[serde(default = "http_timeout_ms")]
    pub timeout_ms: u64,
    /// Extra request headers (e.g. an authorization token for the service).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn http_timeout_ms() -> u64 {
    5000
}

/// `kind = "jwt"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    #[serde(default)]
    pub from: JwtFrom,
    pub secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    /// Claims the token must hold with these values; `${clientid}` and `${username}` stand
    /// for the client's.
    #[serde(default)]
    pub verify_claims: std::collections::BTreeMap<String, String>,
    /// A claim holding the client's own ACL rules, checked before `[authz]`: EMQX's list
    /// `[{"permission": "allow"|"deny", "action": "publish"|"subscribe"|"all", "topic": "..."}]`
    /// or its older `{"pub": [...], "sub": [...], "all": [...]}`.
    pub acl_claim: Option<String>,
    /// Close the connection when the token's `exp` passes.
    #[serde(default = "yes")]
    pub disconnect_after_expire: bool,
}

fn yes() -> bool {
    true
}

/// Where a JWT is carried.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JwtFrom {
    #[default]
    Password,
    Username,
}

/// `[authz]`: what an authenticated client may do.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzConfig {
    /// A Mosquitto-format ACL file; none: every client may publish and subscribe anywhere
    /// (superusers always may).
    pub acl_file: Option<PathBuf>,
    /// What happens when no rule of the ACL decides (`$` filters excepted: those are denied).
    pub no_match: NoMatch,
    /// What happens to a client whose PUBLISH is denied, besides the message not being routed.
    pub deny_action: DenyAction,
}

/// `authz.no_match`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NoMatch {
    #[default]
    Allow,
    Deny,
}

/// `authz.deny_action`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DenyAction {
    /// 5.0: PUBACK/PUBREC 0x87; 3.x: acknowledged and dropped (a 3.x client cannot be told).
    #[default]
    Ignore,
    /// Close the connection (5.0: DISCONNECT 0x87).
    Disconnect,
}

impl Config {
    /// `[auth]`, every listener's own `auth`, and the rule that an exposed listener needs an
    /// authenticator or an explicit `allow_anonymous = true`.
    pub(crate) fn validate_auth(&self) -> Result<(), ConfigError> {
        check_auth(&self.auth, "auth")?;
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(a) = &l.auth {
                check_auth(a, &format!("listeners[{i}].auth"))?;
            }
        }
        for (i, l) in self.effective_listeners().iter().enumerate() {
            let (auth, prefix) = match &l.auth {
                Some(a) => (a, format!("listeners[{i}].auth")),
                None => (&self.auth, "auth".to_string()),
            };
            let open = auth.chain.is_empty() && auth.allow_anonymous != Some(true);
            if open && !l.bind().ip().is_loopback() {
                return Err(invalid(
                    format!("{prefix}.allow_anonymous"),
                    format!(
                        "listener {:?} binds {} (not loopback) and no authenticator is \
                         configured: add an [[auth.chain]] entry (e.g. kind = \"password_file\", \
                         made with `keelmq passwd`), or write allow_anonymous = true to let \
                         anyone in",
                        l.name(),
                        l.bind()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether any authentication is configured (for the broker or a listener): then
    /// usernames are established, not claimed.
    pub fn authenticates(&self) -> bool {
        let configured = |a: &AuthConfig| !(a.chain.is_empty() && a.anonymous_allowed());
        configured(&self.auth) || self.listeners.iter().any(|l| l.auth.is_some())
    }
}

fn invalid(field: String, problem: impl Into<String>) -> ConfigError {
    ConfigError::Listener {
        field,
        problem: problem.into(),
    }
}

/// The checks of one `[auth]` (`prefix`: where it is, for the field names).
fn check_auth(a: &AuthConfig, prefix: &str) -> Result<(), ConfigError> {
    if a.failures_before_delay == 0 {
        return Err(invalid(
            format!("{prefix}.failures_before_delay"),
            "must be at least 1",
        ));
    }
    if a.max_failure_delay_ms > 60_000 {
        let problem = "at most 60000 (a waiting CONNECT holds a connection)";
        return Err(invalid(format!("{prefix}.max_failure_delay_ms"), problem));
    }
    for (i, spec) in a.chain.iter().enumerate() {
        let field = |f: &str| format!("{prefix}.chain[{i}].{f}");
        check_authenticator(spec).map_err(|(f, problem)| invalid(field(f), problem))?;
    }
    Ok(())
}

/// The checks of one authenticator: `Err((field, problem))`.
fn check_authenticator(spec: &AuthenticatorSpec) -> Result<(), (&'static str, String)> {
    match spec {
        AuthenticatorSpec::PasswordFile { .. } => {}
        AuthenticatorSpec::Http(h) => {
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return Err((
                    "url",
                    format!("{:?} is not an http:// or https:// URL", h.url),
                ));
            }
            if !(1..=60_000).contains(&h.timeout_ms) {
                return Err(("timeout_ms", "must be between 1 and 60000".into()));
            }
        }
        AuthenticatorSpec::Ldap(l) => {
            if !(l.server.starts_with("ldap://") || l.server.starts_with("ldaps://")) {
                let problem = format!("{:?} is not an ldap:// or ldaps:// URL", l.server);
                return Err(("server", problem));
            }
            if !l.base_dn.contains("${username}") {
                return Err(("base_dn", "must contain ${username}".into()));
            }
            if l.bind_dn.is_some() != l.bind_password.is_some() {
                return Err(("bind_dn", "bind_dn and bind_password go together".into()));
            }
            if !(1..=60_000).contains(&l.timeout_ms) {
                return Err(("timeout_ms", "must be between 1 and 60000".into()));
            }
        }
        AuthenticatorSpec::Jwt(j) => {
            let keys = [
                j.secret.is_some(),
                j.public_key_file.is_some(),
                j.jwks_file.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                let problem = "give exactly one of secret, public_key_file and jwks_file";
                return Err(("secret", problem.into()));
            }
        }
    }
    Ok(())
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: None,
            chain: Vec::new(),
            failures_before_delay: 3,
            max_failure_delay_ms: 5_000,
            failure_window_secs: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn check(text: &str) -> Result<Config, String> {
        let c = Config::parse(text)?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn an_exposed_listener_needs_an_authenticator_or_an_explicit_yes() {
        assert!(check("").is_ok(), "the embedded default is loopback");
        let e = check("[listener]\nbind = \"0.0.0.0:1883\"\n").unwrap_err();
        assert!(
            e.contains("auth.allow_anonymous") && e.contains("keelmq passwd"),
            "{e}"
        );
        let e = check("[[listeners]]\nkind = \"ws\"\nbind = \"192.0.2.1:8083\"\n").unwrap_err();
        assert!(e.contains("\"ws\""), "{e}");
        assert!(
            check("[listener]\nbind = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous = true\n").is_ok()
        );
        let chain = "[listener]\nbind = \"[::]:1883\"\n[[auth.chain]]\nkind = \"password_file\"\npath = \"p\"\n";
        let c = check(chain).unwrap();
        assert_eq!(c.auth.chain.len(), 1);
        assert!(!check(&format!("{chain}[auth]\nallow_anonymous = false\n"))
            .is_ok_and(|c| c.auth.anonymous_allowed()));
    }

    #[test]
    fn unknown_authenticators_and_fields_are_named() {
        let e = check("[[auth.chain]]\nkind = \"kerberos\"\n").unwrap_err();
        assert!(e.contains("kerberos") && e.contains("password_file"), "{e}");
        let e = check("[[auth.chain]]\nkind = \"password_file\"\n").unwrap_err();
        assert!(e.contains("path"), "{e}");
        let e = check("[auth]\nfailures_before_delay = 0\n").unwrap_err();
        assert!(e.contains("auth.failures_before_delay"), "{e}");
    }
}

#[cfg(test)]
mod jwt_tests {
    use crate::{AuthenticatorSpec, Config, JwtFrom};

    #[test]
    fn a_jwt_entry_needs_exactly_one_key_source() {
        let c = Config::parse(
            "[[auth.chain]]\nkind = \"jwt\"\nsecret = \"s\"\nverify_claims = { sub = \"${clientid}\" }\n",
        )
        .unwrap();
        c.validate().unwrap();
        let AuthenticatorSpec::Jwt(j) = &c.auth.chain[0] else {
            panic!("a jwt entry");
        };
        assert_eq!(
            (j.from, j.disconnect_after_expire),
            (JwtFrom::Password, true)
        );
        assert_eq!(j.verify_claims["sub"], "${clientid}");
        let none = Config::parse("[[auth.chain]]\nkind = \"jwt\"\n").unwrap();
        let e = none.validate().unwrap_err().to_string();
        assert!(e.contains("auth.chain[0].secret"), "{e}");
        let two = "[[auth.chain]]\nkind = \"jwt\"\nsecret = \"s\"\njwks_file = \"k\"\n";
        assert!(Config::parse(two).unwrap().validate().is_err());
        let e = Config::parse("[[auth.chain]]\nkind = \"jwt\"\nsecret = \"s\"\nalg = \"x\"\n")
            .unwrap_err();
        assert!(e.contains("alg"), "{e}");
    }
}
