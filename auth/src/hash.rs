//! Password hashes: the forms a password file may hold, their verification, and new hashes.
//!
//! | form | written by | scheme |
//! |---|---|---|
//! | `$argon2id$v=19$m=…,t=…,p=…$SALT$HASH` | `keelmq passwd` | Argon2id (PHC string) |
//! | `$7$ITERATIONS$SALT$HASH` | `mosquitto_passwd` (2.x default) | PBKDF2-HMAC-SHA512, base64 salt and hash |
//! | `$6$SALT$HASH` | `mosquitto_passwd -H sha512` (1.x default) | SHA-512 of password then salt, base64 |
//! | `$2a$`, `$2b$`, `$2y$` … | EMQX built-in database (bcrypt) | bcrypt |
//! | `$emqx-sha256$prefix\|suffix$SALT$HEX` (also `sha512`) | EMQX built-in database (salted SHA) | SHA of salt+password (`prefix`) or password+salt (`suffix`), hex |
//! | `$emqx-pbkdf2$sha256\|sha512$ITERATIONS$SALT$HEX` | EMQX built-in database (PBKDF2) | PBKDF2-HMAC, hex |
//!
//! In the EMQX forms SALT is the salt as EMQX stores it (text without `$`), HEX the stored
//! `password_hash`.

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Passwords longer than this are refused before any hashing (a client cannot make the broker
/// hash megabytes).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// PBKDF2 iteration counts above this are refused when a file is read (a hostile file cannot
/// make every login cost seconds).
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// The most memory an Argon2 hash read from a file may ask for (KiB), and the highest bcrypt
/// cost: like [`MAX_ITERATIONS`], so that no entry makes a login cost seconds or gigabytes.
pub const MAX_ARGON2_KIB: u32 = 256 * 1024;
pub const MAX_BCRYPT_COST: u32 = 16;

/// A password hash as a password file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// Argon2 PHC string (what KeelMQ writes).
    Argon2(String),
    /// Mosquitto `$6$`.
    MosquittoSha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// Mosquitto `$7$`.
    MosquittoPbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// bcrypt modular-crypt string.
    Bcrypt(String),
    /// EMQX salted SHA-256 / SHA-512.
    EmqxSalted {
        sha512: bool,
        salt_first: bool,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// EMQX PBKDF2.
    EmqxPbkdf2 {
        sha512: bool,
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// Why a hash does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("not a password hash (a plain-text password? hash the file with `keelmq passwd -U`)")]
    NotAHash,
    #[error("unknown hash scheme `{0}`")]
    UnknownScheme(String),
    #[error("malformed `{scheme}` hash: {problem}")]
    Malformed {
        scheme: &'static str,
        problem: &'static str,
    },
}

fn malformed(scheme: &'static str, problem: &'static str) -> HashError {
    HashError::Malformed { scheme, problem }
}

fn b64(scheme: &'static str, what: &'static str, text: &str) -> Result<Vec<u8>, HashError> {
    B64.decode(text).map_err(|_| malformed(scheme, what))
}

fn hex(scheme: &'static str, text: &str) -> Result<Vec<u8>, HashError> {
    if !text.len().is_multiple_of(2) || text.is_empty() {
        return Err(malformed(scheme, "the hash is not hexadecimal"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or(malformed(scheme, "the hash is not hexadecimal"))
        })
        .collect()
}

fn iterations(scheme: &'static str, text: &str) -> Result<u32, HashError> {
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_ITERATIONS).contains(&n) => Ok(n),
        _ => Err(malformed(scheme, "iterations out of range")),
    }
}

impl Hash {
    /// Parses the hash part of a password-file line.
    pub fn parse(text: &str) -> Result<Hash, HashError> {
        let Some(rest) = text.strip_prefix('$') else {
            return Err(HashError::NotAHash);
        };
        let parts: Vec<&str> = rest.split('$').collect();
        match parts.as_slice() {
            ["argon2id" | "argon2i" | "argon2d", ..] => {
                let phc = argon2::PasswordHash::new(text)
                    .map_err(|_| malformed("argon2", "not a valid PHC string"))?;
                if phc.hash.is_none() || phc.salt.is_none() {
                    return Err(malformed("argon2", "no salt or no hash"));
                }
                let params = argon2::Params::try_from(&phc)
                    .map_err(|_| malformed("argon2", "invalid parameters"))?;
                if params.m_cost() > MAX_ARGON2_KIB || params.t_cost() > 16 || params.p_cost() > 16
                {
                    return Err(malformed("argon2", "costs above m=262144,t=16,p=16"));
                }
                Ok(Hash::Argon2(text.to_string()))
            }
            ["6", salt, hash] => Ok(Hash::MosquittoSha512 {
                salt: b64("$6$", "the salt is not base64", salt)?,
                hash: b64("$6$", "the hash is not base64", hash)?,
            }),
            ["7", iter, salt, hash] => Ok(Hash::MosquittoPbkdf2 {
                iterations: iterations("$7$", iter)?,
                salt: b64("$7$", "the salt is not base64", salt)?,
                hash: b64("$7$", "the hash is not base64", hash)?,
            }),
            ["2a" | "2b" | "2y" | "2x", ..] => {
                let parts = text
                    .parse::<bcrypt::HashParts>()
                    .map_err(|_| malformed("bcrypt", "not a valid bcrypt string"))?;
                if parts.get_cost() > MAX_BCRYPT_COST {
                    return Err(malformed("bcrypt", "cost above 16"));
                }
                Ok(Hash::Bcrypt(text.to_string()))
            }
            [scheme @ ("emqx-sha256" | "emqx-sha512"), position, salt, hash] => {
                let name = "emqx salted SHA";
                let salt_first = match *position {
                    "prefix" => true,
                    "suffix" => false,
                    _ => return Err(malformed(name, "position is neither prefix nor suffix")),
                };
                Ok(Hash::EmqxSalted {
                    sha512: *scheme == "emqx-sha512",
                    salt_first,
                    salt: salt.as_bytes().to_vec(),
                    hash: hex(name, hash)?,
                })
            }
            ["emqx-pbkdf2", mac, iter, salt, hash] => {
                let name = "emqx-pbkdf2";
                let sha512 = match *mac {
                    "sha256" => false,
                    "sha512" => true,
                    _ => return Err(malformed(name, "the MAC is neither sha256 nor sha512")),
                };
                Ok(Hash::EmqxPbkdf2 {
                    sha512,
                    iterations: iterations(name, iter)?,
                    salt: salt.as_bytes().to_vec(),
                    hash: hex(name, hash)?,
                })
            }
            [scheme, ..] => Err(HashError::UnknownScheme(scheme.to_string())),
            [] => Err(HashError::NotAHash),
        }
    }

    /// Whether `password` matches. Slow by design (run it off the async runtime); a password
    /// longer than [`MAX_PASSWORD_LEN`] never matches and costs nothing.
    pub fn verify(&self, password: &[u8]) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        match self {
            Hash::Argon2(phc) => argon2::PasswordHash::new(phc).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password, &parsed)
                    .is_ok()
            }),
            Hash::MosquittoSha512 { salt, hash } => {
                let digest = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                same(&digest, hash)
            }
            Hash::MosquittoPbkdf2 {
                iterations,
                salt,
                hash,
            } => pbkdf2_matches(true, password, salt, *iterations, hash),
            Hash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
            Hash::EmqxSalted {
                sha512,
                salt_first,
                salt,
                hash,
            } => {
                let (a, b): (&[u8], &[u8]) = match salt_first {
                    true => (salt, password),
                    false => (password, salt),
                };
                match sha512 {
                    true => same(
                        &Sha512::new().chain_update(a).chain_update(b).finalize(),
                        hash,
                    ),
                    false => same(
                        &Sha256::new().chain_update(a).chain_update(b).finalize(),
                        hash,
                    ),
                }
            }
            Hash::EmqxPbkdf2 {
                sha512,
                iterations,
                salt,
                hash,
            } => pbkdf2_matches(*sha512, password, salt, *iterations, hash),
        }
    }

    /// A new Argon2id hash of `password` with a random salt (the form `keelmq passwd` writes).
    pub fn new_argon2id(password: &[u8]) -> Result<Hash, HashError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(malformed("argon2", "password longer than 1024 bytes"));
        }
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let phc = argon2::Argon2::default()
            .hash_password(password, &salt)
            .map_err(|_| malformed("argon2", "hashing failed"))?;
        Ok(Hash::Argon2(phc.to_string()))
    }

    /// The hash as a password file line holds it.
    pub fn render(&self) -> String {
        match self {
            Hash::Argon2(s) | Hash::Bcrypt(s) => s.clone(),
            Hash::MosquittoSha512 { salt, hash } => {
                format!("$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            Hash::MosquittoPbkdf2 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
            Hash::EmqxSalted {
                sha512,
                salt_first,
                salt,
                hash,
            } => format!(
                "$emqx-{}${}${}${}",
                if *sha512 { "sha512" } else { "sha256" },
                if *salt_first { "prefix" } else { "suffix" },
                String::from_utf8_lossy(salt),
                to_hex(hash)
            ),
            Hash::EmqxPbkdf2 {
                sha512,
                iterations,
                salt,
                hash,
            } => format!(
                "$emqx-pbkdf2${}${iterations}${}${}",
                if *sha512 { "sha512" } else { "sha256" },
                String::from_utf8_lossy(salt),
                to_hex(hash)
            ),
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn pbkdf2_matches(sha512: bool, password: &[u8], salt: &[u8], rounds: u32, hash: &[u8]) -> bool {
    if hash.is_empty() || hash.len() > 128 {
        return false;
    }
    let mut out = vec![0u8; hash.len()];
    let done = match sha512 {
        true => pbkdf2::pbkdf2::<hmac::Hmac<Sha512>>(password, salt, rounds, &mut out),
        false => pbkdf2::pbkdf2::<hmac::Hmac<Sha256>>(password, salt, rounds, &mut out),
    };
    done.is_ok() && same(&out, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_hashes_verify() {
        // Written by mosquitto_passwd 2.0.11 (`-b`, and `-H sha512 -b`).
        let pbkdf2 = "$7$101$X6yvMX0fo+YHF+Bd$/qeLQQH+23KXVZDT68+RUJaJHqkSNrsKy09Fr0j45BtS1qvibC+pVfO3b922YFQ6wBQb8TINAXsLgb2bEWmLMg==";
        let sha512 = "$6$D2oesstoEJ/N0ksU$veeq1z3yNd9LZkIBVrnaKjTY6fSjtajo0e2mn2vo3eSxsWWreCBfw/sTLOz+m+dD3/9KtStZPFp3w+N9SjhKcg==";
        let h = Hash::parse(pbkdf2).unwrap();
        assert!(h.verify(b"secret1"));
        assert!(!h.verify(b"secret2"));
        assert_eq!(h.render(), pbkdf2);
        let h = Hash::parse(sha512).unwrap();
        assert!(h.verify(b"secret2"));
        assert!(!h.verify(b"secret1"));
        assert_eq!(h.render(), sha512);
    }

    #[test]
    fn argon2id_round_trips() {
        let h = Hash::new_argon2id(b"pw").unwrap();
        assert!(h.render().starts_with("$argon2id$"));
        let parsed = Hash::parse(&h.render()).unwrap();
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"pW"));
        assert!(!parsed.verify(&[b'p'; MAX_PASSWORD_LEN + 1]));
    }

    #[test]
    fn emqx_forms_verify() {
        let salt = "s4lt";
        let hex_of = |d: &[u8]| to_hex(d);
        let prefix = hex_of(&Sha256::digest(b"s4ltpw"));
        let h = Hash::parse(&format!("$emqx-sha256$prefix${salt}${prefix}")).unwrap();
        assert!(h.verify(b"pw") && !h.verify(b"px"));
        let suffix = hex_of(&Sha512::digest(b"pws4lt"));
        let h = Hash::parse(&format!("$emqx-sha512$suffix${salt}${suffix}")).unwrap();
        assert!(h.verify(b"pw") && !h.verify(b"px"));
        let mut dk = [0u8; 32];
        pbkdf2::pbkdf2::<hmac::Hmac<Sha256>>(b"pw", salt.as_bytes(), 1000, &mut dk).unwrap();
        let line = format!("$emqx-pbkdf2$sha256$1000${salt}${}", hex_of(&dk));
        let h = Hash::parse(&line).unwrap();
        assert!(h.verify(b"pw") && !h.verify(b"px"));
        assert_eq!(h.render(), line);
        let b = bcrypt::hash("pw", 4).unwrap();
        let h = Hash::parse(&b).unwrap();
        assert!(h.verify(b"pw") && !h.verify(b"px"));
    }

    #[test]
    fn malformed_hashes_say_why() {
        assert_eq!(Hash::parse("plain"), Err(HashError::NotAHash));
        assert_eq!(
            Hash::parse("$md5$x"),
            Err(HashError::UnknownScheme("md5".into()))
        );
        assert!(matches!(
            Hash::parse("$7$0$AAAA$AAAA"),
            Err(HashError::Malformed { .. })
        ));
        assert!(matches!(
            Hash::parse("$7$999999999$AAAA$AAAA"),
            Err(HashError::Malformed { .. })
        ));
        assert!(matches!(
            Hash::parse("$6$!!$AAAA"),
            Err(HashError::Malformed { .. })
        ));
        assert!(matches!(
            Hash::parse("$emqx-sha256$middle$s$00"),
            Err(HashError::Malformed { .. })
        ));
        let heavy = "$argon2id$v=19$m=4194304,t=2,p=1$O0YRVCleWnSmsciK4+xmHA$MZ9vsjQ3GnGzifUhX7Cj8BbFseFEY0+epzF9L9fWJGI";
        assert!(matches!(
            Hash::parse(heavy),
            Err(HashError::Malformed { .. })
        ));
        let slow = "$2b$31$abcdefghijklmnopqrstuu5ZSE6SBlWvJPzFIOkPZVd6RzKhybtSm";
        assert!(
            matches!(Hash::parse(slow), Err(HashError::Malformed { .. })),
            "{:?}",
            Hash::parse(slow)
        );
        assert!(matches!(
            Hash::parse("$argon2id$nonsense"),
            Err(HashError::Malformed { .. })
        ));
    }
}
