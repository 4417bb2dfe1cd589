//! Who may connect: `mqtt.allow_anonymous` and the password file (`mqtt.password_file`).
//!
//! The password file has one `username:PHC` line per user, the PHC string an Argon2 hash
//! (`$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH`, salted; `rmq user add` writes Argon2id with the
//! argon2 crate's defaults: 19 MiB, 2 passes, 1 lane). Blank lines and lines starting with `#`
//! are ignored. Decisions (as Mosquitto):
//! - no username: accepted only with `allow_anonymous` (else 3.1.1 code 5 / v5 0x87);
//! - a password file is configured: a username must be in it with the right password, an
//!   unknown user or a wrong or missing password is refused (3.1.1 code 4 / v5 0x86);
//! - no password file: a username is not checked.
//!
//! Verifying an Argon2 hash costs tens of milliseconds of CPU and 19 MiB: it runs off the
//! shard's event loop (`MqttKernel::run_blocking`, glommio's per-executor blocking thread), at
//! most `MAX_PENDING_PASSWORD_CHECKS` per shard at once (beyond: refused as server busy), and
//! each shard remembers up to `VERIFIED_CACHE_ENTRIES` successful logins as a BLAKE2s digest
//! of (username, password, stored hash) — never the password — so a reconnect with the same
//! credentials costs one hash of a few bytes. Failures are never cached.
//!
//! Concurrency contract: `PasswordFile` is immutable after loading and shared by all shards
//! behind an `Arc`; `VerifiedCache` belongs to one shard (not `Sync`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use blake2::{Blake2s256, Digest};

/// Successful logins a shard remembers (32 bytes each); the set is emptied when full.
pub const VERIFIED_CACHE_ENTRIES: usize = 4_096;
/// Password verifications a shard runs or queues at once; more CONNECTs are refused as busy.
pub const MAX_PENDING_PASSWORD_CHECKS: usize = 64;
/// Largest Argon2 memory cost (`m`, KiB) a password file may ask for: one check allocates it.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
/// Largest Argon2 time cost (`t`, passes) a password file may ask for.
pub const MAX_ARGON2_PASSES: u32 = 16;

/// The users of a password file: username -> PHC string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

/// One line of a password file: `Ok(None)` for a blank or comment line.
pub fn parse_line(line: &str) -> Result<Option<(&str, &str)>, String> {
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let Some((username, hash)) = line.split_once(':') else {
        return Err("expected username:$argon2id$... (no ':')".into());
    };
    if username.is_empty() {
        return Err("empty username".into());
    }
    check_hash(hash)?;
    Ok(Some((username, hash)))
}

/// A PHC string of an Argon2 hash.
fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("not a PHC string ({e})"))?;
    let algorithm = parsed.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(format!("algorithm {algorithm} is not Argon2"));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("PHC string without salt or hash".into());
    }
    let memory_kib = parsed.params.get_decimal("m").unwrap_or(0);
    let passes = parsed.params.get_decimal("t").unwrap_or(0);
    if memory_kib > MAX_ARGON2_MEMORY_KIB || passes > MAX_ARGON2_PASSES {
        return Err(format!(
            "Argon2 cost m={memory_kib} KiB, t={passes} over the limits \
             m<={MAX_ARGON2_MEMORY_KIB}, t<={MAX_ARGON2_PASSES}"
        ));
    }
    Ok(())
}

impl PasswordFile {
    /// Parses a password file's text; errors say `PATH:LINE: what`.
    pub fn parse(text: &str, path: &str) -> Result<PasswordFile, String> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let entry = parse_line(line).map_err(|e| format!("{path}:{number}: {e}"))?;
            if let Some((username, hash)) = entry {
                if users
                    .insert(username.to_string(), hash.to_string())
                    .is_some()
                {
                    return Err(format!("{path}:{number}: user {username:?} appears twice"));
                }
            }
        }
        Ok(PasswordFile { users })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<PasswordFile, String> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read password file {shown}: {e}"))?;
        PasswordFile::parse(&text, &shown)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The stored PHC string of `username`.
    pub fn hash_of(&self, username: &str) -> Option<&str> {
        self.users.get(username).map(String::as_str)
    }
}

/// A new salted Argon2id PHC string for `password` (the argon2 crate's default parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `hash` (CPU heavy: see the module doc).
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Digest of one (username, password, stored hash) triple for `VerifiedCache`.
pub fn login_digest(username: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut hasher = Blake2s256::new();
    for part in [username, password, hash] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// One shard's successful logins (digests), bounded by `VERIFIED_CACHE_ENTRIES`.
#[derive(Default)]
pub struct VerifiedCache {
    digests: RefCell<HashSet<[u8; 32]>>,
}

impl VerifiedCache {
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.digests.borrow().contains(digest)
    }

    pub fn insert(&self, digest: [u8; 32]) {
        let mut digests = self.digests.borrow_mut();
        if digests.len() >= VERIFIED_CACHE_ENTRIES {
            digests.clear();
        }
        digests.insert(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let one = hash_password("s3cret").expect("hash");
        let two = hash_password("s3cret").expect("hash");
        assert!(one.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{one}");
        assert_ne!(one, two);
        assert!(verify_password("s3cret", &one));
        assert!(!verify_password("s3cret!", &one));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[test]
    fn password_file_parses_users_comments_and_blank_lines() {
        let hash = hash_password("pw").expect("hash");
        let text = format!("# users\n\nalice:{hash}\r\nbob:{hash}\n");
        let file = PasswordFile::parse(&text, "pw.txt").expect("valid");
        assert_eq!(file.len(), 2);
        assert_eq!(file.hash_of("alice"), Some(hash.as_str()));
        assert_eq!(file.hash_of("carol"), None);
    }

    #[test]
    fn malformed_lines_are_named_by_file_and_line() {
        let hash = hash_password("pw").expect("hash");
        let cases = [
            (
                format!("alice:{hash}\nbob\n"),
                "pw.txt:2: expected username",
            ),
            (format!(":{hash}\n"), "pw.txt:1: empty username"),
            ("alice:plain\n".to_string(), "pw.txt:1: not a PHC string"),
            (
                "alice:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n".to_string(),
                "pw.txt:1: algorithm pbkdf2-sha256 is not Argon2",
            ),
            (
                format!("alice:{hash}\n#\nalice:{hash}\n"),
                "pw.txt:3: user \"alice\" appears twice",
            ),
        ];
        for (text, want) in cases {
            let error = PasswordFile::parse(&text, "pw.txt").expect_err("must fail");
            assert!(error.starts_with(want), "{error}");
        }
        let missing = PasswordFile::load(std::path::Path::new("/nonexistent/rmq-pw"))
            .expect_err("missing file");
        assert!(
            missing.starts_with("cannot read password file /nonexistent/rmq-pw"),
            "{missing}"
        );
    }

    #[test]
    fn verified_cache_is_bounded() {
        let cache = VerifiedCache::default();
        let first = login_digest("u", "p", "h");
        assert_ne!(first, login_digest("u", "p2", "h"));
        assert_ne!(login_digest("ab", "c", "h"), login_digest("a", "bc", "h"));
        cache.insert(first);
        assert!(cache.contains(&first));
        for i in 0..VERIFIED_CACHE_ENTRIES {
            cache.insert(login_digest("u", &i.to_string(), "h"));
        }
        assert!(cache.digests.borrow().len() <= VERIFIED_CACHE_ENTRIES);
    }
}
