//! Free space on the filesystems the relay writes to: checked at start (a relay started
//! on a full disk refuses with a clear message) and exported as a metric for alerts.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot read free space of {path}: {source}")]
    Stat { path: String, source: std::io::Error },
    #[error(
        "{path} has {free} bytes free, below the {needed} bytes the relay needs to start \
         (RELAY_MIN_FREE_DISK_BYTES): free some space and start again"
    )]
    Full { path: String, free: u64, needed: u64 },
}

/// Bytes available to this (unprivileged) process on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64, DiskError> {
    let stat_error = |source| DiskError::Stat { path: path.display().to_string(), source };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| stat_error(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory
    // of the right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(stat_error(std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u64 here, u32 on some 32-bit targets).
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(blocks.saturating_mul(block_size))
}

/// Creates `dir` if needed and checks that it has at least `needed` bytes free.
pub fn ensure_free_space(dir: &Path, needed: u64) -> Result<(), DiskError> {
    let _ = std::fs::create_dir_all(dir);
    let free = free_bytes(dir)?;
    if free < needed {
        return Err(DiskError::Full { path: dir.display().to_string(), free, needed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_free_space_and_refuses_below_the_minimum() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).expect("statvfs");
        assert!(free > 0);
        assert!(ensure_free_space(&dir, 1).is_ok());
        let refused = ensure_free_space(&dir, u64::MAX).expect_err("nobody has that much");
        assert!(refused.to_string().contains("RELAY_MIN_FREE_DISK_BYTES"), "{refused}");
        assert!(free_bytes(Path::new("/no/such/dir/anywhere")).is_err());
    }
}
