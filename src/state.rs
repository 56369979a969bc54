//! Gateway state that must outlive the outbox, in a small file beside the config file
//! (`/etc/lotlink/lotlink.state` for `/etc/lotlink/lotlink.toml`: [`path_for`]). It does
//! not live in the outbox, so pointing `[outbox] path` at a new directory cannot reset it.
//!
//! | setting | accessor | what |
//! |---|---|---|
//! | `last_push_version` | [`GatewayState::last_push_version`] | the last config-push version accepted ([`crate::manage`]); a push must be newer. Absent until the first start that has this file, which takes it once from the outbox's old `config_version` setting. |
//! | `outbox_path` | [`GatewayState::outbox_path`] | the outbox directory last in use; a start with another `[outbox] path` first checks the old one (see [`crate::daemon`]) |
//!
//! The file is JSON with a format number,
//! `{"format": 1, "last_push_version": 7, "outbox_path": "/var/lib/lotlink/outbox"}`,
//! mode 0600, and is written whole and atomically on every change (temp file, fsync, rename,
//! fsync of the directory): a crash leaves the old or the new content. A file that cannot
//! be read, does not parse, or has a format this build does not know stops the daemon
//! with the file named: a start that silently forgot the last push version would accept
//! an old signed push again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The format this build reads and writes.
pub(crate) const FORMAT: u32 = 1;

/// Errors of the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("{path}: cannot read the gateway state file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a state file of a format this build knows.
    #[error("{path}: not a gateway state file this lotlink can read ({message}); it keeps the last accepted config-push version and the outbox path in use: restore it from a backup, or delete it (the next start records the running outbox path and the push version 0, so an old signed push would be accepted again)")]
    Invalid { path: PathBuf, message: String },
    /// The file could not be written.
    #[error("{path}: cannot write the gateway state file (the config file's directory must be writable by lotlink): {message}")]
    Write { path: PathBuf, message: String },
}

/// The state file of the config file at `config`: same directory, same stem, `.state`.
pub(crate) fn path_for(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "lotlink".into(), |s| s.to_string_lossy().into_owned());
    config.with_file_name(format!("{stem}.state"))
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    /// Always [`FORMAT`] when written by this build.
    format: u32,
    /// See [`GatewayState::last_push_version`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_push_version: Option<u64>,
    /// See [`GatewayState::outbox_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outbox_path: Option<PathBuf>,
}

/// Only the format number, read first so that a newer file is named as such.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// The state file, loaded; each setter writes the file before it changes what the getters
/// return.
#[derive(Debug)]
pub(crate) struct GatewayState {
    path: PathBuf,
    data: Mutex<Data>,
}

impl GatewayState {
    /// Read the file at `path`; a file that does not exist is an empty state.
    pub(crate) fn load(path: &Path) -> Result<GatewayState, StateError> {
        let data = match std::fs::read(path) {
            Ok(bytes) => parse(path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data {
                format: FORMAT,
                ..Data::default()
            },
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(GatewayState {
            path: path.to_path_buf(),
            data: Mutex::new(data),
        })
    }

    /// Where the file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The last config-push version accepted; `None` until it was recorded once (then the
    /// outbox's old setting is taken over, see [`crate::daemon`]).
    pub(crate) fn last_push_version(&self) -> Option<u64> {
        self.lock().last_push_version
    }

    /// Record an accepted push version (durable when this returns `Ok`).
    pub(crate) fn set_last_push_version(&self, version: u64) -> Result<(), StateError> {
        self.update(|d| d.last_push_version = Some(version))
    }

    /// The outbox directory last in use (`None` before the first start with this file).
    pub(crate) fn outbox_path(&self) -> Option<PathBuf> {
        self.lock().outbox_path.clone()
    }

    /// Record the outbox directory in use (durable when this returns `Ok`).
    pub(crate) fn set_outbox_path(&self, path: &Path) -> Result<(), StateError> {
        self.update(|d| d.outbox_path = Some(path.to_path_buf()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Change a copy, write it, then keep it; nothing is written when nothing changed.
    fn update(&self, change: impl FnOnce(&mut Data)) -> Result<(), StateError> {
        let mut data = self.lock();
        let mut next = data.clone();
        change(&mut next);
        next.format = FORMAT;
        if next == *data {
            return Ok(());
        }
        let mut text = serde_json::to_vec_pretty(&next).map_err(|e| StateError::Write {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        text.push(b'\n');
        crate::atomic_file::write(&self.path, &text).map_err(|e| StateError::Write {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        *data = next;
        Ok(())
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Data, StateError> {
    let invalid = |message: String| StateError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let format: FormatOnly = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("not JSON with a format: {e}")))?;
    if format.format != FORMAT {
        return Err(invalid(format!(
            "format {}, this build knows format {FORMAT}",
            format.format
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_sits_beside_the_config_file_under_its_stem() {
        assert_eq!(
            path_for(Path::new("/etc/lotlink/lotlink.toml")),
            PathBuf::from("/etc/lotlink/lotlink.state")
        );
        assert_eq!(
            path_for(Path::new("site-b.toml")),
            PathBuf::from("site-b.state")
        );
    }

    #[test]
    fn settings_survive_a_reload_of_the_file_and_it_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lotlink.state");
        let s = GatewayState::load(&p).unwrap();
        assert_eq!(s.last_push_version(), None);
        assert_eq!(s.outbox_path(), None);
        assert!(!p.exists(), "nothing written before a setting is set");
        s.set_last_push_version(7).unwrap();
        s.set_outbox_path(Path::new("/var/lib/lotlink/outbox"))
            .unwrap();
        let again = GatewayState::load(&p).unwrap();
        assert_eq!(again.last_push_version(), Some(7));
        assert_eq!(
            again.outbox_path(),
            Some(PathBuf::from("/var/lib/lotlink/outbox"))
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["format"], FORMAT);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_damaged_or_newer_state_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lotlink.state");
        for (text, want) in [
            ("{\"format\": 1, \"last_push_version\": ", "not JSON"),
            ("{\"format\": 2, \"whatever\": true}", "format 2"),
            ("{\"format\": 1, \"surprise\": 1}", "surprise"),
            ("", "not JSON"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = GatewayState::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gone").join("lotlink.state");
        let s = GatewayState::load(&p).unwrap();
        assert!(s.set_last_push_version(3).is_err());
        assert_eq!(s.last_push_version(), None);
    }
}
