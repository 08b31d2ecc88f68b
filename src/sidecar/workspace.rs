//! Files the memory tools may touch: only inside the workspace. Absolute
//! paths and `..` are refused, the parent directory is resolved and must be
//! inside the workspace, and the file itself is opened without following
//! symlinks.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// The largest file the memory tools read or write.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a workspace file cannot be read or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkspaceError {
    /// The sidecar has no workspace.
    #[error("this session has no workspace")]
    NoWorkspace,
    /// The path is absolute, has `..`, or resolves outside the workspace.
    #[error("path {0:?} is outside the workspace: use a relative path without '..'")]
    Escapes(String),
    /// No such file.
    #[error("no file {0:?} in the workspace")]
    NotFound(String),
    /// The workspace is mounted read-only.
    #[error("the workspace is read-only")]
    ReadOnly,
    /// Over [`MAX_FILE_BYTES`].
    #[error("file {0:?} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge(String),
    /// Not UTF-8 text.
    #[error("file {0:?} is not UTF-8 text")]
    NotText(String),
    /// Another I/O error.
    #[error("cannot access {path:?}: {message}")]
    Io {
        /// The path.
        path: String,
        /// What happened.
        message: String,
    },
}

/// The workspace directory.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: Option<PathBuf>,
}

impl Workspace {
    /// The workspace at `root`; none when it does not exist.
    pub fn new(root: &Path) -> Workspace {
        Workspace {
            root: root.canonicalize().ok(),
        }
    }

    /// Reads a UTF-8 file.
    pub fn read(&self, relative: &str) -> Result<String, WorkspaceError> {
        let path = self.confine(relative)?;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|error| io_error(relative, &error))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| io_error(relative, &error))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(WorkspaceError::TooLarge(relative.to_owned()));
        }
        String::from_utf8(bytes).map_err(|_| WorkspaceError::NotText(relative.to_owned()))
    }

    /// Writes (creates or replaces) a UTF-8 file.
    pub fn write(&self, relative: &str, content: &str) -> Result<(), WorkspaceError> {
        if content.len() as u64 > MAX_FILE_BYTES {
            return Err(WorkspaceError::TooLarge(relative.to_owned()));
        }
        let path = self.confine(relative)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|error| io_error(relative, &error))?;
        file.write_all(content.as_bytes())
            .map_err(|error| io_error(relative, &error))
    }

    /// The absolute path of `relative`, checked to stay inside the workspace.
    fn confine(&self, relative: &str) -> Result<PathBuf, WorkspaceError> {
        let root = self.root.as_ref().ok_or(WorkspaceError::NoWorkspace)?;
        let escapes = || WorkspaceError::Escapes(relative.to_owned());
        let requested = Path::new(relative);
        let mut normal = PathBuf::new();
        for component in requested.components() {
            match component {
                Component::Normal(part) => normal.push(part),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(escapes());
                }
            }
        }
        let file_name = normal.file_name().ok_or_else(escapes)?.to_owned();
        let parent = root.join(normal.parent().unwrap_or(Path::new("")));
        let parent = parent
            .canonicalize()
            .map_err(|error| io_error(relative, &error))?;
        if !parent.starts_with(root) {
            return Err(escapes());
        }
        Ok(parent.join(file_name))
    }
}

fn io_error(relative: &str, error: &std::io::Error) -> WorkspaceError {
    match error.kind() {
        ErrorKind::NotFound => WorkspaceError::NotFound(relative.to_owned()),
        ErrorKind::ReadOnlyFilesystem => WorkspaceError::ReadOnly,
        // O_NOFOLLOW on a symlink fails with ELOOP.
        _ if error.raw_os_error() == Some(libc::ELOOP) => {
            WorkspaceError::Escapes(relative.to_owned())
        }
        _ => WorkspaceError::Io {
            path: relative.to_owned(),
            message: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("notes")).unwrap();
        std::fs::write(dir.path().join("notes/a.md"), "hello").unwrap();
        let workspace = Workspace::new(dir.path());
        (dir, workspace)
    }

    #[test]
    fn reads_and_writes_inside() {
        let (_dir, workspace) = workspace();
        assert_eq!(workspace.read("notes/a.md").unwrap(), "hello");
        assert_eq!(workspace.read("./notes/a.md").unwrap(), "hello");
        workspace.write("notes/b.md", "world").unwrap();
        assert_eq!(workspace.read("notes/b.md").unwrap(), "world");
        assert_eq!(
            workspace.read("notes/none.md"),
            Err(WorkspaceError::NotFound("notes/none.md".into()))
        );
    }

    #[test]
    fn refuses_to_leave_the_workspace() {
        let (dir, workspace) = workspace();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("outdir")).unwrap();
        for path in [
            "../secret",
            "notes/../../secret",
            "/etc/passwd",
            "link",
            "outdir/secret",
            "",
        ] {
            assert!(
                matches!(workspace.read(path), Err(WorkspaceError::Escapes(_))),
                "{path}: {:?}",
                workspace.read(path)
            );
        }
        assert!(matches!(
            workspace.write("link", "x"),
            Err(WorkspaceError::Escapes(_))
        ));
        assert!(matches!(
            workspace.write("outdir/new", "x"),
            Err(WorkspaceError::Escapes(_))
        ));
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "s3cret"
        );
        assert!(!outside.path().join("new").exists());
    }

    #[test]
    fn limits_size_and_needs_a_workspace() {
        let (_dir, workspace) = workspace();
        let big = "x".repeat(MAX_FILE_BYTES as usize + 1);
        assert!(matches!(
            workspace.write("big", &big),
            Err(WorkspaceError::TooLarge(_))
        ));
        let none = Workspace::new(Path::new("/nonexistent/workspace"));
        assert_eq!(none.read("a"), Err(WorkspaceError::NoWorkspace));
    }
}
