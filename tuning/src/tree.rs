//! Every file the tuner reads or writes goes through a root directory, `/` on a real
//! machine and a fake `/proc` and `/sys` tree in tests.

use std::io;
use std::path::{Path, PathBuf};

/// A root directory under which absolute paths are resolved.
#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    /// A tree rooted at `root` (`/` for the real machine).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Whether this is the machine's own root.
    pub fn is_real(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` (absolute, as on a real machine) under the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The path as a real machine spells it, for messages: the root taken off.
    pub fn display(&self, p: &Path) -> String {
        match p.strip_prefix(&self.root) {
            Ok(rest) => format!("/{}", rest.display()),
            Err(_) => p.display().to_string(),
        }
    }

    /// Reads a file, trimmed of its final newline.
    pub fn read(&self, path: &str) -> io::Result<String> {
        read(&self.path(path))
    }

    /// The paths matching a glob pattern (`*`, `?`, `[2-9]`), sorted.
    pub fn glob(&self, pattern: &str) -> Vec<PathBuf> {
        let root = glob::Pattern::escape(&self.root.to_string_lossy());
        let full = format!(
            "{}/{}",
            root.trim_end_matches('/'),
            pattern.trim_start_matches('/')
        );
        let mut v: Vec<PathBuf> = glob::glob(&full)
            .map(|paths| paths.flatten().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Reads a file, trimmed of surrounding whitespace.
pub fn read(p: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(p)?.trim().to_string())
}

/// Writes a value to an existing kernel file (as `echo value > file` does); a kernel file
/// cannot be created, so neither is a missing one here.
pub fn write_existing(p: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p)?;
    f.write_all(format!("{value}\n").as_bytes())
}
