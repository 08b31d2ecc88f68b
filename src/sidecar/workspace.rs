//! Files the memory tools may touch: only inside the workspace. Absolute
//! paths and `..` are refused, and the path is opened relative to the
//! workspace's directory (held open since start-up) without following any
//! symlink: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or,
//! where the kernel has no `openat2` (before 5.6), one `openat` per
//! component with `O_NOFOLLOW`. Nothing is checked first and opened after,
//! so a symlink swapped in mid-call (by the agent, which shares the
//! workspace) cannot lead outside.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, openat, openat2};
use rustix::io::Errno;

/// The largest file the memory tools read or write.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a workspace file cannot be read or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkspaceError {
    /// The sidecar has no workspace.
    #[error("this session has no workspace")]
    NoWorkspace,
    /// The path is absolute, has `..`, goes through a symlink, or resolves
    /// outside the workspace.
    #[error("path {0:?} is outside the workspace: use a relative path without '..' or symlinks")]
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

/// The workspace directory, opened once.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: Option<Arc<OwnedFd>>,
}

impl Workspace {
    /// The workspace at `root`; none when it cannot be opened as a directory.
    pub fn new(root: &Path) -> Workspace {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Workspace {
            root: rustix::fs::open(root, flags, Mode::empty())
                .ok()
                .map(Arc::new),
        }
    }

    /// Reads a UTF-8 file.
    pub fn read(&self, relative: &str) -> Result<String, WorkspaceError> {
        let file = self.open(relative, OFlags::RDONLY)?;
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
        let mut file = self.open(relative, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC)?;
        file.write_all(content.as_bytes())
            .map_err(|error| io_error(relative, &error))
    }

    /// Opens `relative` beneath the workspace with `flags`.
    fn open(&self, relative: &str, flags: OFlags) -> Result<File, WorkspaceError> {
        let root = self.root.as_ref().ok_or(WorkspaceError::NoWorkspace)?;
        let path = confine(relative)?;
        open_beneath(root.as_fd(), &path, flags)
            .map(File::from)
            .map_err(|error| io_error(relative, &error.into()))
    }
}

/// `relative` as a path of normal components, or why it may not be one.
fn confine(relative: &str) -> Result<PathBuf, WorkspaceError> {
    let escapes = || WorkspaceError::Escapes(relative.to_owned());
    let mut normal = PathBuf::new();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escapes());
            }
        }
    }
    if normal.as_os_str().is_empty() {
        return Err(escapes());
    }
    Ok(normal)
}

/// Mode of the files the memory tools create (less the umask).
const FILE_MODE: u32 = 0o666;

/// Opens `path` (normal components only) beneath `root`, following no
/// symlink: `openat2`, or the component-wise walk where it does not exist.
fn open_beneath(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match openat2(root, path, flags, mode_of(flags), resolve) {
        Err(Errno::NOSYS) => walk_beneath(root, path, flags),
        opened => opened,
    }
}

/// The mode a file is created with; none when `flags` create nothing
/// (`openat2` refuses a mode then).
fn mode_of(flags: OFlags) -> Mode {
    if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(FILE_MODE)
    } else {
        Mode::empty()
    }
}

/// Opens `path` one component at a time, each directory with
/// `O_DIRECTORY | O_NOFOLLOW`, then the file with `O_NOFOLLOW`: for
/// kernels without `openat2`. A symlink fails with `ELOOP`, as there.
fn walk_beneath(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let file_name = path.file_name().ok_or(Errno::INVAL)?;
    let directory = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut parent: Option<OwnedFd> = None;
    for part in path.parent().into_iter().flat_map(Path::components) {
        let at = parent.as_ref().map_or(root, |fd| fd.as_fd());
        let part = part.as_os_str();
        parent = Some(openat(at, part, directory, Mode::empty()).map_err(|error| {
            // O_DIRECTORY | O_NOFOLLOW on a symlink says ENOTDIR.
            let symlink = rustix::fs::statat(at, part, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink);
            if symlink { Errno::LOOP } else { error }
        })?);
    }
    let at = parent.as_ref().map_or(root, |fd| fd.as_fd());
    openat(at, file_name, flags | OFlags::NOFOLLOW, mode_of(flags))
}

