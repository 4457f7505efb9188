//! The settings of the profiles, from `profiles/settings.toml` (embedded at build time, so
//! the binary and the plain files a user reads never disagree).

use std::sync::OnceLock;

use serde::Deserialize;

/// A tuning profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The most bytes per core.
    Throughput,
    /// The lowest tail latency, at the cost of CPU.
    Latency,
    /// The safe default for machines shared with other work.
    Balanced,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::Throughput, Profile::Latency, Profile::Balanced];

    /// The profile's name as flags and files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Throughput => "throughput",
            Profile::Latency => "latency",
            Profile::Balanced => "balanced",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown profile {s:?}: throughput, latency or balanced"))
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of setting, and so how the tuner reads and changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A file under `/proc/sys`.
    Sysctl,
    /// Any other kernel file (globs allowed): one row per file that exists.
    Sysfs,
    /// A daemon that should not run (irqbalance); reported, not managed.
    Service,
    /// NIC ring sizes, through `ethtool -g` / `-G`.
    EthtoolRing,
    /// NIC interrupt coalescing, through `ethtool -c` / `-C`.
    EthtoolCoalesce,
    /// Receive-queue interrupt affinity, RPS and XPS from the NIC-queue plan.
    NicAffinity,
    /// A resource limit of the broker process (limits.d).
    Limit,
    /// Advice about the broker process itself; nothing to change in the kernel.
    Process,
}

/// How a file's value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The trimmed content.
    Plain,
    /// Words separated by any whitespace (`tcp_rmem`).
    Words,
    /// A selector file (`always [madvise] never`): the bracketed word is the value.
    Bracketed,
}

/// One setting with its value in each profile (`-`: the profile leaves it as it is).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    /// Unique id; a sysctl's name.
    pub id: String,
    /// How it is read and changed.
    pub kind: Kind,
    /// Its file on a real machine, possibly a glob; empty for kinds without one.
    pub path: String,
    /// How its value compares.
    pub format: Format,
    /// Value in the throughput profile.
    pub throughput: String,
    /// Value in the latency profile.
    pub latency: String,
    /// Value in the balanced profile.
    pub balanced: String,
    /// What it affects, for the check table.
    pub affects: String,
    /// What it changes.
    pub what: String,
    /// Why these values.
    pub why: String,
    /// Where the advice comes from.
    pub source: String,
}

impl Setting {
    /// The value for `profile`, or `None` where the profile leaves it as it is.
    pub fn value(&self, profile: Profile) -> Option<&str> {
        let v = match profile {
            Profile::Throughput => &self.throughput,
            Profile::Latency => &self.latency,
            Profile::Balanced => &self.balanced,
        };
        (v.trim() != "-").then_some(v.trim())
    }
}

#[derive(Deserialize)]
struct File {
    setting: Vec<Setting>,
}

/// The text of `profiles/settings.toml`.
pub const SETTINGS_TOML: &str = include_str!("../profiles/settings.toml");

/// Parses a settings file.
pub fn parse(text: &str) -> Result<Vec<Setting>, String> {
    let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    for s in &f.setting {
        if !seen.insert(s.id.as_str()) {
            return Err(format!("setting {} appears twice", s.id));
        }
        if matches!(s.kind, Kind::Sysctl | Kind::Sysfs) && !s.path.starts_with('/') {
            return Err(format!("setting {} needs an absolute path", s.id));
        }
    }
    Ok(f.setting)
}

/// The settings every profile covers.
pub fn all() -> &'static [Setting] {
    static SETTINGS: OnceLock<Vec<Setting>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        // A test parses the embedded file, so this cannot fail in a built binary.
        parse(SETTINGS_TOML).expect("profiles/settings.toml parses")
    })
}
