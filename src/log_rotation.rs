//! etcd's `--enable-log-rotation`: a log file that is set aside once it reaches its size, as the
//! lumberjack package rotates etcd's. The file `strata.log` grown past `maxsize` MB is renamed
//! `strata-2026-12-06T21-12-33.307.log` (the moment of the rotation, UTC unless `localtime`; gzipped
//! to `….log.gz` if `compress`), a new `strata.log` is begun, and backups beyond `maxbackups` or
//! older than `maxage` days are removed (0: keep them all).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// `--log-rotation-config-json`, with lumberjack's fields and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Megabytes a file reaches before it is rotated (0: 100).
    pub max_size: u64,
    /// Days a backup is kept (0: no limit).
    pub max_age: u64,
    /// Backups kept (0: no limit).
    pub max_backups: usize,
    /// Backups named in local time rather than UTC.
    pub local_time: bool,
    /// Backups gzipped.
    pub compress: bool,
}

impl Rotation {
    /// The configuration `json` describes, as etcd reads it (Go's `encoding/json`: keys in any
    /// case, unknown keys ignored, `null` the defaults), or etcd's reason to refuse it.
    pub fn parse(json: &str) -> Result<Rotation, String> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| format!("improperly formatted log rotation config: {e}"))?;
        let mut rotation = Rotation {
            max_size: 100,
            max_age: 0,
            max_backups: 0,
            local_time: false,
            compress: false,
        };
        let fields = match value {
            serde_json::Value::Null => return Ok(rotation),
            serde_json::Value::Object(fields) => fields,
            other => {
                return Err(format!(
                    "invalid log rotation config: json: cannot unmarshal {} into Go value of type \
                     embed.logRotationConfig",
                    go_kind(&other)
                ))
            }
        };
        for (key, value) in fields {
            let key = key.to_lowercase();
            let mistyped = |go_type: &str| {
                format!(
                    "invalid log rotation config: json: cannot unmarshal {} into Go struct field \
                     logRotationConfig.Logger.{key} of type {go_type}",
                    go_kind(&value)
                )
            };
            let number = || value.as_u64().ok_or_else(|| mistyped("int"));
            let flag = || value.as_bool().ok_or_else(|| mistyped("bool"));
            match key.as_str() {
                "maxsize" => rotation.max_size = number()?,
                "maxage" => rotation.max_age = number()?,
                "maxbackups" => rotation.max_backups = number()? as usize,
                "localtime" => rotation.local_time = flag()?,
                "compress" => rotation.compress = flag()?,
                "filename" if !value.is_string() => return Err(mistyped("string")),
                _ => {}
            }
        }
        Ok(rotation)
    }

    fn max_bytes(&self) -> u64 {
        let megabytes = if self.max_size == 0 {
            100
        } else {
            self.max_size
        };
        megabytes * 1024 * 1024
    }
}

