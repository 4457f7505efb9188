//! Kernel and process tuning for a ringmq broker.
//!
//! The profiles (`throughput`, `latency`, `balanced`) are plain files under
//! `tuning/profiles/` that a user can read and apply without ringmq; [`settings`] embeds
//! their source of truth, `settings.toml`. A [`Tuner`] checks a profile against a machine,
//! applies it (recording every value it replaces) and reverts it. Every file it reads or
//! writes goes through a [`Tree`] root, so tests run against a fake `/proc` and `/sys`.
//! [`nic`] holds the NIC-queue affinity plan: each receive queue's interrupt on a core that
//! runs a shard.
#![deny(missing_docs)]

pub mod cpus;
pub mod ethtool;
pub mod nic;
pub mod settings;
mod tree;
mod tuner;

pub use settings::{Profile, Setting};
pub use tree::Tree;
pub use tuner::{Change, DEFAULT_STATE, Outcome, Row, Saved, State, Status, TuneError, Tuner};

/// Renders rows as the table `ringmq tune check` prints.
pub fn table(rows: &[Row]) -> String {
    let head = [
        "SETTING",
        "TARGET",
        "CURRENT",
        "RECOMMENDED",
        "STATUS",
        "AFFECTS",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.target.clone(),
                r.current.clone(),
                r.recommended.clone(),
                r.status.word().to_string(),
                r.affects.clone(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count().min(48));
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: &[String]| {
        let mut l = String::new();
        for (i, s) in c.iter().enumerate() {
            let s: String = if s.chars().count() > 48 && i < 5 {
                s.chars().take(47).chain(['…']).collect()
            } else {
                s.clone()
            };
            if i < 5 {
                l += &format!("{s:<w$}  ", w = width[i]);
            } else {
                l += &s;
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &head.map(String::from));
    for c in &cells {
        line(&mut out, c);
    }
    out
}
