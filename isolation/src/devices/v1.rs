//! The rule list rendered for cgroup v1's devices controller: the lines written, in order, to
//! `devices.deny` and `devices.allow` of a sandbox's devices cgroup.
//!
//! The first line is always `a` to `devices.deny`, which empties the cgroup's exception list
//! (default deny); each rule follows as `c 195:0 rw`, `c 136:* rwm`, ... to `devices.allow` or
//! `devices.deny`.
//!
//! [`apply`] writes the lines into a devices cgroup directory, one `write()` per line, then
//! reads `devices.list` back and compares it with what the lines must have produced, so a line
//! the kernel accepted without effect is an error naming it, not a silent no-op. The expected
//! list is computed by a model of the kernel's rules (`security/device_cgroup.c`): `a` to
//! `devices.deny` (or `devices.allow`) sets the default to deny (allow) and empties the
//! exception list; a line to the file of the other default adds its access bits to the
//! exception with the same type, major and minor; a line to the file of the current default
//! removes those bits from it (and the exception once it has none left).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::rules::{Access, DeviceError, DeviceKind, DeviceRule};

/// The file a v1 devices cgroup lists its exceptions in.
pub const DEVICES_LIST: &str = "devices.list";

/// The devices-controller file a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum V1File {
    /// `devices.allow`.
    Allow,
    /// `devices.deny`.
    Deny,
}

impl V1File {
    /// The file name inside the cgroup directory.
    pub const fn file_name(self) -> &'static str {
        match self {
            Self::Allow => "devices.allow",
            Self::Deny => "devices.deny",
        }
    }
}

impl fmt::Display for V1File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// One write: `line` to `file`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct V1Write {
    /// The file.
    pub file: V1File,
    /// The line, without a newline.
    pub line: String,
}

fn number(n: Option<u32>) -> String {
    n.map_or_else(|| "*".to_owned(), |n| n.to_string())
}

fn line(kind: char, rule: &DeviceRule) -> String {
    format!(
        "{kind} {}:{} {}",
        number(rule.major),
        number(rule.minor),
        rule.access
    )
}

/// The writes that install `rules` on a v1 devices cgroup, in order: `a` to `devices.deny`, then
/// one line per rule. A [`DeviceKind::All`] rule for every device and every access is written as
/// `a`; any other `All` rule as a `c` and a `b` line, because v1 reads `a` as "everything" and
/// ignores the rest of such a line.
pub fn render(rules: &[DeviceRule]) -> Result<Vec<V1Write>, DeviceError> {
    let mut writes = vec![V1Write {
        file: V1File::Deny,
        line: "a".to_owned(),
    }];
    for rule in rules {
        rule.check_range()?;
        let file = if rule.allow {
            V1File::Allow
        } else {
            V1File::Deny
        };
        let mut push = |line: String| writes.push(V1Write { file, line });
        match rule.kind {
            DeviceKind::Char => push(line('c', rule)),
            DeviceKind::Block => push(line('b', rule)),
            DeviceKind::All
                if rule.major.is_none() && rule.minor.is_none() && rule.access == Access::RWM =>
            {
                push("a".to_owned());
            }
            DeviceKind::All => {
                push(line('c', rule));
                push(line('b', rule));
            }
        }
    }
    Ok(writes)
}

/// An exception's key in `devices.list`: type (`a`, `b`, `c`), major and minor (`None`: `*`).
type Key = (char, Option<u32>, Option<u32>);

fn parse_number(s: &str) -> Option<Option<u32>> {
    if s == "*" {
        Some(None)
    } else {
        s.parse().ok().map(Some)
    }
}

/// Parses `c 195:0 rw` (a rendered line or a `devices.list` entry) into its key and access bits.
fn parse_entry(line: &str) -> Option<(Key, u32)> {
    let mut parts = line.split_whitespace();
    let kind = parts.next()?;
    let kind = match kind {
        "a" | "b" | "c" => kind.chars().next()?,
        _ => return None,
    };
    let (major, minor) = parts.next()?.split_once(':')?;
    let mut bits = 0;
    for c in parts.next()?.chars() {
        bits |= match c {
            'r' => Access::READ.bits(),
            'w' => Access::WRITE.bits(),
            'm' => Access::MKNOD.bits(),
            _ => return None,
        };
    }
    if parts.next().is_some() {
        return None;
    }
    Some(((kind, parse_number(major)?, parse_number(minor)?), bits))
}

fn render_entry((kind, major, minor): Key, bits: u32) -> String {
    let access = [Access::READ, Access::WRITE, Access::MKNOD]
        .into_iter()
        .filter(|a| bits & a.bits() != 0)
        .fold(Access::default(), Access::union);
    format!("{kind} {}:{} {access}", number(major), number(minor))
}

/// The list the kernel should show after `writes`, with, per exception, the write that set it
/// last (to name it in an error).
fn expected_list(writes: &[V1Write]) -> BTreeMap<Key, (u32, &V1Write)> {
    let mut default_allow = true;
    let mut exceptions: BTreeMap<Key, (u32, &V1Write)> = BTreeMap::new();
    for write in writes {
        let allow = write.file == V1File::Allow;
        if write.line.trim() == "a" {
            default_allow = allow;
            exceptions.clear();
            continue;
        }
        let Some((key, bits)) = parse_entry(&write.line) else {
            continue;
        };
        if allow == default_allow {
            if let Some(entry) = exceptions.get_mut(&key) {
                entry.0 &= !bits;
                entry.1 = write;
                if entry.0 == 0 {
                    exceptions.remove(&key);
                }
            }
        } else {
            let entry = exceptions.entry(key).or_insert((0, write));
            entry.0 |= bits;
            entry.1 = write;
        }
    }
    if default_allow {
        // The kernel lists an allow-all cgroup as `a *:* rwm` and no exceptions.
        let last = writes.iter().rev().find(|w| w.line.trim() == "a");
        exceptions.clear();
        if let Some(last) = last {
            exceptions.insert(('a', None, None), (Access::RWM.bits(), last));
        }
    }
    exceptions
}

