//! `keelmq passwd`: manages a password file with `mosquitto_passwd`'s conventions.
//!
//! ```text
//! keelmq passwd [-c] FILE USER           prompt for USER's password (twice), add or replace it
//! keelmq passwd [-c] -b FILE USER PASS   the same, password on the command line
//! keelmq passwd -D FILE USER             delete USER
//! keelmq passwd -U FILE                  hash every plain-text password of FILE in place
//! ```
//! `-c` creates (or overwrites) FILE; without it FILE must exist. New entries are Argon2id.
//! The file is replaced atomically and readable by its owner only.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use keelmq_auth::passwd::check_username;
use keelmq_auth::{Hash, PasswordFile, MAX_PASSWORD_LEN};

#[derive(clap::Args)]
pub struct PasswdArgs {
    /// Create a new password file, overwriting an existing one.
    #[arg(short = 'c', conflicts_with_all = ["delete", "update"])]
    create: bool,
    /// Delete USER instead of setting a password.
    #[arg(short = 'D', conflicts_with = "update")]
    delete: bool,
    /// Hash every plain-text password of FILE (lines `user:password`) in place.
    #[arg(short = 'U')]
    update: bool,
    /// Batch mode: the password is the argument after USER.
    #[arg(short = 'b')]
    batch: bool,
    /// The password file.
    file: PathBuf,
    /// The username.
    user: Option<String>,
    /// The password (with -b).
    password: Option<String>,
}

pub fn run(a: PasswdArgs) -> anyhow::Result<()> {
    if a.update {
        if a.user.is_some() {
            bail!("-U takes only the file");
        }
        return update(&a.file);
    }
    let Some(user) = a.user.as_deref() else {
        bail!("USER is missing (see keelmq passwd --help)");
    };
    check_username(user).map_err(|e| anyhow::anyhow!("username: {e}"))?;
    if a.delete {
        let mut file = load(&a.file)?;
        if !file.remove(user) {
            bail!("user {user} is not in {}", a.file.display());
        }
        return save(&a.file, &file);
    }
    let password = match (a.batch, a.password) {
        (true, Some(p)) => p,
        (true, None) => bail!("-b needs the password after USER"),
        (false, Some(_)) => bail!("a password on the command line needs -b"),
        (false, None) => prompt()?,
    };
    if password.len() > MAX_PASSWORD_LEN {
        bail!("the password is longer than {MAX_PASSWORD_LEN} bytes");
    }
    let mut file = match a.create {
        true => PasswordFile::default(),
        false => load(&a.file)?,
    };
    let hash = Hash::new_argon2id(password.as_bytes())?;
    file.set(user, hash)
        .map_err(|e| anyhow::anyhow!("username: {e}"))?;
    save(&a.file, &file)
}

/// The file as it is, plain-text entries allowed (they are kept as they are).
fn load(path: &Path) -> anyhow::Result<PasswordFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} (-c creates it)", path.display()))?;
    PasswordFile::parse_lenient(&text).with_context(|| format!("{}", path.display()))
}

fn update(path: &Path) -> anyhow::Result<()> {
    let mut file = load(path)?;
    let n = file.hash_plain(|p| Hash::new_argon2id(p.as_bytes()))?;
    save(path, &file)?;
    eprintln!("{n} password(s) hashed in {}", path.display());
    Ok(())
}

/// Writes `file` to `path` through a temporary file renamed over it, mode 0600.
fn save(path: &Path, file: &PasswordFile) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    out.write_all(file.render().as_bytes())?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Asks for the password twice: on the terminal without echo, or as two lines of standard
/// input when it is not a terminal.
fn prompt() -> anyhow::Result<String> {
    let (first, second) = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        (first, rpassword::prompt_password("Reenter password: ")?)
    } else {
        let mut lines = std::io::stdin().lock().lines();
        let mut next = || -> anyhow::Result<String> {
            Ok(lines
                .next()
                .context("expected the password twice on standard input")??)
        };
        (next()?, next()?)
    };
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}
