//! Operator tokens: each node makes its own at first start in its data
//! directory, readable by the daemon's user only (0600); the `kiln`
//! subcommands read it from there. Nodes that share a store accept each
//! other's tokens: each files a hash of its own there (the store keeps no
//! token itself), so the token of node A works on node B. The admin
//! endpoints' guard (`ops::admin_auth`) asks [`OperatorTokens::accepts`].

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// The operator token, made (0600) if the data directory has none yet.
pub fn ensure_token(data_dir: &Path) -> std::io::Result<String> {
    let path = token_path(data_dir);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let token = crate::ses::random_token(43);
            file.write_all(token.as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "admin token created");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "admin token readable by others: made 0600");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            read_token(data_dir)
        }
        Err(e) => Err(e),
    }
}

/// The token as a `kiln` subcommand reads it from the data directory.
pub fn read_token(data_dir: &Path) -> std::io::Result<String> {
    let token = std::fs::read_to_string(token_path(data_dir))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the admin token file is empty",
        ));
    }
    Ok(token.to_string())
}

/// Where nodes sharing a store file their tokens' hashes.
const CLUSTER_TOKENS: &str = "operator-tokens";

/// The operator tokens this node accepts: its own, and those of the other
/// nodes on its store (by hash, looked up at most once a second).
pub struct OperatorTokens {
    local: Arc<str>,
    store: crate::store::Store,
    known: std::sync::Mutex<(Option<std::time::Instant>, Vec<String>)>,
}

fn hash(token: &str) -> String {
    crate::digest::fingerprint(&["operator token", token])
}

impl OperatorTokens {
    /// This node's token, filed (as a hash) for the nodes on `store`.
    pub async fn new(
        local: String,
        store: crate::store::Store,
    ) -> crate::store::Result<OperatorTokens> {
        store.set_add(CLUSTER_TOKENS, &hash(&local), None).await?;
        Ok(OperatorTokens {
            local: Arc::from(local),
            store,
            known: std::sync::Mutex::new((None, Vec::new())),
        })
    }

    /// This node's own token.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Whether `shown` is an operator token of this node or of another
    /// node on the same store.
    pub async fn accepts(&self, shown: &str) -> bool {
        use crate::ses::config_accounts::constant_time_eq;
        if constant_time_eq(shown.as_bytes(), self.local.as_bytes()) {
            return true;
        }
        self.accepts_hash(&hash(shown)).await
    }

    /// Whether a token whose hash is `h` is accepted (see [`hash`]): what a
    /// console session keeps of the token it was opened with.
    pub async fn accepts_hash(&self, h: &str) -> bool {
        let fresh = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.1.iter().any(|k| k == h) {
                return true;
            }
            known
                .0
                .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1))
        };
        if fresh {
            return false;
        }
        let Ok(members) = self.store.set_members(CLUSTER_TOKENS).await else {
            return false;
        };
        let found = members.iter().any(|k| k == h);
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) =
            (Some(std::time::Instant::now()), members);
        found
    }

    /// The hash a session keeps of the token shown at sign-in.
    pub fn hash_of(shown: &str) -> String {
        hash(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let token = ensure_token(dir.path()).unwrap();
        assert!(token.len() >= 40);
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure_token(dir.path()).unwrap(), token);
        std::fs::set_permissions(
            token_path(dir.path()),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert_eq!(ensure_token(dir.path()).unwrap(), token);
        let mode = std::fs::metadata(token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "a token others could read is made private"
        );
    }
}
