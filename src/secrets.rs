//! Server secrets kept beside the data: the HMAC key for code digests, the
//! key that seals internal messages and the HTTP API keys. Either comes from configuration, or from a file in the data
//! directory that is created (mode 0600) on first start.

use crate::config::{BrokerConfig, Secret};
use crate::domain::{DigestKey, KeyRing, SealKey, SealRing};
use rand::RngCore;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A secret could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading or writing a secret file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A configured or stored secret is malformed.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io { path: path.to_owned(), source }
}

/// Creates the data directory (mode 0700) if needed. One that exists is
/// made private too: the directory and every directory under it 0700, every
/// file 0600 (sled's files included); if that cannot be done (another owner),
/// start-up fails with the path.
pub fn ensure_data_dir(dir: &Path) -> Result<(), SecretError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        return Ok(());
    }
    make_private(dir)
}

/// Takes group and other permissions off `path` and, for a directory,
/// everything below it (symbolic links are left alone).
fn make_private(path: &Path) -> Result<(), SecretError> {
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let wanted = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o777 != wanted && meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "data dir entry was readable by group or others; made private");
        fs::set_permissions(path, fs::Permissions::from_mode(wanted)).map_err(io(path))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(io(path))? {
            make_private(&entry.map_err(io(path))?.path())?;
        }
    }
    Ok(())
}

/// Writes `contents` to a new file readable by its owner only.
fn create_private(path: &Path, contents: &str) -> Result<(), SecretError> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(io(path))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn warn_if_shared(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "secret file is readable by group or others; chmod 600 it");
    }
}

/// The digest key: `configured` (hex) if set, else `<data_dir>/hmac.key`.
pub fn hmac_key(configured: Option<&str>, data_dir: &Path) -> Result<DigestKey, SecretError> {
    let (hex_key, source) = match configured {
        Some(k) => (k.trim().to_owned(), "store.hmac_key".to_owned()),
        None => {
            let path = data_dir.join("hmac.key");
            if !path.exists() {
                create_private(&path, &random_hex(32))?;
                tracing::info!(path = %path.display(), "created a new HMAC key");
            }
            warn_if_shared(&path);
            (fs::read_to_string(&path).map_err(io(&path))?.trim().to_owned(), path.display().to_string())
        }
    };
    let bytes = hex::decode(&hex_key).map_err(|e| SecretError::Invalid(format!("{source}: not hex: {e}")))?;
    DigestKey::new(bytes).map_err(|e| SecretError::Invalid(format!("{source}: {e}")))
}

