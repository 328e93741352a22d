//! Sandbox records and re-adoption after an agent restart.
//!
//! This module owns:
//!
//! - [`SandboxRecord`]: what the agent remembers of each sandbox it made (allocation, cgroup
//!   directories, MIG instance, uid, shim and workload pids, start time);
//! - [`RecordStore`]: those records on disk, one `<state_dir>/sandboxes/alloc-<id>.json` file
//!   per sandbox (mode 0600 in a 0700 directory), written atomically (temporary file, `fsync`,
//!   `rename`, `fsync` of the directory) and read back with a size limit
//!   ([`MAX_RECORD_BYTES`]); a corrupt file is reported with its path and skipped, never fatal
//!   for the others;
//! - [`existing_sandboxes`]: the `alloc-<id>` sandbox directories that exist under the gpuaas
//!   root of every hierarchy of a [`CgroupLayout`] (the roots are parameters);
//! - [`reconcile`]: the pure decision of what to do with each of them after a restart
//!   ([`Reconciliation`]: adopt, report as exited, remove an orphan cgroup, drop a stale
//!   record). It reads no file and no clock; the agent gathers the facts and executes the
//!   result.
//!
//! # Limitations
//! A pid recorded before the restart may have been reused by an unrelated process; the
//! liveness predicate given to [`reconcile`] receives the allocation with the pid so the
//! caller can check that the process is still in that sandbox's cgroup. MIG instances without
//! a record are not reconciled here.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use gpuaas_proto::{AllocationId, IdParseError};
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupLayout;
use crate::cgroup::sandbox::V1_CONTROLLERS;

#[cfg(test)]
mod tests;

/// The largest record file read; a larger one is corrupt.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// The directory under the state directory that holds the records.
pub const RECORDS_DIR: &str = "sandboxes";
/// The extension of a record file.
const EXTENSION: &str = ".json";
/// The suffix of a record being written.
const TEMP_SUFFIX: &str = ".tmp";

/// The MIG instance a sandbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordedMig {
    /// The parent GPU's NVML index.
    pub gpu_index: u32,
    /// The GPU-instance id on that GPU.
    pub gi_id: u32,
}

/// What the agent remembers of one sandbox, so a restarted agent can re-adopt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The allocation the sandbox belongs to; also the record's file name.
    #[serde(with = "alloc_string")]
    pub alloc: AllocationId,
    /// The sandbox's cgroup directories.
    pub cgroup_dirs: Vec<PathBuf>,
    /// The MIG instance the sandbox holds, if any.
    pub mig: Option<RecordedMig>,
    /// The uid the workload runs as (see [`crate::uids`]).
    pub uid: u32,
    /// The supervisor's pid, once started.
    pub shim_pid: Option<u32>,
    /// The workload's pid, once started.
    pub workload_pid: Option<u32>,
    /// When the sandbox was made, in milliseconds since the Unix epoch.
    pub started_at_ms: i64,
}

/// The allocation id in its `alloc-<hex>` form, so a record reads like its file name.
mod alloc_string {
    use gpuaas_proto::AllocationId;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(id: &AllocationId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AllocationId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// The record store could not be written or its directory read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file or directory operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The operation (`create`, `write`, `fsync`, `rename`, `remove`, `list`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
    /// A record could not be encoded (a cgroup path that is not UTF-8).
    #[error("cannot encode the record of {alloc}: {source}")]
    Encode {
        /// The allocation.
        alloc: AllocationId,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// An encoded record is larger than a reader accepts.
    #[error("the record of {alloc} is {actual} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The allocation.
        alloc: AllocationId,
        /// [`MAX_RECORD_BYTES`].
        limit: u64,
        /// The encoded size.
        actual: u64,
    },
}

/// Why a record file was skipped.
#[derive(Debug, thiserror::Error)]
pub enum CorruptRecordError {
    /// The file name is `alloc-….json` but not a valid allocation id.
    #[error("bad file name: {0}")]
    Name(#[source] IdParseError),
    /// It is not a regular file (a symbolic link, a directory).
    #[error("not a regular file")]
    NotAFile,
    /// It could not be opened or read.
    #[error("cannot read: {0}")]
    Read(#[source] io::Error),
    /// It is larger than [`MAX_RECORD_BYTES`].
    #[error("{actual} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The size found (at least `limit + 1`).
        actual: u64,
    },
    /// It is not a valid record.
    #[error("cannot decode: {0}")]
    Decode(#[source] serde_json::Error),
    /// The record inside names another allocation than its file name.
    #[error("file is named for {expected} but holds the record of {found}")]
    WrongAlloc {
        /// The allocation of the file name.
        expected: AllocationId,
        /// The allocation in the record.
        found: AllocationId,
    },
}

/// A record file that was skipped, with its path.
#[derive(Debug, thiserror::Error)]
#[error("corrupt sandbox record {}: {problem}", path.display())]
pub struct CorruptRecord {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    #[source]
    pub problem: CorruptRecordError,
}

/// What [`RecordStore::load_all`] found.
#[derive(Debug, Default)]
pub struct LoadedRecords {
    /// The valid records, sorted by allocation.
    pub records: Vec<SandboxRecord>,
    /// The files skipped, sorted by path.
    pub corrupt: Vec<CorruptRecord>,
}

/// The sandbox records under a state directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    /// A store in `<state_dir>/sandboxes`; nothing is touched until the first write.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(RECORDS_DIR),
        }
    }

