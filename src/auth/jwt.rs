//! The `jwt` authenticator: a JSON Web Token carried in the CONNECT's password (or username).
//!
//! - No token, or one that is not a JWT, or one for keys this entry does not hold (another
//!   algorithm family, an unknown `kid`): passed on to the next authenticator.
//! - A bad signature, `exp` passed, `nbf` not reached (no leeway), or a `verify_claims` claim
//!   that differs: refused (bad username or password).
//! - Otherwise allowed, with the token's ACL claim as the client's own rules and its `exp` as
//!   the moment the connection is closed (`disconnect_after_expire`).
//!
//! A token is one signature check (no slow hashing), so it is verified where the CONNECT is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use keelmq_auth::{Access, Acl};
use parking_lot::RwLock;
use serde_json::Value;

use super::{Link, Verdict, VerdictFuture};
use crate::codec::Connect;
use crate::config::{JwtFrom, JwtSpec};
use crate::hooks::Identity;
use crate::protocol::Refusal;
use crate::transport::ConnInfo;

/// The keys tokens are checked against.
enum Keys {
    One(DecodingKey),
    Set(JwkSet),
}

/// One `jwt` entry of the chain.
pub struct JwtAuth {
    index: usize,
    spec: JwtSpec,
    keys: RwLock<Arc<Keys>>,
}

/// Reads the entry's keys (blocking for the files); the error names the file.
fn load_keys(spec: &JwtSpec) -> Result<Keys, String> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    if let Some(secret) = &spec.secret {
        return Ok(Keys::One(DecodingKey::from_secret(secret.as_bytes())));
    }
    if let Some(path) = &spec.public_key_file {
        let pem = read(path)?;
        let key = DecodingKey::from_rsa_pem(&pem)
            .or_else(|_| DecodingKey::from_ec_pem(&pem))
            .or_else(|_| DecodingKey::from_ed_pem(&pem))
            .map_err(|_| {
                format!(
                    "{}: not an RSA, EC or Ed25519 public key in PEM",
                    path.display()
                )
            })?;
        return Ok(Keys::One(key));
    }
    if let Some(path) = &spec.jwks_file {
        let set: JwkSet = serde_json::from_slice(&read(path)?)
            .map_err(|e| format!("{}: not a JWK set: {e}", path.display()))?;
        return Ok(Keys::Set(set));
    }
    Err("no key (secret, public_key_file or jwks_file)".into())
}