/// The key ring: the current key (see [`hmac_key`]) and the retired keys in
/// `previous` (hex), which keep verifying codes issued before a rotation.
pub fn key_ring(configured: Option<&str>, previous: &[Secret], data_dir: &Path) -> Result<KeyRing, SecretError> {
    let current = hmac_key(configured, data_dir)?;
    let previous = previous
        .iter()
        .enumerate()
        .map(|(i, hex_key)| {
            let bytes = hex::decode(hex_key.expose().trim())
                .map_err(|e| SecretError::Invalid(format!("store.previous_hmac_keys[{i}]: not hex: {e}")))?;
            DigestKey::new(bytes).map_err(|e| SecretError::Invalid(format!("store.previous_hmac_keys[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KeyRing::new(current, previous))
}

/// The ring that seals internal messages: `config.internal_key` (hex) if
/// set, else the key in `config.internal_key_file` (default
/// `<data_dir>/internal.key`), created if missing; plus the retired keys.
pub fn seal_ring(config: &BrokerConfig, data_dir: &Path) -> Result<SealRing, SecretError> {
    let (hex_key, source) = match &config.internal_key {
        Some(k) => (k.expose().trim().to_owned(), "broker.internal_key".to_owned()),
        None => {
            let path = config.internal_key_file.clone().unwrap_or_else(|| data_dir.join("internal.key"));
            read_or_create(&path)?;
            warn_if_shared(&path);
            (fs::read_to_string(&path).map_err(io(&path))?.trim().to_owned(), path.display().to_string())
        }
    };
    let key = |hex_key: &str, source: &str| {
        let bytes = hex::decode(hex_key).map_err(|e| SecretError::Invalid(format!("{source}: not hex: {e}")))?;
        SealKey::new(bytes).map_err(|e| SecretError::Invalid(format!("{source}: {e}")))
    };
    let current = key(&hex_key, &source)?;
    let previous = config
        .previous_internal_keys
        .iter()
        .enumerate()
        .map(|(i, k)| key(k.expose().trim(), &format!("broker.previous_internal_keys[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SealRing::new(current, previous))
}

/// Creates the key file at `path` with a random key unless it exists. Two
/// processes starting at once agree: the key is written to a private temporary
/// file and linked into place, which only the first link does.
fn read_or_create(path: &Path) -> Result<(), SecretError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let temporary = path.with_extension(format!("tmp-{}", random_hex(8)));
    create_private(&temporary, &random_hex(32))?;
    let linked = fs::hard_link(&temporary, path);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new key for sealing internal messages");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SecretError::Io { path: path.to_owned(), source: e }),
    }
}

/// Shortest API key accepted.
pub const MIN_API_KEY_LEN: usize = 16;

/// Checks `http.scoped_api_keys`: application names of 1–64 letters, digits,
/// `.`, `_` or `-`; keys of at least [`MIN_API_KEY_LEN`] characters, none
/// also unscoped (in `unscoped`) or given to two applications.
pub fn check_scoped_keys<S: AsRef<str>>(
    scoped: &BTreeMap<String, Vec<Secret>>,
    unscoped: &[S],
) -> Result<(), SecretError> {
    let mut seen: std::collections::HashSet<&str> = unscoped.iter().map(|k| k.as_ref().trim()).collect();
    for (app, keys) in scoped {
        let name_ok = (1..=64).contains(&app.len())
            && app.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(SecretError::Invalid(format!(
                "http.scoped_api_keys: application name {app:?} must be 1-64 letters, digits, '.', '_' or '-'"
            )));
        }
        for key in keys {
            if key.expose().trim().len() < MIN_API_KEY_LEN {
                return Err(SecretError::Invalid(format!(
                    "http.scoped_api_keys.{app}: keys must be at least {MIN_API_KEY_LEN} characters"
                )));
            }
            if !seen.insert(key.expose().trim()) {
                return Err(SecretError::Invalid(format!(
                    "http.scoped_api_keys.{app}: a key is also another application's or unscoped"
                )));
            }
        }
    }
    Ok(())
}

/// API keys: `configured` if not empty, else the lines of `<data_dir>/api_keys`.
/// If that file does not exist it is created with one random key, which is
/// returned as the second value so the caller can show it once.
pub fn api_keys(configured: &[Secret], data_dir: &Path) -> Result<(Vec<String>, Option<String>), SecretError> {
    let mut created = None;
    let keys: Vec<String> = if configured.is_empty() {
        let path = data_dir.join("api_keys");
        if !path.exists() {
            let key = format!("otpk_{}", random_hex(24));
            create_private(&path, &format!("# otp-pipeline API keys, one per line\n{key}\n"))?;
            created = Some(key);
        }
        warn_if_shared(&path);
        fs::read_to_string(&path)
            .map_err(io(&path))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    } else {
        configured.iter().map(|k| k.expose().trim().to_owned()).collect()
    };
    if keys.is_empty() {
        return Err(SecretError::Invalid("no API key configured: the HTTP API would be closed to everyone".into()));
    }
    if let Some(short) = keys.iter().find(|k| k.len() < MIN_API_KEY_LEN) {
        return Err(SecretError::Invalid(format!(
            "API keys must be at least {MIN_API_KEY_LEN} characters (one has {})",
            short.len()
        )));
    }
    Ok((keys, created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_data_dir_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("sled")).unwrap();
        fs::write(data.join("sled/db"), b"x").unwrap();
        for (path, mode) in [(data.clone(), 0o755), (data.join("sled"), 0o755), (data.join("sled/db"), 0o644)] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        ensure_data_dir(&data).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&data), mode(&data.join("sled")), mode(&data.join("sled/db"))), (0o700, 0o700, 0o600));
    }

    #[test]
    fn hmac_key_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let a = hmac_key(None, dir.path()).unwrap();
        let b = hmac_key(None, dir.path()).unwrap();
        assert_eq!(a.id(), b.id());
        let mode = fs::metadata(dir.path().join("hmac.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn configured_hmac_key_must_be_long_hex() {
        let dir = tempfile::tempdir().unwrap();
        assert!(hmac_key(Some("abcd"), dir.path()).is_err());
        assert!(hmac_key(Some("zz"), dir.path()).is_err());
        assert!(hmac_key(Some(&"ab".repeat(32)), dir.path()).is_ok());
    }

    #[test]
    fn api_key_file_is_created_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, created) = api_keys(&[], dir.path()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(created.as_deref(), Some(keys[0].as_str()));
        let (again, created) = api_keys(&[], dir.path()).unwrap();
        assert_eq!((again, created), (keys, None));
    }

    #[test]
    fn the_seal_key_is_created_once_and_shared_by_every_process() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::default();
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| seal_ring(&config, dir.path()).unwrap());
            let b = s.spawn(|| seal_ring(&config, dir.path()).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(a.id(), b.id());
        let path = dir.path().join("internal.key");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(files(dir.path()), ["internal.key"]);
        let configured = BrokerConfig { internal_key: Some("ab".repeat(32).into()), ..Default::default() };
        assert_ne!(seal_ring(&configured, dir.path()).unwrap().id(), a.id());
        let short = BrokerConfig { internal_key: Some("ab".repeat(8).into()), ..Default::default() };
        assert!(seal_ring(&short, dir.path()).is_err());
    }

    fn files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn scoped_keys_need_good_names_long_keys_and_no_key_twice() {
        let scoped = |app: &str, key: &str| BTreeMap::from([(app.to_owned(), vec![Secret::from(key)])]);
        let unscoped = vec!["unscoped-key-0123456789".to_owned()];
        assert!(check_scoped_keys(&scoped("billing", "billing-key-0123456789"), &unscoped).is_ok());
        assert!(check_scoped_keys(&scoped("bill ing", "billing-key-0123456789"), &unscoped).is_err());
        assert!(check_scoped_keys(&scoped("", "billing-key-0123456789"), &unscoped).is_err());
        assert!(check_scoped_keys(&scoped("billing", "short"), &unscoped).is_err());
        assert!(check_scoped_keys(&scoped("billing", "unscoped-key-0123456789"), &unscoped).is_err());
    }

    #[test]
    fn short_api_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(api_keys(&["short".into()], dir.path()).is_err());
    }
}