/// Writes `writes` (from [`render`]) into the v1 devices cgroup directory `dir`, one `write()`
/// per line, then reads `devices.list` back and checks it holds exactly what the lines must
/// have produced. A refused write is [`DeviceError::V1Write`]; a line without effect is
/// [`DeviceError::V1NotApplied`]; an entry nothing accounts for is
/// [`DeviceError::V1Unexpected`].
pub fn apply(dir: &Path, writes: &[V1Write]) -> Result<(), DeviceError> {
    for write in writes {
        let path = dir.join(write.file.file_name());
        std::fs::write(&path, write.line.as_bytes()).map_err(|source| DeviceError::V1Write {
            path,
            line: write.line.clone(),
            source,
        })?;
    }
    verify(dir, writes)
}

/// Reads `devices.list` in `dir` and compares it with what `writes` must have produced.
pub fn verify(dir: &Path, writes: &[V1Write]) -> Result<(), DeviceError> {
    let path = dir.join(DEVICES_LIST);
    let text = std::fs::read_to_string(&path).map_err(|source| DeviceError::Read {
        path: path.clone(),
        source,
    })?;
    let mut listed = BTreeMap::new();
    for entry in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, bits) = parse_entry(entry).ok_or_else(|| DeviceError::V1Unexpected {
            path: path.clone(),
            entry: entry.to_owned(),
        })?;
        listed.insert(key, bits);
    }
    let expected = expected_list(writes);
    for (key, (bits, write)) in &expected {
        if listed.get(key) != Some(bits) {
            return Err(DeviceError::V1NotApplied {
                path,
                file: write.file.file_name(),
                line: write.line.clone(),
                listed: listed.get(key).map(|&b| render_entry(*key, b)),
            });
        }
    }
    if let Some((&key, &bits)) = listed.iter().find(|(k, _)| !expected.contains_key(*k)) {
        return Err(DeviceError::V1Unexpected {
            path,
            entry: render_entry(key, bits),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(rules: &[DeviceRule]) -> Vec<V1Write> {
        render(rules).expect("render")
    }

    /// A temp dir standing in for a cgroup whose `devices.list` shows `list`.
    fn fake_cgroup(list: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(DEVICES_LIST), list).expect("write list");
        dir
    }

    #[test]
    fn list_matching_the_lines_verifies() {
        let rules = [
            DeviceRule::allow_char(1, 3, Access::RWM),
            DeviceRule::allow_char(195, 0, Access::READ),
            DeviceRule::allow_char(195, 0, Access::WRITE),
        ];
        let dir = fake_cgroup("c 1:3 rwm\nc 195:0 rw\n");
        verify(dir.path(), &writes(&rules)).expect("verifies");
    }

    #[test]
    fn line_without_effect_is_named() {
        let rules = [
            DeviceRule::allow_char(1, 3, Access::RWM),
            DeviceRule::allow_char(195, 0, Access::RW),
        ];
        let dir = fake_cgroup("c 1:3 rwm\nc 195:0 r\n");
        match verify(dir.path(), &writes(&rules)) {
            Err(DeviceError::V1NotApplied {
                file, line, listed, ..
            }) => {
                assert_eq!(file, "devices.allow");
                assert_eq!(line, "c 195:0 rw");
                assert_eq!(listed.as_deref(), Some("c 195:0 r"));
            }
            other => panic!("expected V1NotApplied, got {other:?}"),
        }
    }

    #[test]
    fn unexpected_entry_is_named() {
        let rules = [DeviceRule::allow_char(1, 3, Access::RWM)];
        let dir = fake_cgroup("c 1:3 rwm\nc 195:1 rw\n");
        match verify(dir.path(), &writes(&rules)) {
            Err(DeviceError::V1Unexpected { entry, .. }) => assert_eq!(entry, "c 195:1 rw"),
            other => panic!("expected V1Unexpected, got {other:?}"),
        }
    }

    #[test]
    fn model_follows_the_kernel_rules() {
        let deny = |line: &str| V1Write {
            file: V1File::Deny,
            line: line.to_owned(),
        };
        let allow = |line: &str| V1Write {
            file: V1File::Allow,
            line: line.to_owned(),
        };
        // Default deny: a deny line removes bits from the exception it names.
        let w = [deny("a"), allow("c 1:3 rwm"), deny("c 1:3 m")];
        let list: Vec<_> = expected_list(&w)
            .into_iter()
            .map(|(k, (bits, _))| render_entry(k, bits))
            .collect();
        assert_eq!(list, ["c 1:3 rw"]);
        // `a` to devices.allow: allow everything, listed as one entry.
        let w = [deny("a"), allow("c 1:3 rwm"), allow("a")];
        let list: Vec<_> = expected_list(&w)
            .into_iter()
            .map(|(k, (bits, _))| render_entry(k, bits))
            .collect();
        assert_eq!(list, ["a *:* rwm"]);
    }
}
