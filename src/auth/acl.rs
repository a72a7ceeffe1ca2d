//! The `[authz]` ACL behind the [`Authorizer`] hook: a Mosquitto-format ACL file (see
//! [`keelmq_auth::acl`] for the format and the decisions), `no_match` for what no rule
//! decides — except `$` filters, which only a rule (or being a superuser) opens — and a reload
//! that swaps the whole rule set at once, so that no decision mixes two files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keelmq_auth::{Acl, Action, Decision, Who};
use parking_lot::RwLock;

use crate::codec::QoS;
use crate::config::{AuthzConfig, NoMatch};
use crate::hooks::{Authorizer, Client};

/// The ACL file's rules.
pub struct AclAuthorizer {
    path: PathBuf,
    acl: RwLock<Arc<Acl>>,
    no_match_allows: bool,
}

/// Reads and parses an ACL file (blocking); the error names the file and the line.
pub fn read(path: &Path) -> Result<Acl, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read ACL file {}: {e}", path.display()))?;
    Acl::parse(&text).map_err(|e| format!("ACL file {}: {e}", path.display()))
}

impl AclAuthorizer {
    /// The authorizer `[authz]` asks for, if it names an ACL file (read now, blocking).
    pub fn from_config(config: &AuthzConfig) -> anyhow::Result<Option<Arc<AclAuthorizer>>> {
        let Some(path) = &config.acl_file else {
            return Ok(None);
        };
        let acl = read(path).map_err(|e| anyhow::anyhow!("config field `authz.acl_file`: {e}"))?;
        Ok(Some(Arc::new(AclAuthorizer {
            path: path.clone(),
            acl: RwLock::new(Arc::new(acl)),
            no_match_allows: config.no_match == NoMatch::Allow,
        })))
    }

    /// The ACL file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Re-reads the file (blocking); on an error the old rules stay.
    pub fn reload(&self) -> Result<(), String> {
        let acl = read(&self.path)?;
        *self.acl.write() = Arc::new(acl);
        Ok(())
    }

    fn decide(&self, client: &Client<'_>, action: Action, topic: &str) -> bool {
        let who = Who {
            client_id: client.client_id,
            username: client.identity.username.as_deref(),
        };
        match self.acl.read().check(who, action, topic) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::NoMatch => self.no_match_allows && !topic.starts_with('$'),
        }
    }
}

impl Authorizer for AclAuthorizer {
    fn may_publish(&self, client: &Client<'_>, topic: &str, _qos: QoS, _retain: bool) -> bool {
        self.decide(client, Action::Publish, topic)
    }

    fn may_subscribe(&self, client: &Client<'_>, filter: &str, _qos: QoS) -> bool {
        self.decide(client, Action::Subscribe, filter)
    }
}