/// Go's name for the kind of a JSON value, as its unmarshal errors give it.
fn go_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// A log file that rotates as [`Rotation`] says; each write (one log line) lands whole in one file.
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl RotatingFile {
    /// Opens `path` to append to it (rotating it first if it is full already).
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<RotatingFile> {
        Self::open_with_limit(path, rotation, rotation.max_bytes())
    }

    fn open_with_limit(
        path: &Path,
        rotation: Rotation,
        max_bytes: u64,
    ) -> io::Result<RotatingFile> {
        let file = append(path)?;
        let size = file.metadata()?.len();
        let mut rotating = RotatingFile {
            path: path.to_owned(),
            rotation,
            file,
            size,
            max_bytes,
        };
        if size >= max_bytes {
            rotating.rotate()?;
        }
        Ok(rotating)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let backup = backup_name(&self.path, SystemTime::now(), self.rotation.local_time);
        std::fs::rename(&self.path, &backup)?;
        self.file = append(&self.path)?;
        self.size = 0;
        let (path, rotation) = (self.path.clone(), self.rotation);
        // Compressing and removing old backups off the logging path, as lumberjack does.
        std::thread::spawn(move || {
            if let Err(e) = mill(&path, &backup, rotation) {
                eprintln!("log rotation: {e}");
            }
        });
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let length = line.len() as u64;
        if length > self.max_bytes {
            return Err(io::Error::other(format!(
                "write length {length} exceeds maximum file size {}",
                self.max_bytes
            )));
        }
        if self.size + length > self.max_bytes {
            self.rotate()?;
        }
        let written = self.file.write(line)?;
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `dir/name-2006-01-02T15-04-05.000.ext` for `dir/name.ext`, at `at`.
fn backup_name(path: &Path, at: SystemTime, local_time: bool) -> PathBuf {
    let at = time::OffsetDateTime::from(at);
    let at = if local_time {
        time::UtcOffset::current_local_offset().map_or(at, |offset| at.to_offset(offset))
    } else {
        at
    };
    let stamp = format!(
        "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}.{:03}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    );
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{stamp}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{stamp}"),
    };
    path.with_file_name(name)
}

/// Compresses the new backup if asked, then removes the backups of `path` beyond the count and
/// the age kept.
fn mill(path: &Path, backup: &Path, rotation: Rotation) -> io::Result<()> {
    if rotation.compress {
        let mut gzipped = backup.as_os_str().to_owned();
        gzipped.push(".gz");
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(&gzipped)?, flate2::Compression::default());
        io::copy(&mut File::open(backup)?, &mut encoder)?;
        encoder.finish()?.sync_all()?;
        std::fs::remove_file(backup)?;
    }
    let mut backups = backups_of(path)?;
    // Newest first: the names sort by their time.
    backups.sort_by(|a, b| b.0.cmp(&a.0));
    let now = SystemTime::now();
    for (i, (_, backup, modified)) in backups.iter().enumerate() {
        let too_many = rotation.max_backups > 0 && i >= rotation.max_backups;
        let too_old = rotation.max_age > 0
            && now.duration_since(*modified).unwrap_or_default()
                > Duration::from_secs(rotation.max_age * 24 * 3600);
        if too_many || too_old {
            std::fs::remove_file(backup)?;
        }
    }
    Ok(())
}

/// The backups of `path` beside it, each with its name's time stamp and its modification time.
fn backups_of(path: &Path) -> io::Result<Vec<(String, PathBuf, SystemTime)>> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let prefix = format!("{stem}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stamp = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".gz").or(Some(rest)))
            .and_then(|rest| rest.strip_suffix(ext.as_str()));
        if let Some(stamp) = stamp.filter(|s| s.len() == 23 && s.as_bytes()[10] == b'T') {
            found.push((
                stamp.to_owned(),
                entry.path(),
                entry.metadata()?.modified()?,
            ));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_read_as_etcd_reads_it() {
        let defaults = Rotation::parse("{}").unwrap();
        assert_eq!(defaults.max_size, 100);
        let r = Rotation::parse(r#"{"MaxSize": 1, "maxbackups": 2, "compress": true, "x": 0}"#)
            .unwrap();
        assert_eq!((r.max_size, r.max_backups, r.compress), (1, 2, true));
        assert_eq!(Rotation::parse("null").unwrap(), defaults);
        assert_eq!(
            Rotation::parse(r#"{"maxsize": "1"}"#).unwrap_err(),
            "invalid log rotation config: json: cannot unmarshal string into Go struct field \
             logRotationConfig.Logger.maxsize of type int"
        );
        assert_eq!(
            Rotation::parse("[]").unwrap_err(),
            "invalid log rotation config: json: cannot unmarshal array into Go value of type \
             embed.logRotationConfig"
        );
        assert!(Rotation::parse("{")
            .unwrap_err()
            .starts_with("improperly formatted log rotation config: "));
    }

    #[test]
    fn a_full_file_is_set_aside_and_old_backups_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.log");
        let rotation = Rotation {
            max_backups: 2,
            ..Rotation::parse("{}").unwrap()
        };
        let mut log = RotatingFile::open_with_limit(&path, rotation, 100).unwrap();
        let line = [b'x'; 40];
        for _ in 0..3 {
            log.write_all(&line).unwrap();
        }
        // The third line did not fit: the first two are in a backup, whole.
        let backups = backups_of(&path).unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(std::fs::read(&backups[0].1).unwrap().len(), 80);
        assert_eq!(std::fs::read(&path).unwrap().len(), 40);
        let name = backups[0]
            .1
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with("strata-20") && name.ends_with(".log"),
            "{name}"
        );
        assert!(
            log.write(&[b'x'; 101]).is_err(),
            "a line longer than a file"
        );
    }

    #[test]
    fn backups_are_gzipped_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.log");
        std::fs::write(&path, [b'y'; 50]).unwrap();
        let backup = backup_name(&path, SystemTime::now(), false);
        std::fs::rename(&path, &backup).unwrap();
        let rotation = Rotation {
            compress: true,
            ..Rotation::parse("{}").unwrap()
        };
        mill(&path, &backup, rotation).unwrap();
        let backups = backups_of(&path).unwrap();
        assert_eq!(backups.len(), 1);
        let gz = &backups[0].1;
        assert!(gz.to_string_lossy().ends_with(".log.gz"), "{gz:?}");
        let mut unzipped = Vec::new();
        io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(File::open(gz).unwrap()),
            &mut unzipped,
        )
        .unwrap();
        assert_eq!(unzipped, [b'y'; 50]);
    }
}
