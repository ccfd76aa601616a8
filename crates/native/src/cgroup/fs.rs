//! The filesystem calls cgroup management makes, behind a trait so tests can
//! run them against a fake tree (`fake.rs`) instead of the kernel.

use std::fmt::Debug;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Every call cgroup code makes to the kernel. Paths are absolute.
pub trait CgroupFs: Debug + Send + Sync {
    /// The whole content of a cgroup file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes `value` to an existing cgroup file in one `write(2)`.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Creates a cgroup directory (the kernel fills in its files).
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Removes a cgroup directory (its files go with it).
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Names of the subdirectories (child cgroups) of `path`.
    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>>;
    /// `kill(2)`.
    fn kill(&self, pid: i32, signal: i32) -> io::Result<()>;
    /// An `O_DIRECTORY | O_CLOEXEC` fd of a cgroup directory, for
    /// `clone3(CLONE_INTO_CGROUP)`.
    fn open_dir(&self, path: &Path) -> io::Result<OwnedFd>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl CgroupFs for RealFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // No O_CREAT: a missing control file must fail, not become a new file.
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
        if pid <= 0 {
            // kill(0 or negative) would signal process groups, never wanted here.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: kill(2) takes two integers and touches no memory of ours;
        // pid > 0 so it targets exactly one process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        // std always adds O_CLOEXEC.
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(dir.into())
    }
}