    /// The directory that holds the records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `alloc`'s record.
    pub fn path(&self, alloc: AllocationId) -> PathBuf {
        self.dir.join(format!("{alloc}{EXTENSION}"))
    }

    /// Writes `record` atomically, replacing the allocation's previous record: a crash leaves
    /// either the old or the new record, never a torn one.
    pub fn save(&self, record: &SandboxRecord) -> Result<(), RecordError> {
        let alloc = record.alloc;
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|source| RecordError::Encode { alloc, source })?;
        let actual = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if actual > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge {
                alloc,
                limit: MAX_RECORD_BYTES,
                actual,
            });
        }
        self.ensure_dir()?;
        let path = self.path(alloc);
        let temp = self.dir.join(format!(".{alloc}{EXTENSION}{TEMP_SUFFIX}"));
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| RecordError::Io { op, path, source }
        };
        // A temporary file left by a crash during an earlier save.
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &temp)(e)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(io_err("create", &temp))?;
        let written = file
            .write_all(&bytes)
            .map_err(io_err("write", &temp))
            .and_then(|()| file.sync_all().map_err(io_err("fsync", &temp)))
            .and_then(|()| fs::rename(&temp, &path).map_err(io_err("rename", &temp)));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        sync_dir(&self.dir)
    }

    /// Removes `alloc`'s record; a record that does not exist is not an error.
    pub fn remove(&self, alloc: AllocationId) -> Result<(), RecordError> {
        let path = self.path(alloc);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Reads every record. A file that cannot be read or decoded is reported in
    /// [`LoadedRecords::corrupt`] and skipped; files not named `alloc-<id>.json` (temporary
    /// files of an interrupted save) are ignored. A missing directory holds no records; a
    /// directory that cannot be listed is an error.
    pub fn load_all(&self) -> Result<LoadedRecords, RecordError> {
        let list_err = |source| RecordError::Io {
            op: "list",
            path: self.dir.clone(),
            source,
        };
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadedRecords::default()),
            Err(e) => return Err(list_err(e)),
        };
        let mut loaded = LoadedRecords::default();
        for entry in entries {
            let entry = entry.map_err(list_err)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(EXTENSION) else {
                continue;
            };
            if !stem.starts_with(AllocationId::PREFIX) {
                continue;
            }
            let path = entry.path();
            match read_record(&path, stem) {
                Ok(record) => loaded.records.push(record),
                Err(problem) => {
                    tracing::warn!(path = %path.display(), %problem, "skipping corrupt sandbox record");
                    loaded.corrupt.push(CorruptRecord { path, problem });
                }
            }
        }
        loaded.records.sort_by_key(|r| r.alloc);
        loaded.corrupt.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(loaded)
    }

    fn ensure_dir(&self) -> Result<(), RecordError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        match DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            Ok(()) => {}
            Err(source) => {
                return Err(RecordError::Io {
                    op: "create",
                    path: self.dir.clone(),
                    source,
                });
            }
        }
        match self.dir.parent() {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        }
    }
}

/// Reads and decodes one record file, named `<stem>.json`.
fn read_record(path: &Path, stem: &str) -> Result<SandboxRecord, CorruptRecordError> {
    let expected: AllocationId = stem.parse().map_err(CorruptRecordError::Name)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => CorruptRecordError::NotAFile,
            _ => CorruptRecordError::Read(e),
        })?;
    let meta = file.metadata().map_err(CorruptRecordError::Read)?;
    if !meta.is_file() {
        return Err(CorruptRecordError::NotAFile);
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(CorruptRecordError::TooLarge {
            limit: MAX_RECORD_BYTES,
            actual: meta.len(),
        });
    }
    let mut bytes = Vec::new();
    // One byte past the limit, in case the file grew after the size check.
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(CorruptRecordError::Read)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > MAX_RECORD_BYTES {
        return Err(CorruptRecordError::TooLarge {
            limit: MAX_RECORD_BYTES,
            actual: read,
        });
    }
    let record: SandboxRecord =
        serde_json::from_slice(&bytes).map_err(CorruptRecordError::Decode)?;
    if record.alloc != expected {
        return Err(CorruptRecordError::WrongAlloc {
            expected,
            found: record.alloc,
        });
    }
    Ok(record)
}

