//! The log file writer: appends whole lines and rotates by size, pruning old backups.

use chrono::{Duration, Local, NaiveDateTime};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing_subscriber::fmt::MakeWriter;

/// The timestamp inside rotated names; it sorts lexically in time order.
const STAMP: &str = "%Y-%m-%dT%H-%M-%S%.3f";

/// Rotation limits. Sizes are in bytes here so tests can rotate after a few lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RotateOpts {
    /// 0 = never rotate.
    pub max_size_bytes: u64,
    /// Rotated files to keep; 0 = keep all.
    pub max_backups: u64,
    /// Age limit of rotated files in days; 0 = no limit.
    pub max_days: u64,
}

pub(crate) struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    opts: RotateOpts,
    /// Stamps must increase even when pruning frees an earlier name in the same millisecond.
    last_stamp: Option<NaiveDateTime>,
}

/// Opens a log file for appending, readable by its owner only (0600): logs name users,
/// client addresses and statement digests. A file made earlier with wider modes is narrowed.
fn open_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl RotatingFile {
    pub(crate) fn open(path: &Path, opts: RotateOpts) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = open_private(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            opts,
            last_stamp: None,
        })
    }

    /// Write one formatted event. The caller holds the lock for the whole line,
    /// and rotation happens only between lines, so no line is ever split.
    fn write_line(&mut self, buf: &[u8]) -> io::Result<()> {
        let limit = self.opts.max_size_bytes;
        if limit > 0 && self.size > 0 && self.size + buf.len() as u64 > limit {
            // A failed rotation must not lose the line: keep writing to the old file.
            let _ = self.rotate();
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let mut now = Local::now().naive_local();
        if let Some(last) = self.last_stamp.filter(|l| *l >= now) {
            now = last + Duration::milliseconds(1);
        }
        let mut target = self.backup_name(now);
        // Two rotations within one millisecond would collide; step the stamp forward.
        while target.exists() {
            now += Duration::milliseconds(1);
            target = self.backup_name(now);
        }
        fs::rename(&self.path, &target)?;
        self.last_stamp = Some(now);
        self.file = open_private(&self.path)?;
        self.size = 0;
        self.prune(Local::now().naive_local());
        Ok(())
    }

    fn stem_ext(&self) -> (String, String) {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        (stem, ext)
    }

    fn backup_name(&self, at: NaiveDateTime) -> PathBuf {
        let (stem, ext) = self.stem_ext();
        self.path
            .with_file_name(format!("{stem}-{}{ext}", at.format(STAMP)))
    }

    /// Rotated siblings of the log file with the time in their names, oldest first.
    fn backups(&self) -> Vec<(NaiveDateTime, PathBuf)> {
        let (stem, ext) = self.stem_ext();
        let dir = match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let prefix = format!("{stem}-");
        let mut out: Vec<_> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stamp = name.strip_prefix(&prefix)?.strip_suffix(ext.as_str())?;
                let at = NaiveDateTime::parse_from_str(stamp, STAMP).ok()?;
                Some((at, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    fn prune(&self, now: NaiveDateTime) {
        let mut backups = self.backups();
        if self.opts.max_days > 0 {
            let days = i64::try_from(self.opts.max_days).unwrap_or(i64::MAX / 86_400_000);
            let cutoff = now - Duration::days(days.min(365_000));
            backups.retain(|(at, p)| {
                let old = *at < cutoff;
                if old {
                    let _ = fs::remove_file(p);
                }
                !old
            });
        }
        let keep = self.opts.max_backups as usize;
        if keep > 0 && backups.len() > keep {
            for (_, p) in &backups[..backups.len() - keep] {
                let _ = fs::remove_file(p);
            }
        }
    }
}

/// Shared handle handed to tracing's fmt layer; each event locks it once.
#[derive(Clone)]
pub(crate) struct SharedFile(pub Arc<Mutex<RotatingFile>>);

pub(crate) struct LockedFile<'a>(MutexGuard<'a, RotatingFile>);

impl Write for LockedFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf)?;
        Ok(buf.len())
    }
    // fmt hands over each formatted event in one call; keep it as one unit.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_line(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.file.flush()
    }
}

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = LockedFile<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        // A panic while logging must not silence logging for the rest of the process.
        LockedFile(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_size_bytes: u64, max_backups: u64, max_days: u64) -> RotateOpts {
        RotateOpts {
            max_size_bytes,
            max_backups,
            max_days,
        }
    }

    fn rotated(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "tiproxy.log")
            .collect();
        v.sort();
        v
    }

    #[test]
    fn creates_dirs_and_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/tiproxy.log");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "old\n").unwrap();
        let shared = SharedFile(Arc::new(Mutex::new(
            RotatingFile::open(&path, opts(0, 0, 0)).unwrap(),
        )));
        shared.make_writer().write_all(b"new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\nnew\n");
        let nested = tmp.path().join("x/y/z.log");
        RotatingFile::open(&nested, opts(0, 0, 0)).unwrap();
        assert!(nested.exists());
        use std::os::unix::fs::PermissionsExt;
        for p in [&path, &nested] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
        }
    }

    #[test]
    fn rotates_by_size_keeps_whole_lines_and_prunes_count() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tiproxy.log");
        let shared = SharedFile(Arc::new(Mutex::new(
            RotatingFile::open(&path, opts(25, 2, 0)).unwrap(),
        )));
        for i in 0..10 {
            shared
                .make_writer()
                .write_all(format!("line number {i:02}\n").as_bytes())
                .unwrap();
        }
        // 15-byte lines and a 25-byte limit: one line per file.
        assert_eq!(fs::read_to_string(&path).unwrap(), "line number 09\n");
        let names = rotated(tmp.path());
        assert_eq!(names.len(), 2, "{names:?}");
        for n in &names {
            assert!(n.starts_with("tiproxy-") && n.ends_with(".log"), "{n}");
            let body = fs::read_to_string(tmp.path().join(n)).unwrap();
            assert!(
                body.ends_with('\n') && body.lines().count() == 1,
                "{body:?}"
            );
        }
        // The newest backups survive.
        let newest = fs::read_to_string(tmp.path().join(&names[1])).unwrap();
        assert_eq!(newest, "line number 08\n");
    }

    #[test]
    fn prunes_by_age_and_ignores_unrelated_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tiproxy.log");
        let old = Local::now().naive_local() - Duration::days(10);
        let old_name = format!("tiproxy-{}.log", old.format(STAMP));
        fs::write(tmp.path().join(&old_name), "ancient\n").unwrap();
        fs::write(tmp.path().join("tiproxy-notes.log"), "keep\n").unwrap();
        let shared = SharedFile(Arc::new(Mutex::new(
            RotatingFile::open(&path, opts(10, 0, 3)).unwrap(),
        )));
        shared.make_writer().write_all(b"first line\n").unwrap();
        shared.make_writer().write_all(b"second line\n").unwrap();
        let names = rotated(tmp.path());
        assert!(!names.contains(&old_name), "{names:?}");
        assert!(names.contains(&"tiproxy-notes.log".to_string()));
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn no_extension_and_burst_rotation_do_not_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("proxylog");
        let shared = SharedFile(Arc::new(Mutex::new(
            RotatingFile::open(&path, opts(1, 0, 0)).unwrap(),
        )));
        for _ in 0..5 {
            shared.make_writer().write_all(b"x\n").unwrap();
        }
        let backups = shared.0.lock().unwrap().backups();
        assert_eq!(backups.len(), 4);
    }
}
