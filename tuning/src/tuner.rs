//! Checking, applying and reverting a profile on a tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpus;
use crate::ethtool;
use crate::nic::{self, Nic};
use crate::settings::{self, Format, Kind, Profile, Setting};
use crate::tree::{self, Tree};

/// Where `apply` records the values it replaced, under the root.
pub const DEFAULT_STATE: &str = "/var/lib/ringmq/tune-state.json";

/// How a setting compares with the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// It has the recommended value.
    Ok,
    /// It differs from the recommended value.
    Differs,
    /// The machine does not have it (no such file, no NIC queues, no ethtool).
    Absent,
    /// The profile leaves it as it is.
    AsIs,
    /// Advice only: nothing the tuner changes.
    Advice,
    /// It could not be read.
    Error,
}

impl Status {
    /// Whether this row counts as matching the profile (for the exit code of `check`).
    pub fn matches(self) -> bool {
        !matches!(self, Status::Differs | Status::Error)
    }

    /// The word the table shows.
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Differs => "DIFFERS",
            Status::Absent => "absent",
            Status::AsIs => "as is",
            Status::Advice => "advice",
            Status::Error => "ERROR",
        }
    }
}

/// One line of `tune check`: a setting on one target (file, interface, limit).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The setting's id.
    pub id: String,
    /// The file, interface or limit it is about, as a real machine spells it.
    pub target: String,
    /// The value now.
    pub current: String,
    /// The profile's value.
    pub recommended: String,
    /// How the two compare.
    pub status: Status,
    /// What it affects.
    pub affects: String,
    /// Anything the user should know (why it is absent, what to do by hand).
    pub note: String,
}

/// A value `apply` replaced, recorded so that `revert` can put it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Saved {
    /// A kernel file's previous value.
    File {
        /// As a real machine spells it.
        path: String,
        /// The value to write back.
        value: String,
    },
    /// `ethtool COMMAND DEVICE ARGS` puts the previous values back.
    Ethtool {
        /// Interface.
        device: String,
        /// `-G` or `-C`.
        command: String,
        /// Previous values, as arguments.
        args: String,
    },
    /// The limits.d file's previous content (`None`: there was none).
    LimitsFile {
        /// As a real machine spells it.
        path: String,
        /// Previous content.
        content: Option<String>,
    },
}

impl Saved {
    fn key(&self) -> String {
        match self {
            Saved::File { path, .. } | Saved::LimitsFile { path, .. } => path.clone(),
            // Ring sizes go back together; each coalescing key on its own, so a second
            // profile applied on top records the keys the first did not change.
            Saved::Ethtool {
                device,
                command,
                args,
            } if command == "-C" => format!(
                "ethtool {command} {device} {}",
                args.split_whitespace().next().unwrap_or_default()
            ),
            Saved::Ethtool {
                device, command, ..
            } => format!("ethtool {command} {device}"),
        }
    }
}

/// What `apply` has changed, kept under the root until `revert`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The profile applied last.
    pub profile: Option<Profile>,
    /// The boot the kernel values were recorded in: a reboot resets them.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The values found before the first `apply`, in the order they were changed.
    pub saved: Vec<Saved>,
}

/// What happened to one change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// Changed.
    Done,
    /// `--dry-run`: it would be changed.
    WouldDo,
    /// The user has to do it (a service to stop).
    Manual(String),
    /// The kernel or a tool refused.
    Failed(String),
}

