//! KeelMQ's credentials, without I/O or an async runtime (so that `fuzz/` and the tools can
//! use it without the broker):
//!
//! - [`hash`]: the password hashes a password file may hold — Argon2id (what KeelMQ writes),
//!   Mosquitto's `$6$` and `$7$`, and bcrypt / salted SHA / PBKDF2 exported from EMQX — and
//!   their verification;
//! - [`passwd`]: the password file itself (Mosquitto's `password_file` format);
//! - [`acl`]: the ACL file (Mosquitto's `acl_file` format) and its decisions;
//! - [`api_keys`]: the HTTP API's key file (`key:secret` lines).
//!
//! The broker's authenticators (`src/auth/`) read these files and run the slow verification
//! on blocking threads.

pub mod acl;
pub mod api_keys;
pub mod hash;
pub mod passwd;

pub use acl::{Access, Acl, AclError, Action, Decision, Who};
pub use hash::{Hash, HashError, MAX_PASSWORD_LEN};
pub use passwd::{ParseError, PasswordFile};