fn io_error(relative: &str, error: &std::io::Error) -> WorkspaceError {
    match error.kind() {
        ErrorKind::NotFound => WorkspaceError::NotFound(relative.to_owned()),
        ErrorKind::ReadOnlyFilesystem => WorkspaceError::ReadOnly,
        // A symlink on the way (ELOOP) or a path resolving outside (EXDEV).
        _ if matches!(error.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)) => {
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

    /// No symlink is followed, not even one that stays inside: what it
    /// points to can change between any check and the open.
    #[test]
    fn refuses_every_symlink_and_serves_nested_files() {
        let (dir, workspace) = workspace();
        std::fs::create_dir_all(dir.path().join("notes/deep/er")).unwrap();
        workspace.write("notes/deep/er/c.md", "nested").unwrap();
        assert_eq!(workspace.read("notes/deep/er/c.md").unwrap(), "nested");
        std::os::unix::fs::symlink(dir.path().join("notes"), dir.path().join("inner")).unwrap();
        std::os::unix::fs::symlink("notes/a.md", dir.path().join("alias.md")).unwrap();
        for path in ["inner/a.md", "alias.md", "inner/deep/er/c.md"] {
            assert!(
                matches!(workspace.read(path), Err(WorkspaceError::Escapes(_))),
                "{path}: {:?}",
                workspace.read(path)
            );
            assert!(
                matches!(workspace.write(path, "x"), Err(WorkspaceError::Escapes(_))),
                "{path}"
            );
        }
        assert_eq!(workspace.read("notes/a.md").unwrap(), "hello");
    }

    /// The race of a canonicalize-then-open check: a directory of the path
    /// swapped for a symlink to outside between the check and the open.
    /// A thread swaps them (atomically, `RENAME_EXCHANGE`) while reads and
    /// writes go through the directory; none may reach outside.
    #[test]
    fn a_directory_swapped_for_a_symlink_mid_call_never_leads_outside() {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use std::sync::atomic::{AtomicBool, Ordering};
        let (dir, workspace) = workspace();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), "outside").unwrap();
        std::fs::create_dir(dir.path().join("swap")).unwrap();
        std::fs::write(dir.path().join("swap/f"), "inside").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("swap-link")).unwrap();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let swapper = {
            let (done, real, link) = (
                done.clone(),
                dir.path().join("swap"),
                dir.path().join("swap-link"),
            );
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    renameat_with(CWD, &real, CWD, &link, RenameFlags::EXCHANGE).unwrap();
                }
            })
        };
        let mut inside = 0;
        for _ in 0..20_000 {
            match workspace.read("swap/f") {
                Ok(content) => {
                    assert_eq!(content, "inside", "a read reached outside");
                    inside += 1;
                }
                Err(error) => assert!(
                    matches!(
                        error,
                        WorkspaceError::Escapes(_) | WorkspaceError::NotFound(_)
                    ),
                    "{error:?}"
                ),
            }
            let _ = workspace.write("swap/f", "inside");
        }
        done.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.path().join("f")).unwrap(),
            "outside",
            "a write reached outside"
        );
        assert!(inside > 0, "some reads went through the real directory");
    }

    /// The fallback for kernels without `openat2` refuses the same paths.
    #[test]
    fn the_walk_without_openat2_follows_no_symlink_either() {
        let (dir, _workspace) = workspace();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("outdir")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("notes"), dir.path().join("inner")).unwrap();
        std::os::unix::fs::symlink("notes/a.md", dir.path().join("alias.md")).unwrap();
        let root =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let walk = |path: &str| walk_beneath(root.as_fd(), Path::new(path), OFlags::RDONLY);
        for path in ["outdir/secret", "inner/a.md", "alias.md"] {
            assert_eq!(walk(path).err(), Some(Errno::LOOP), "{path}");
        }
        let mut content = String::new();
        File::from(walk("notes/a.md").unwrap())
            .read_to_string(&mut content)
            .unwrap();
        assert_eq!(content, "hello");
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