/// One change made (or to make) by `apply` or `revert`.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The setting's id (for `revert`, what was restored).
    pub id: String,
    /// File, interface or limit.
    pub target: String,
    /// Value before.
    pub from: String,
    /// Value after.
    pub to: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Errors that stop `apply` or `revert` as a whole.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// Writing to the machine's own `/proc` and `/sys` needs root.
    #[error(
        "`ringmq tune {0}` changes kernel settings and needs root: run it with sudo (or as root); `--dry-run` shows what it would do without changing anything"
    )]
    NeedsRoot(&'static str),
    /// The state file could not be read or written.
    #[error("state file {path}: {reason}")]
    State {
        /// As given.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// How a file's content compares.
#[derive(Debug, Clone, Copy)]
enum Fmt {
    Plain,
    Words,
    Bracketed,
    CpuList,
    CpuMask,
}

impl Fmt {
    fn current(self, raw: &str) -> String {
        match self {
            Fmt::Bracketed => match (raw.find('['), raw.find(']')) {
                (Some(a), Some(b)) if a < b => raw[a + 1..b].to_string(),
                _ => raw.trim().to_string(),
            },
            Fmt::Words => raw.split_whitespace().collect::<Vec<_>>().join(" "),
            _ => raw.trim().to_string(),
        }
    }

    fn same(self, current: &str, want: &str) -> bool {
        match self {
            Fmt::CpuList => {
                cpus::parse_list(current).is_some_and(|c| Some(c) == cpus::parse_list(want))
            }
            Fmt::CpuMask => {
                cpus::parse_mask(current).is_some_and(|c| Some(c) == cpus::parse_mask(want))
            }
            Fmt::Words => self.current(current) == self.current(want),
            _ => current.trim() == want.trim(),
        }
    }
}

/// How `apply` changes an item.
#[derive(Debug, Clone)]
enum Action {
    None,
    File {
        path: PathBuf,
        value: String,
        fmt: Fmt,
    },
    Ethtool {
        device: String,
        command: &'static str,
        args: String,
        previous: String,
    },
    LimitsFile {
        path: PathBuf,
    },
}

#[derive(Debug, Clone)]
struct Item {
    row: Row,
    action: Action,
}

impl Item {
    /// A row the tuner only reports: nothing to change.
    fn report(row: Row) -> Item {
        Item {
            row,
            action: Action::None,
        }
    }
}

impl Row {
    /// A row of setting `s` on `target`, whose profile value is `want`.
    fn of(
        s: &Setting,
        want: Option<&str>,
        target: &str,
        current: &str,
        status: Status,
        note: &str,
    ) -> Row {
        Row {
            id: s.id.clone(),
            target: target.into(),
            current: current.into(),
            recommended: want.unwrap_or("-").into(),
            status,
            affects: s.affects.clone(),
            note: note.into(),
        }
    }
}

/// A profile on a tree, with the cores that run shards (for the NIC-queue plan).
#[derive(Debug, Clone)]
pub struct Tuner {
    tree: Tree,
    profile: Profile,
    shard_cpus: Vec<usize>,
    state_path: PathBuf,
}

impl Tuner {
    /// A tuner for `profile` on `tree`; `shard_cpus` are the broker's shard cores in shard
    /// order; the state file is `state` (default [`DEFAULT_STATE`] under the root).
    pub fn new(
        tree: Tree,
        profile: Profile,
        shard_cpus: Vec<usize>,
        state: Option<PathBuf>,
    ) -> Self {
        let state_path = state.unwrap_or_else(|| tree.path(DEFAULT_STATE));
        Self {
            tree,
            profile,
            shard_cpus,
            state_path,
        }
    }

    /// The cores that are online under the root (`/sys/devices/system/cpu/online`).
    pub fn online_cpus(tree: &Tree) -> Option<Vec<usize>> {
        let text = tree.read("/sys/devices/system/cpu/online").ok()?;
        let set = cpus::parse_list(&text)?;
        (!set.is_empty()).then(|| set.into_iter().collect())
    }

    /// Every setting of the profile as it stands now.
    pub fn check(&self) -> Vec<Row> {
        self.items().into_iter().map(|i| i.row).collect()
    }

    /// Applies the profile: records each value it replaces (once: a second `apply` keeps
    /// the values found by the first), then changes what differs. `dry_run` changes
    /// nothing and records nothing.
    pub fn apply(&self, dry_run: bool) -> Result<Vec<Change>, TuneError> {
        if !dry_run {
            self.need_root("apply")?;
        }
        let items: Vec<Item> = self
            .items()
            .into_iter()
            .filter(|i| i.row.status == Status::Differs)
            .collect();
        let mut state = self.load_state()?.unwrap_or_default();
        let boot = self.boot_id();
        if state.boot_id != boot {
            // Recorded before a reboot: kernel values went back to their defaults then,
            // so today's values are the ones to restore; the limits file stays.
            state
                .saved
                .retain(|s| matches!(s, Saved::LimitsFile { .. }));
            state.boot_id = boot;
        }
        // The records each item added (not those an earlier apply made).
        let mut added: Vec<Vec<String>> = Vec::with_capacity(items.len());
        if !dry_run {
            for item in &items {
                let mut keys = Vec::new();
                for saved in self.saved_for(&item.action) {
                    if !state.saved.iter().any(|s| s.key() == saved.key()) {
                        keys.push(saved.key());
                        state.saved.push(saved);
                    }
                }
                added.push(keys);
            }
            state.profile = Some(self.profile);
            self.store_state(&state)?;
        }
        let mut changes = Vec::new();
        let mut limits_written = false;
        for item in items {
            let outcome = match &item.action {
                Action::None => Outcome::Manual(item.row.note.clone()),
                _ if dry_run => Outcome::WouldDo,
                Action::File { path, value, fmt } => write_checked(path, value, *fmt),
                Action::Ethtool {
                    device,
                    command,
                    args,
                    ..
                } => self.ethtool_set(device, command, args),
                Action::LimitsFile { path } => {
                    if limits_written {
                        Outcome::Done
                    } else {
                        limits_written = true;
                        write_new(path, &self.limits_content())
                    }
                }
            };
            changes.push(Change {
                id: item.row.id,
                target: item.row.target,
                from: item.row.current,
                to: item.row.recommended,
                outcome,
            });
        }
        // A change that failed left its value as it was: nothing to restore for it.
        if !dry_run {
            let failed: Vec<&String> = changes
                .iter()
                .zip(&added)
                .filter(|(c, _)| matches!(c.outcome, Outcome::Failed(_)))
                .flat_map(|(_, keys)| keys)
                .collect();
            if !failed.is_empty() {
                state.saved.retain(|s| !failed.contains(&&s.key()));
                self.store_state(&state)?;
            }
        }
        Ok(changes)
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`), if the kernel has one.
    fn boot_id(&self) -> Option<String> {
        self.tree.read("/proc/sys/kernel/random/boot_id").ok()
    }

    /// Puts back every value `apply` recorded, newest first, and removes the record of
    /// those restored. `None`: nothing was recorded.
    pub fn revert(&self, dry_run: bool) -> Result<Option<Vec<Change>>, TuneError> {
        if !dry_run {
            self.need_root("revert")?;
        }
        let Some(state) = self.load_state()? else {
            return Ok(None);
        };
        let rebooted = state.boot_id != self.boot_id();
        let mut changes = Vec::new();
        let mut kept = Vec::new();
        for saved in state.saved.iter().rev() {
            let (target, to, outcome) = match saved {
                Saved::File { path, .. } | Saved::Ethtool { device: path, .. } if rebooted => (
                    path.clone(),
                    String::new(),
                    Outcome::Manual(
                        "not restored: recorded before a reboot, which reset it".into(),
                    ),
                ),
                Saved::File { path, value } => (
                    path.clone(),
                    value.clone(),
                    if dry_run {
                        Outcome::WouldDo
                    } else {
                        let p = self.tree.path(path);
                        match tree::read(&p) {
                            // Gone (an interface removed): nothing left to restore.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Done,
                            Ok(now) if Fmt::Bracketed.current(&now) == *value => Outcome::Done,
                            _ => match tree::write_existing(&p, value) {
                                Ok(()) => Outcome::Done,
                                Err(e) => Outcome::Failed(e.to_string()),
                            },
                        }
                    },
                ),
                Saved::Ethtool {
                    device,
                    command,
                    args,
                } => (
                    format!("{device} (ethtool {command})"),
                    args.clone(),
                    if dry_run {
                        Outcome::WouldDo
                    } else {
                        self.ethtool_set(device, command, args)
                    },
                ),
                Saved::LimitsFile { path, content } => (
                    path.clone(),
                    content
                        .clone()
                        .map_or("(no file)".into(), |_| "previous file".into()),
                    if dry_run {
                        Outcome::WouldDo
                    } else {
                        let p = self.tree.path(path);
                        let r = match content {
                            Some(c) => std::fs::write(&p, c),
                            None => std::fs::remove_file(&p).or_else(|e| {
                                if e.kind() == std::io::ErrorKind::NotFound {
                                    Ok(())
                                } else {
                                    Err(e)
                                }
                            }),
                        };
                        match r {
                            Ok(()) => Outcome::Done,
                            Err(e) => Outcome::Failed(e.to_string()),
                        }
                    },
                ),
            };
            if matches!(outcome, Outcome::Failed(_)) {
                kept.push(saved.clone());
            }
            changes.push(Change {
                id: "restore".into(),
                target,
                from: String::new(),
                to,
                outcome,
            });
        }
        if !dry_run {
            if kept.is_empty() {
                std::fs::remove_file(&self.state_path).map_err(|e| self.state_error(e))?;
            } else {
                kept.reverse();
                self.store_state(&State {
                    saved: kept,
                    ..state
                })?;
            }
        }
        Ok(Some(changes))
    }

    /// The recorded state, if `apply` ran.
    pub fn load_state(&self) -> Result<Option<State>, TuneError> {
        match std::fs::read_to_string(&self.state_path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| self.state_error(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.state_error(e)),
        }
    }

    fn store_state(&self, s: &State) -> Result<(), TuneError> {
        if let Some(dir) = self.state_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.state_error(e))?;
        }
        let tmp = self.state_path.with_extension("tmp");
        let text = serde_json::to_string_pretty(s).map_err(|e| self.state_error(e))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.state_path))
            .and_then(|()| match self.state_path.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            })
            .map_err(|e| self.state_error(e))
    }

    fn state_error(&self, e: impl std::fmt::Display) -> TuneError {
        TuneError::State {
            path: self.state_path.display().to_string(),
            reason: e.to_string(),
        }
    }

    fn need_root(&self, what: &'static str) -> Result<(), TuneError> {
        // SAFETY: geteuid only reads the process's credentials.
        if self.tree.is_real() && unsafe { libc::geteuid() } != 0 {
            return Err(TuneError::NeedsRoot(what));
        }
        Ok(())
    }

    fn saved_for(&self, a: &Action) -> Vec<Saved> {
        match a {
            Action::None => vec![],
            Action::File { path, .. } => {
                // vm.dirty_ratio and vm.dirty_bytes are one limit in two spellings:
                // writing one zeroes the other. Where the machine used the bytes form,
                // restoring the bytes value restores the limit (the ratio reads 0).
                let shown = self.tree.display(path);
                if let Some(stem) = shown.strip_suffix("_ratio")
                    && stem.starts_with("/proc/sys/vm/dirty")
                {
                    let partner = self.tree.path(&format!("{stem}_bytes"));
                    if let Ok(bytes) = tree::read(&partner)
                        && bytes != "0"
                    {
                        return vec![Saved::File {
                            path: self.tree.display(&partner),
                            value: bytes,
                        }];
                    }
                }
                tree::read(path)
                    .map(|raw| Saved::File {
                        path: shown,
                        // A selector file is written back with its selected word.
                        value: Fmt::Bracketed.current(&raw),
                    })
                    .into_iter()
                    .collect()
            }
            Action::Ethtool {
                device,
                command,
                previous,
                ..
            } => {
                let saved = |args: String| Saved::Ethtool {
                    device: device.clone(),
                    command: command.to_string(),
                    args,
                };
                if *command == "-C" {
                    let words: Vec<&str> = previous.split_whitespace().collect();
                    words.chunks(2).map(|kv| saved(kv.join(" "))).collect()
                } else {
                    vec![saved(previous.clone())]
                }
            }
            Action::LimitsFile { path } => vec![Saved::LimitsFile {
                path: self.tree.display(path),
                content: std::fs::read_to_string(path).ok(),
            }],
        }
    }

    fn ethtool_set(&self, device: &str, command: &str, args: &str) -> Outcome {
        let Some(e) = ethtool::find(&self.tree) else {
            return Outcome::Failed("ethtool is not installed".into());
        };
        let mut a = vec![command, device];
        a.extend(args.split_whitespace());
        match ethtool::run(&e, &a) {
            Ok(_) => Outcome::Done,
            Err(err) => Outcome::Failed(err),
        }
    }

    /// The limits.d file `apply` installs for this profile.
    fn limits_content(&self) -> String {
        let mut out = format!(
            "# Installed by `ringmq tune apply --profile {}`; removed by `ringmq tune revert`.\n\
             # Applies to sessions opened through PAM from the next login on; a systemd unit\n\
             # sets LimitMEMLOCK= and LimitNOFILE= instead. See tuning/profiles/limits.d/.\n",
            self.profile
        );
        for s in settings::all().iter().filter(|s| s.kind == Kind::Limit) {
            let (Some(v), Some(item)) = (s.value(self.profile), limit_item(&s.id)) else {
                continue;
            };
            for who in ["*", "root"] {
                for kind in ["soft", "hard"] {
                    out += &format!("{who:<6} {kind:<5} {:<8} {v}\n", item.conf_name);
                }
            }
        }
        out
    }

    fn items(&self) -> Vec<Item> {
        let nics = nic::discover(&self.tree);
        let mut out = Vec::new();
        for s in settings::all() {
            let want = s.value(self.profile);
            let row = |target: &str, current: &str, status, note: &str| {
                Row::of(s, want, target, current, status, note)
            };
            let plain = Item::report;
            match s.kind {
                Kind::Sysctl | Kind::Sysfs => {
                    let fmt = match s.format {
                        Format::Plain => Fmt::Plain,
                        Format::Words => Fmt::Words,
                        Format::Bracketed => Fmt::Bracketed,
                    };
                    let paths: Vec<PathBuf> = self
                        .tree
                        .glob(&s.path)
                        .into_iter()
                        .filter(|p| self.applies_to(p))
                        .collect();
                    if paths.is_empty() {
                        out.push(plain(row(
                            &s.path,
                            "-",
                            Status::Absent,
                            "not on this machine",
                        )));
                    }
                    for p in paths {
                        out.push(self.file_item(s, &p, fmt, want.map(str::to_string)));
                    }
                }
                Kind::NicAffinity => out.extend(self.nic_items(s, want, &nics)),
                Kind::EthtoolRing | Kind::EthtoolCoalesce => {
                    out.extend(self.ethtool_items(s, want, &nics))
                }
                Kind::Limit => out.push(self.limit_item(s, want)),
                Kind::Service => {
                    let running = self
                        .tree
                        .glob("/proc/[0-9]*/comm")
                        .iter()
                        .any(|p| tree::read(p).is_ok_and(|c| c == s.id));
                    let current = if running { "running" } else { "stopped" };
                    let status = match want {
                        None => Status::AsIs,
                        Some(w) if w == current => Status::Ok,
                        Some(_) => Status::Differs,
                    };
                    let note = if status == Status::Differs {
                        format!(
                            "stop it yourself (it would move the pinned interrupts back): systemctl disable --now {}",
                            s.id
                        )
                    } else {
                        String::new()
                    };
                    out.push(plain(row(&s.id, current, status, &note)));
                }
                Kind::Process => {
                    let mut r = row("broker process", "-", Status::Advice, &s.what);
                    r.recommended = "see note".into();
                    out.push(plain(r));
                }
            }
        }
        out
    }

    /// Whether a file matched by a setting's glob is one the tuner should touch: only
    /// NICs with a device (not lo, bridges, veths), and only deep idle states (exit
    /// latency above 10 µs: state numbering differs between idle drivers).
    fn applies_to(&self, p: &Path) -> bool {
        let shown = self.tree.display(p);
        if let Some(rest) = shown.strip_prefix("/sys/class/net/") {
            let iface = rest.split('/').next().unwrap_or_default();
            return self
                .tree
                .path(&format!("/sys/class/net/{iface}/device"))
                .exists();
        }
        if shown.contains("/cpuidle/state") {
            let latency = p.parent().map(|d| d.join("latency"));
            return match latency.map(|l| tree::read(&l)) {
                Some(Ok(us)) => us.parse::<u64>().is_ok_and(|us| us > 10),
                _ => true,
            };
        }
        true
    }

    /// Why the profile's value cannot be set here, if the kernel says it is not offered:
    /// a selector file lists its choices; the clocksource has `available_clocksource`.
    fn unavailable(&self, p: &Path, raw: &str, fmt: Fmt, want: &str) -> Option<String> {
        let choices: Vec<String> = match fmt {
            Fmt::Bracketed if raw.contains('[') => raw
                .split_whitespace()
                .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
                .collect(),
            _ if p.ends_with("current_clocksource") => {
                tree::read(&p.with_file_name("available_clocksource"))
                    .ok()?
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            }
            _ => return None,
        };
        (!choices.iter().any(|c| c == want)).then(|| {
            format!(
                "{want} is not offered here (choices: {})",
                choices.join(" ")
            )
        })
    }

    fn file_item(&self, s: &Setting, p: &Path, fmt: Fmt, want: Option<String>) -> Item {
        let mut row = Row::of(
            s,
            want.as_deref(),
            &self.tree.display(p),
            "",
            Status::AsIs,
            "",
        );
        let raw = match tree::read(p) {
            Ok(r) => r,
            Err(e) => {
                row.status = if e.kind() == std::io::ErrorKind::NotFound {
                    Status::Absent
                } else {
                    Status::Error
                };
                row.current = "-".into();
                row.note = e.to_string();
                return Item::report(row);
            }
        };
        row.current = fmt.current(&raw);
        let unavailable = want
            .as_deref()
            .filter(|w| !fmt.same(&raw, w))
            .and_then(|w| self.unavailable(p, &raw, fmt, w));
        let action = match (want, unavailable) {
            (None, _) => Action::None,
            (Some(_), Some(why)) => {
                row.status = Status::Absent;
                row.note = why;
                Action::None
            }
            (Some(w), None) => {
                if fmt.same(&raw, &w) || fmt.same(&row.current, &w) {
                    row.status = Status::Ok;
                } else {
                    row.status = Status::Differs;
                }
                Action::File {
                    path: p.to_path_buf(),
                    value: w,
                    fmt,
                }
            }
        };
        Item { row, action }
    }

    fn nic_items(&self, s: &Setting, want: Option<&str>, nics: &[Nic]) -> Vec<Item> {
        let absent = |target: &str, note: &str| {
            let status = if want.is_some() {
                Status::Absent
            } else {
                Status::AsIs
            };
            Item::report(Row::of(s, want, target, "-", status, note))
        };
        if want.is_none() {
            return vec![absent("every NIC", "")];
        }
        if want != Some("shards") {
            return vec![absent(
                "every NIC",
                "unknown value: the tuner knows \"shards\" and \"-\"",
            )];
        }
        if nics.is_empty() {
            return vec![absent(
                "every NIC",
                "no network interface with a device under /sys/class/net",
            )];
        }
        let shards = self.shard_cpus.len();
        let mut out = Vec::new();
        for n in nics {
            // (file, format, cores) for this setting on this interface.
            let plan: Vec<(PathBuf, Fmt, BTreeSet<usize>)> = match s.id.as_str() {
                "nic.irq_affinity" => {
                    // Planned over the queues (as RPS and XPS are), so queue i's
                    // interrupt and its RPS mask agree; a NIC with more vectors than
                    // queues (one per CPU, or its maximum queue count) wraps around.
                    let queues = if n.rx_queues.is_empty() {
                        n.rx_irqs.len()
                    } else {
                        n.rx_queues.len().min(n.rx_irqs.len())
                    };
                    let plan = nic::plan(queues, &self.shard_cpus);
                    n.rx_irqs
                        .iter()
                        .enumerate()
                        .map(|(i, irq)| (plan[i % queues.max(1)].clone(), irq))
                        .collect::<Vec<_>>()
                }
                .into_iter()
                .map(|(set, irq)| {
                    (
                        self.tree
                            .path(&format!("/proc/irq/{irq}/smp_affinity_list")),
                        Fmt::CpuList,
                        set,
                    )
                })
                .collect(),
                "nic.rps" => nic::plan(n.rx_queues.len(), &self.shard_cpus)
                    .into_iter()
                    .zip(&n.rx_queues)
                    .map(|(set, q)| {
                        // Off where a queue's interrupt already lands on its one shard.
                        let set = if n.rx_queues.len() >= shards || set.len() == 1 {
                            BTreeSet::new()
                        } else {
                            set
                        };
                        (q.join("rps_cpus"), Fmt::CpuMask, set)
                    })
                    .collect(),
                "nic.xps" => nic::plan(n.tx_queues.len(), &self.shard_cpus)
                    .into_iter()
                    .zip(&n.tx_queues)
                    .map(|(set, q)| (q.join("xps_cpus"), Fmt::CpuMask, set))
                    .collect(),
                other => {
                    out.push(absent(
                        &n.name,
                        &format!("{other}: not a NIC-affinity setting"),
                    ));
                    continue;
                }
            };
            if plan.is_empty() {
                out.push(absent(
                    &n.name,
                    if s.id == "nic.irq_affinity" {
                        "no receive-queue interrupts found in /proc/interrupts"
                    } else {
                        "no queues under /sys/class/net/*/queues"
                    },
                ));
            }
            for (path, fmt, set) in plan {
                let value = match fmt {
                    Fmt::CpuList => cpus::format_list(&set),
                    _ => cpus::format_mask(&set),
                };
                let mut item = self.file_item(s, &path, fmt, Some(value.clone()));
                item.row.target = format!("{} {}", n.name, item.row.target);
                item.row.recommended = if set.is_empty() {
                    "0 (off)".into()
                } else {
                    format!("cores {}", cpus::format_list(&set))
                };
                if matches!(fmt, Fmt::CpuMask) && item.row.status != Status::Absent {
                    item.row.current = match cpus::parse_mask(&item.row.current) {
                        Some(c) if c.is_empty() => "0 (off)".into(),
                        Some(c) => format!("cores {}", cpus::format_list(&c)),
                        None => item.row.current,
                    };
                } else if item.row.status != Status::Absent {
                    item.row.current = format!("cores {}", item.row.current);
                }
                out.push(item);
            }
        }
        out
    }

    fn ethtool_items(&self, s: &Setting, want: Option<&str>, nics: &[Nic]) -> Vec<Item> {
        let row = |target: &str, current: &str, status, note: &str| {
            Row::of(s, want, target, current, status, note)
        };
        let plain = Item::report;
        let Some(want) = want else {
            return vec![plain(row("every NIC", "-", Status::AsIs, ""))];
        };
        if nics.is_empty() {
            return vec![plain(row(
                "every NIC",
                "-",
                Status::Absent,
                "no network interface with a device",
            ))];
        }
        let Some(ethtool) = ethtool::find(&self.tree) else {
            return vec![plain(row(
                "every NIC",
                "-",
                Status::Absent,
                "ethtool is not installed (Debian package ethtool)",
            ))];
        };
        let unsupported = |dev: &str, e: String| {
            plain(row(
                dev,
                "-",
                Status::Absent,
                &format!("not supported: {e}"),
            ))
        };
        let mut out = Vec::new();
        for n in nics {
            let dev = n.name.as_str();
            if s.kind == Kind::EthtoolRing {
                let rings = ethtool::run(&ethtool, &["-g", dev]).and_then(|o| {
                    ethtool::parse_rings(&o).ok_or_else(|| "ring sizes not reported".to_string())
                });
                let r = match rings {
                    Ok(r) => r,
                    Err(e) => {
                        out.push(unsupported(dev, e));
                        continue;
                    }
                };
                if want != "max" {
                    out.push(plain(row(
                        dev,
                        "-",
                        Status::Error,
                        "unknown value: the tuner knows \"max\" and \"-\"",
                    )));
                    continue;
                }
                let current = format!("rx {} tx {}", r.rx, r.tx);
                let target = format!("rx {} tx {}", r.max_rx, r.max_tx);
                let status = if (r.rx, r.tx) == (r.max_rx, r.max_tx) {
                    Status::Ok
                } else {
                    Status::Differs
                };
                let mut rw = row(dev, &current, status, "");
                rw.recommended = format!("max ({target})");
                out.push(Item {
                    row: rw,
                    action: Action::Ethtool {
                        device: dev.into(),
                        command: "-G",
                        args: target,
                        previous: current,
                    },
                });
            } else {
                let pairs = match ethtool::parse_pairs(want) {
                    Ok(p) => p,
                    Err(e) => {
                        out.push(plain(row(dev, "-", Status::Error, &e)));
                        continue;
                    }
                };
                let now = match ethtool::run(&ethtool, &["-c", dev]) {
                    Ok(o) => ethtool::parse_coalesce(&o),
                    Err(e) => {
                        out.push(unsupported(dev, e));
                        continue;
                    }
                };
                let supported: Vec<_> = pairs
                    .iter()
                    .filter(|(k, _)| now.contains_key(k))
                    .cloned()
                    .collect();
                let lacking: Vec<_> = pairs
                    .iter()
                    .filter(|(k, _)| !now.contains_key(k))
                    .map(|(k, _)| k.as_str())
                    .collect();
                let note = if lacking.is_empty() {
                    String::new()
                } else {
                    format!("the NIC lacks {}", lacking.join(", "))
                };
                if supported.is_empty() {
                    out.push(plain(row(dev, "-", Status::Absent, &note)));
                    continue;
                }
                let current: Vec<(String, String)> = supported
                    .iter()
                    .map(|(k, _)| (k.clone(), now[k].clone()))
                    .collect();
                let differing: Vec<(String, String)> = supported
                    .iter()
                    .filter(|(k, v)| &now[k] != v)
                    .cloned()
                    .collect();
                let previous: Vec<(String, String)> = differing
                    .iter()
                    .map(|(k, _)| (k.clone(), now[k].clone()))
                    .collect();
                let status = if differing.is_empty() {
                    Status::Ok
                } else {
                    Status::Differs
                };
                out.push(Item {
                    row: row(dev, &ethtool::format_pairs(&current), status, &note),
                    action: Action::Ethtool {
                        device: dev.into(),
                        command: "-C",
                        args: ethtool::format_pairs(&differing),
                        previous: ethtool::format_pairs(&previous),
                    },
                });
            }
        }
        out
    }

    fn limit_item(&self, s: &Setting, want: Option<&str>) -> Item {
        let mut row = Row::of(s, want, "", "-", Status::AsIs, "");
        let Some(li) = limit_item(&s.id) else {
            row.status = Status::Error;
            row.note = format!("{}: not a limit the tuner knows", s.id);
            return Item::report(row);
        };
        row.target = format!("{} ({})", li.conf_name, s.path);
        row.note = "current: this shell's limit; the broker's come from its login or unit (LimitMEMLOCK=, LimitNOFILE=)".into();
        let current = self.tree.read("/proc/self/limits").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(li.proc_name))
                .and_then(|l| {
                    l[li.proc_name.len()..]
                        .split_whitespace()
                        .next()
                        .map(str::to_string)
                })
        });
        let current = current.map(|c| match c.parse::<u64>() {
            Ok(n) => Limit::Value(n / li.unit),
            Err(_) => Limit::Unlimited,
        });
        row.current = current.map_or("unknown".into(), |c| c.to_string());
        let Some(w) = want else {
            return Item::report(row);
        };
        let Some(w) = Limit::parse(w) else {
            row.status = Status::Error;
            row.note = format!("{w:?}: not a limit value (a number or unlimited)");
            return Item::report(row);
        };
        let path = self.tree.path(&s.path);
        let installed = std::fs::read_to_string(&path).is_ok_and(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 4
                    && f[1] == "soft"
                    && f[2] == li.conf_name
                    && Limit::parse(f[3]) == Some(w)
            })
        });
        row.status = if current.is_some_and(|c| c >= w) {
            Status::Ok
        } else if installed {
            row.note = format!(
                "installed in {}; applies from the next login (systemd units: LimitMEMLOCK=, LimitNOFILE=)",
                s.path
            );
            Status::Ok
        } else {
            Status::Differs
        };
        Item {
            row,
            action: Action::LimitsFile { path },
        }
    }
}

/// A resource limit in limits.conf units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Limit {
    Value(u64),
    Unlimited,
}

impl Limit {
    fn parse(s: &str) -> Option<Limit> {
        match s {
            "unlimited" | "infinity" | "-1" => Some(Limit::Unlimited),
            n => n.parse().ok().map(Limit::Value),
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Value(n) => write!(f, "{n}"),
            Limit::Unlimited => f.write_str("unlimited"),
        }
    }
}

struct LimitNames {
    conf_name: &'static str,
    proc_name: &'static str,
    /// `/proc/self/limits` units per limits.conf unit.
    unit: u64,
}

fn limit_item(id: &str) -> Option<LimitNames> {
    match id {
        "limits.memlock" => Some(LimitNames {
            conf_name: "memlock",
            proc_name: "Max locked memory",
            unit: 1024,
        }),
        "limits.nofile" => Some(LimitNames {
            conf_name: "nofile",
            proc_name: "Max open files",
            unit: 1,
        }),
        _ => None,
    }
}

/// Writes a kernel file and reads it back: the kernel may refuse a value or keep another.
fn write_checked(path: &Path, value: &str, fmt: Fmt) -> Outcome {
    if let Err(e) = tree::write_existing(path, value) {
        return Outcome::Failed(e.to_string());
    }
    match tree::read(path) {
        Ok(now) if fmt.same(&now, value) || fmt.same(&fmt.current(&now), value) => Outcome::Done,
        Ok(now) => Outcome::Failed(format!("the kernel kept {now:?}")),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Writes a whole file, creating its directory.
fn write_new(path: &Path, content: &str) -> Outcome {
    let r = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, content));
    match r {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}