impl JwtAuth {
    /// The entry, its key files read now (blocking).
    pub fn open(index: usize, spec: &JwtSpec) -> Result<JwtAuth, String> {
        let keys = load_keys(spec)?;
        Ok(JwtAuth {
            index,
            spec: spec.clone(),
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    fn verify(&self, token: &str, client_id: &str, username: Option<&str>) -> Verdict {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Verdict::Ignore; // not a JWT: perhaps the next authenticator's password
        };
        let keys = self.keys.read().clone();
        let key = match &*keys {
            Keys::One(key) => Some(key.clone()),
            Keys::Set(set) => match (&header.kid, set.keys.as_slice()) {
                (Some(kid), _) => set.find(kid).and_then(|k| DecodingKey::from_jwk(k).ok()),
                (None, [only]) => DecodingKey::from_jwk(only).ok(),
                (None, _) => None,
            },
        };
        let Some(key) = key.filter(|k| k.family() == header.alg.family()) else {
            return Verdict::Ignore; // a token for keys this entry does not hold
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = family_algorithms(key.family());
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                tracing::debug!(%client_id, error = %e, "token refused");
                return Verdict::Deny(Refusal::BadCredentials);
            }
        };
        self.admit(&claims, client_id, username)
    }

    /// The verified token's claims: the claims it must hold, its rules and its expiry.
    fn admit(&self, claims: &Value, client_id: &str, username: Option<&str>) -> Verdict {
        for (name, template) in &self.spec.verify_claims {
            let expected = placeholders(template, client_id, username);
            let matches = match claims.get(name) {
                Some(Value::String(s)) => *s == expected,
                // A number or a boolean claim compares as its JSON text ("42", "true").
                Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                    let text = v.to_string();
                    text == expected
                }
                _ => false,
            };
            if !matches {
                tracing::debug!(%client_id, claim = %name, "token claim does not match");
                return Verdict::Deny(Refusal::BadCredentials);
            }
        }
        let rules = match self.spec.acl_claim.as_deref().and_then(|c| claims.get(c)) {
            None => None,
            Some(acl) => match client_rules(acl, client_id, username) {
                Ok(acl) => Some(Arc::new(acl)),
                Err(e) => {
                    tracing::info!(%client_id, error = %e, "token's ACL claim refused");
                    return Verdict::Deny(Refusal::BadCredentials);
                }
            },
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .filter(|_| self.spec.disconnect_after_expire)
            .map(|exp| SystemTime::UNIX_EPOCH + Duration::from_secs(exp));
        Verdict::Allow(Identity {
            username: username.map(str::to_string),
            superuser: false,
            rules,
            expires_at,
            peerhost: None,
        })
    }
}

/// Every algorithm of a key's family (the token's own is checked against it).
fn family_algorithms(family: AlgorithmFamily) -> Vec<Algorithm> {
    use Algorithm::*;
    match family {
        AlgorithmFamily::Hmac => vec![HS256, HS384, HS512],
        AlgorithmFamily::Rsa => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmFamily::Ec => vec![ES256, ES384],
        AlgorithmFamily::Ed => vec![EdDSA],
    }
}

/// `${clientid}` and `${username}` replaced (an absent username by nothing).
pub fn placeholders(template: &str, client_id: &str, username: Option<&str>) -> String {
    template
        .replace("${clientid}", client_id)
        .replace("${username}", username.unwrap_or(""))
}

/// The client's own rules from an ACL claim, in EMQX's list form or its older map form.
pub fn client_rules(claim: &Value, client_id: &str, username: Option<&str>) -> Result<Acl, String> {
    let mut rules: Vec<(Access, String)> = Vec::new();
    let topic = |t: &Value| match t {
        Value::String(s) => Ok(placeholders(s, client_id, username)),
        _ => Err("a topic is not a string".to_string()),
    };
    match claim {
        Value::Array(list) => {
            for rule in list {
                let field = |name: &str| rule.get(name).and_then(Value::as_str).unwrap_or("");
                let access = match (field("permission"), field("action")) {
                    ("allow", "publish") => Access::Write,
                    ("allow", "subscribe") => Access::Read,
                    ("allow", "all") => Access::ReadWrite,
                    ("deny", "publish") => Access::DenyWrite,
                    ("deny", "subscribe") => Access::DenyRead,
                    ("deny", "all") => Access::Deny,
                    (p, a) => return Err(format!("rule with permission {p:?} and action {a:?}")),
                };
                rules.push((access, topic(rule.get("topic").unwrap_or(&Value::Null))?));
            }
        }
        Value::Object(map) => {
            for (key, topics) in map {
                let access = match key.as_str() {
                    "pub" | "publish" => Access::Write,
                    "sub" | "subscribe" => Access::Read,
                    "all" => Access::ReadWrite,
                    other => return Err(format!("unknown key {other:?}")),
                };
                let Value::Array(topics) = topics else {
                    return Err(format!("{key:?} is not a list of topics"));
                };
                for t in topics {
                    rules.push((access, topic(t)?));
                }
            }
        }
        _ => return Err("neither a list of rules nor a map of topics".into()),
    }
    Acl::client_rules(rules.iter().map(|(a, t)| (*a, t.as_str())))
}

impl Link for JwtAuth {
    fn describe(&self) -> String {
        format!("auth.chain[{}] (jwt)", self.index)
    }

    fn check<'a>(&'a self, info: &'a ConnInfo, connect: &'a Connect) -> VerdictFuture<'a> {
        let token = match self.spec.from {
            JwtFrom::Password => connect
                .password
                .as_deref()
                .and_then(|p| std::str::from_utf8(p).ok()),
            JwtFrom::Username => connect.username.as_deref(),
        };
        let client_id = info
            .client_id_from_cert
            .as_deref()
            .unwrap_or(&connect.client_id);
        let verdict = match token {
            None => Verdict::Ignore,
            Some(token) => self.verify(token, client_id, connect.username.as_deref()),
        };
        Box::pin(std::future::ready(verdict))
    }

    fn reload(&self) -> Result<(), String> {
        let keys = load_keys(&self.spec)?;
        *self.keys.write() = Arc::new(keys);
        Ok(())
    }
}