/// `fsync` of a directory, so a rename or unlink in it is durable.
fn sync_dir(dir: &Path) -> Result<(), RecordError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RecordError::Io {
            op: "fsync",
            path: dir.to_owned(),
            source,
        })
}

/// A sandbox found in the cgroup hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingSandbox {
    /// The allocation of its `alloc-<id>` name.
    pub alloc: AllocationId,
    /// Its directories, one per hierarchy where it exists, in the order of the hierarchies.
    pub dirs: Vec<PathBuf>,
}

/// The cgroup hierarchies could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A root directory could not be read.
    #[error("cannot list {}: {source}", path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
}

/// The sandboxes that exist under `<mount>/<root_name>` for every hierarchy a sandbox uses in
/// `layout` (each mount of [`V1_CONTROLLERS`] once, and the v2 tree), sorted by allocation. A
/// sandbox present in only some hierarchies (a crash half-way through a removal) is listed
/// with the directories it has. Names other than `alloc-<id>` are ignored; a root that does not
/// exist holds no sandbox.
pub fn existing_sandboxes(
    layout: &CgroupLayout,
    root_name: &str,
) -> Result<Vec<ExistingSandbox>, ScanError> {
    let mut mounts: Vec<&Path> = Vec::new();
    for controller in V1_CONTROLLERS {
        if let Some(mount) = layout.v1_controller(controller)
            && !mounts.contains(&mount)
        {
            mounts.push(mount);
        }
    }
    if let Some(unified) = layout.unified() {
        mounts.push(unified);
    }
    let mut found: Vec<ExistingSandbox> = Vec::new();
    for mount in mounts {
        let root = mount.join(root_name);
        let list_err = |source| ScanError::List {
            path: root.clone(),
            source,
        };
        let entries = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(list_err(e)),
        };
        for entry in entries {
            let entry = entry.map_err(list_err)?;
            let Some(alloc) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<AllocationId>().ok())
            else {
                continue;
            };
            if !entry.file_type().map_err(list_err)?.is_dir() {
                continue;
            }
            match found.iter_mut().find(|s| s.alloc == alloc) {
                Some(sandbox) => sandbox.dirs.push(entry.path()),
                None => found.push(ExistingSandbox {
                    alloc,
                    dirs: vec![entry.path()],
                }),
            }
        }
    }
    found.sort_by_key(|s| s.alloc);
    Ok(found)
}

/// What to do with each sandbox after an agent restart; every list is sorted and holds an
/// allocation at most once, and each allocation is in exactly one list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Record and cgroup exist and the workload (or its shim, which will report how it ends)
    /// is alive: keep it running, untouched.
    pub adopt: Vec<AllocationId>,
    /// Record and cgroup exist but neither the workload nor its shim is alive: report how it
    /// ended (the shim's exit file) and release the sandbox.
    pub exited: Vec<AllocationId>,
    /// A cgroup with no record: no allocation owns it; destroy it.
    pub orphan_cgroups: Vec<AllocationId>,
    /// A record with no cgroup: the sandbox is gone; release what the record still holds
    /// (its MIG instance) and remove the record.
    pub stale_records: Vec<AllocationId>,
}

/// Decides what to do with each sandbox after a restart, from the `records` loaded, the
/// sandboxes `existing_cgroups` found, and `alive(alloc, pid)`, which says whether `pid` is
/// still alive as a process of `alloc`'s sandbox (checking cgroup membership guards against a
/// recycled pid). Pure: reads nothing but its arguments.
pub fn reconcile(
    records: &[SandboxRecord],
    existing_cgroups: &[AllocationId],
    alive: &dyn Fn(AllocationId, u32) -> bool,
) -> Reconciliation {
    let cgroups: BTreeSet<AllocationId> = existing_cgroups.iter().copied().collect();
    let mut recorded = BTreeSet::new();
    let mut out = Reconciliation::default();
    let mut sorted: Vec<&SandboxRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.alloc);
    for record in sorted {
        let alloc = record.alloc;
        if !recorded.insert(alloc) {
            continue;
        }
        if !cgroups.contains(&alloc) {
            out.stale_records.push(alloc);
            continue;
        }
        let running = [record.workload_pid, record.shim_pid]
            .into_iter()
            .flatten()
            .any(|pid| alive(alloc, pid));
        if running {
            out.adopt.push(alloc);
        } else {
            out.exited.push(alloc);
        }
    }
    out.orphan_cgroups = cgroups.difference(&recorded).copied().collect();
    out
}
