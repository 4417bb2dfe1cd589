//! `rmq user add|delete`: edit an MQTT password file (`mqtt.password_file`) offline. No
//! broker is contacted; the node reads the file at startup, so restart it after a change.
//!
//! The file is rewritten atomically: the new text goes to a temporary file beside it (mode
//! 0600), is synced, then renamed over the old one, so a reader sees the old or the new file,
//! never half of one. Other lines (comments, other users) are kept as they are. Two `rmq user`
//! runs on one file at once may lose one of the changes (no lock).

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use rmq_protocols::mqtt::auth::{hash_password, parse_line};

/// Longest password read from stdin.
const MAX_PASSWORD_BYTES: usize = 65_535;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user, or set the password of an existing one (Argon2id, salted). Creates the
    /// file if it does not exist. Without --password the password is the first line of stdin.
    Add {
        /// The password file (mqtt.password_file of the node's config).
        #[arg(long, value_name = "PATH")]
        password_file: PathBuf,
        /// The MQTT username (no ':').
        #[arg(long)]
        username: String,
        /// The password (visible in the process list: prefer stdin).
        #[arg(long)]
        password: Option<String>,
    },
    /// Remove a user from the password file.
    Delete {
        /// The password file (mqtt.password_file of the node's config).
        #[arg(long, value_name = "PATH")]
        password_file: PathBuf,
        /// The MQTT username.
        #[arg(long)]
        username: String,
    },
}

pub fn run(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            password_file,
            username,
            password,
        } => {
            let password = match password {
                Some(password) => password,
                None => read_password()?,
            };
            add(&password_file, &username, &password)?;
            println!("user {username} set in {}", password_file.display());
            Ok(())
        }
        UserCommand::Delete {
            password_file,
            username,
        } => {
            delete(&password_file, &username)?;
            println!("user {username} deleted from {}", password_file.display());
            Ok(())
        }
    }
}

/// The first line of stdin, without its line end.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_PASSWORD_BYTES as u64 + 2)
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.len() > MAX_PASSWORD_BYTES {
        bail!("password longer than {MAX_PASSWORD_BYTES} bytes");
    }
    Ok(password.to_string())
}

fn check_username(username: &str) -> anyhow::Result<()> {
    if username.is_empty() || username.contains([':', '\n', '\r']) || username.starts_with('#') {
        bail!("invalid username {username:?} (non-empty, no ':' or line break, not starting with '#')");
    }
    Ok(())
}

/// The file's lines, each checked (a malformed file is not rewritten); none if it is absent.
fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        parse_line(line).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), index + 1))?;
        lines.push(line.trim_end_matches('\r').to_string());
    }
    Ok(lines)
}

fn user_of(line: &str) -> Option<&str> {
    parse_line(line)
        .ok()
        .flatten()
        .map(|(username, _)| username)
}

/// Sets `username`'s password in the file at `path`.
pub fn add(path: &Path, username: &str, password: &str) -> anyhow::Result<()> {
    check_username(username)?;
    if password.is_empty() {
        bail!("empty password (MQTT clients cannot send one)");
    }
    let hash = hash_password(password).map_err(anyhow::Error::msg)?;
    let entry = format!("{username}:{hash}");
    let mut lines = read_lines(path)?;
    match lines
        .iter()
        .position(|line| user_of(line) == Some(username))
    {
        Some(index) => lines[index] = entry,
        None => lines.push(entry),
    }
    write_atomically(path, &lines)
}

/// Removes `username` from the file at `path`.
pub fn delete(path: &Path, username: &str) -> anyhow::Result<()> {
    let mut lines = read_lines(path)?;
    let before = lines.len();
    lines.retain(|line| user_of(line) != Some(username));
    if lines.len() == before {
        bail!("no user {username:?} in {}", path.display());
    }
    write_atomically(path, &lines)
}

fn write_atomically(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut text = lines.join("\n");
    text.push('\n');
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // Make the rename durable.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmq_protocols::mqtt::auth::{verify_password, PasswordFile};

    #[test]
    fn add_replace_and_delete_keep_other_lines() {
        let dir = std::env::temp_dir().join(format!("rmq-user-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("passwords");
        std::fs::write(&path, "# operators\n").expect("write");
        add(&path, "alice", "one").expect("add alice");
        add(&path, "bob", "two").expect("add bob");
        add(&path, "alice", "three").expect("replace alice");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# operators\nalice:$argon2id$"), "{text}");
        let file = PasswordFile::parse(&text, "passwords").expect("valid");
        assert_eq!(file.len(), 2);
        assert!(verify_password(
            "three",
            file.hash_of("alice").expect("alice")
        ));
        assert!(verify_password("two", file.hash_of("bob").expect("bob")));
        delete(&path, "alice").expect("delete alice");
        assert!(delete(&path, "alice").is_err());
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        assert!(add(&path, "a:b", "x").is_err());
        assert!(add(&path, "carol", "").is_err());
        std::fs::write(&path, "broken line\n").expect("write");
        let error = add(&path, "dave", "x").expect_err("malformed file");
        assert!(error.to_string().contains("passwords:1:"), "{error}");
        std::fs::remove_dir_all(dir).ok();
    }
}
