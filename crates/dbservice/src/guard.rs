//! Stub: replaced by the guard helper's module (EMBEDDED, install, needed).

use std::path::{Path, PathBuf};

use crate::pg::PgBin;

pub(crate) struct Embedded {
    pub major: u32,
    pub object: &'static [u8],
}

pub(crate) const EMBEDDED: Option<Embedded> = None;

pub(crate) fn install(_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    Ok(None)
}

pub(crate) fn needed(major: u32) -> bool {
    major <= 15
}

/// The guard for this host's PostgreSQL.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    /// The library to preload (`None`: none is needed or none fits).
    pub path: Option<PathBuf>,
    /// Whether the master may have CREATEROLE.
    pub createrole: bool,
}

impl Status {
    pub(crate) fn prepare(bin: &PgBin, dir: &Path) -> Self {
        let major = match bin.major() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot tell PostgreSQL's version: master users get no CREATEROLE");
                return Self {
                    path: None,
                    createrole: false,
                };
            }
        };
        let _ = EMBEDDED.as_ref().map(|e| (e.major, e.object.len()));
        if !needed(major) {
            return Self {
                path: None,
                createrole: true,
            };
        }
        match install(dir) {
            Ok(Some(p)) => Self {
                path: Some(p),
                createrole: true,
            },
            _ => Self {
                path: None,
                createrole: false,
            },
        }
    }
}
