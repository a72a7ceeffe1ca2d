//! The `password_file` authenticator: Mosquitto's password file format (see
//! [`keelmq_auth::passwd`]). A client without a username, or whose username the file lacks,
//! is passed on; a missing or wrong password refuses it (bad username or password).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keelmq_auth::{PasswordFile, MAX_PASSWORD_LEN};
use parking_lot::RwLock;
use tokio::sync::Semaphore;

use super::{Link, Verdict, VerdictFuture};
use crate::codec::Connect;
use crate::hooks::Identity;
use crate::protocol::Refusal;
use crate::transport::ConnInfo;

/// The file, re-read on reload.
pub struct PasswordFileAuth {
    index: usize,
    path: PathBuf,
    file: RwLock<Arc<PasswordFile>>,
    /// Verifications running at once (each is CPU- and, for Argon2, memory-heavy): one per
    /// core. Further logins wait their turn in arrival order; they are bounded by
    /// `limits.max_connections`.
    hashing: Arc<Semaphore>,
}

/// Reads and parses a password file (blocking); the error names the file and the line.
pub fn read(path: &Path) -> Result<PasswordFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    PasswordFile::parse(&text).map_err(|e| format!("password file {}: {e}", path.display()))
}

impl PasswordFileAuth {
    /// Reads the file (blocking).
    pub fn open(index: usize, path: &Path) -> Result<PasswordFileAuth, String> {
        let file = read(path)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(PasswordFileAuth {
            index,
            path: path.to_path_buf(),
            file: RwLock::new(Arc::new(file)),
            hashing: Arc::new(Semaphore::new(cores)),
        })
    }

    async fn verify(&self, username: &str, password: Option<&[u8]>) -> Verdict {
        let file = self.file.read().clone();
        let Some(hash) = file.hash_of(username).cloned() else {
            return Verdict::Ignore;
        };
        let password = match password {
            Some(p) if p.len() <= MAX_PASSWORD_LEN => p.to_vec(),
            // No password, or one too long to be worth hashing.
            _ => return Verdict::Deny(Refusal::BadCredentials),
        };
        let Ok(_turn) = self.hashing.clone().acquire_owned().await else {
            return Verdict::Deny(Refusal::NotAuthorized);
        };
        let matched = tokio::task::spawn_blocking(move || hash.verify(&password)).await;
        match matched {
            Ok(true) => Verdict::Allow(Identity {
                username: Some(username.to_string()),
                superuser: false,
                ..Identity::default()
            }),
            Ok(false) => Verdict::Deny(Refusal::BadCredentials),
            Err(e) => {
                tracing::error!(error = %e, "password verification failed");
                Verdict::Deny(Refusal::NotAuthorized)
            }
        }
    }
}

impl Link for PasswordFileAuth {
    fn describe(&self) -> String {
        format!(
            "auth.chain[{}] (password_file {})",
            self.index,
            self.path.display()
        )
    }

    fn check<'a>(&'a self, _info: &'a ConnInfo, connect: &'a Connect) -> VerdictFuture<'a> {
        Box::pin(async move {
            let Some(username) = connect.username.as_deref() else {
                return Verdict::Ignore;
            };
            let password = connect.password.as_deref();
            self.verify(username, password).await
        })
    }

    fn reload(&self) -> Result<(), String> {
        let file = read(&self.path)?;
        *self.file.write() = Arc::new(file);
        Ok(())
    }
}
