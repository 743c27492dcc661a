//! Who may use the admin endpoints: a process on this host (loopback) that
//! also shows the operator token. The token is made at first start in the
//! data directory, readable by the daemon's user only (0600); the `kiln`
//! subcommands read it from there (run them as that user). Loopback alone
//! is no fence: any local process, or a reverse proxy on this host,
//! connects from there.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use std::io::Write;
use std::net::SocketAddr;
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

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    super::admin::error(status, code, message)
}

/// Lets a request through to an admin endpoint only from loopback with
/// `Authorization: Bearer <token>`.
pub async fn guard(
    State(token): State<Arc<str>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !peer.ip().is_loopback() {
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "admin endpoints answer on loopback only",
        );
    }
    let shown = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match shown {
        Some(t)
            if crate::ses::config_accounts::constant_time_eq(t.as_bytes(), token.as_bytes()) =>
        {
            next.run(request).await
        }
        _ => {
            tracing::warn!(%peer, path = %request.uri().path(), "admin request without the operator token refused");
            refuse(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "admin endpoints need the operator token (Authorization: Bearer <token>; the kiln command reads it from the data directory's admin.token)",
            )
        }
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
