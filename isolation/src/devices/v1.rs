//! The rule list rendered for cgroup v1's devices controller: the lines written, in order, to
//! `devices.deny` and `devices.allow` of a sandbox's devices cgroup.
//!
//! The first line is always `a` to `devices.deny`, which empties the cgroup's exception list
//! (default deny); each rule follows as `c 195:0 rw`, `c 136:* rwm`, ... to `devices.allow` or
//! `devices.deny`. Writing the lines and reading `devices.list` back is the sandbox's job.

use std::fmt;

use super::rules::{Access, DeviceError, DeviceKind, DeviceRule};

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
