//! `ringmq tune`: check, apply and revert a kernel tuning profile (tuning/profiles/).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use ringmq_tuning::{Outcome, Profile, Status, Tree, Tuner};

/// Where and for which shards the tuner works.
#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Root directory every /proc, /sys and /etc path is resolved under (a fake tree for
    /// tests; ethtool is looked for under it too)
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    /// throughput (most bytes per core), latency (lowest tail latency, burns CPU) or
    /// balanced (safe on shared machines)
    #[arg(long, global = true, default_value = "balanced")]
    profile: Profile,
    /// The broker's shards, for the NIC-queue plan: the first N online cores, as
    /// `ringmq serve --shards N` [default: every online core]
    #[arg(long, global = true, conflicts_with = "cpus")]
    shards: Option<usize>,
    /// The broker's shard cores, as `ringmq serve --cpus 0,2`
    #[arg(long, global = true, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Where apply records the values it replaces [default: <root>/var/lib/ringmq/tune-state.json]
    #[arg(long, global = true)]
    state: Option<PathBuf>,
}

/// `ringmq tune` subcommands.
#[derive(Subcommand, Debug)]
pub enum TuneCommand {
    /// A table of every setting: current value, the profile's value, status and what it
    /// affects. Exits 0 when everything present matches, 1 otherwise.
    Check {
        /// One JSON object per line instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Apply the profile: records the values it replaces (for revert), then changes what
    /// differs. Needs root on the real machine.
    Apply {
        /// Print what would change and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Put back every value apply replaced.
    Revert {
        /// Print what would be restored and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the notes of every setting of the profile: what it changes, why this value,
    /// and the source of the advice.
    Explain,
}

/// Runs a `tune` subcommand; `Ok(false)` when `check` finds differences or `apply` or
/// `revert` could not change everything.
pub fn tune(a: TuneArgs, cmd: TuneCommand) -> anyhow::Result<bool> {
    let tree = Tree::new(&a.root);
    if !a.root.is_dir() {
        bail!("--root {}: not a directory", a.root.display());
    }
    let online = Tuner::online_cpus(&tree).unwrap_or_else(|| (0..num_cpus::get()).collect());
    let shard_cpus = match (a.cpus, a.shards) {
        (Some(c), _) => {
            if let Some(bad) = c.iter().find(|c| !online.contains(c)) {
                bail!(
                    "--cpus names core {bad}, which is not online under {} (online: {})",
                    a.root.display(),
                    ringmq_tuning::cpus::format_list(&online.iter().copied().collect())
                );
            }
            c
        }
        (None, Some(0)) => bail!("--shards must be at least 1"),
        (None, Some(n)) if n > online.len() => bail!(
            "--shards {n}: only {} cores are online under {}",
            online.len(),
            a.root.display()
        ),
        (None, Some(n)) => online[..n].to_vec(),
        (None, None) => online,
    };
    let state_shown = a.state.clone().unwrap_or_else(|| {
        a.root
            .join(ringmq_tuning::DEFAULT_STATE.trim_start_matches('/'))
    });
    let tuner = Tuner::new(tree, a.profile, shard_cpus.clone(), a.state);
    let cores = ringmq_tuning::cpus::format_list(&shard_cpus.iter().copied().collect());
    let r: anyhow::Result<bool> = match cmd {
        TuneCommand::Check { json } => {
            let rows = tuner.check();
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!("profile {} · shards on cores {cores}", a.profile);
                print!("{}", ringmq_tuning::table(&rows));
                let notes: Vec<_> = rows
                    .iter()
                    .filter(|r| !r.note.is_empty() && r.status != Status::Advice)
                    .collect();
                if !notes.is_empty() {
                    println!("\nnotes:");
                    for r in notes {
                        println!("  {} {}: {}", r.id, r.target, r.note);
                    }
                }
                let differ = rows.iter().filter(|r| !r.status.matches()).count();
                let absent = rows.iter().filter(|r| r.status == Status::Absent).count();
                println!(
                    "\n{} settings: {} differ from the {} profile, {} not on this machine{}",
                    rows.len(),
                    differ,
                    a.profile,
                    absent,
                    if differ > 0 {
                        format!(
                            " · `ringmq tune apply --profile {}` changes them",
                            a.profile
                        )
                    } else {
                        String::new()
                    }
                );
            }
            Ok(rows.iter().all(|r| r.status.matches()))
        }
        TuneCommand::Apply { dry_run } => {
            let changes = tuner.apply(dry_run)?;
            if changes.is_empty() {
                println!(
                    "nothing to change: every setting present matches the {} profile",
                    a.profile
                );
                return Ok(true);
            }
            let mut ok = true;
            for c in &changes {
                let (verb, extra) = match &c.outcome {
                    Outcome::Done => ("set", String::new()),
                    Outcome::WouldDo => ("would set", String::new()),
                    Outcome::Manual(what) => ("by hand", format!(": {what}")),
                    Outcome::Failed(why) => {
                        ok = false;
                        ("FAILED", format!(": {why}"))
                    }
                };
                println!(
                    "{verb:<10} {} {}: {} → {}{extra}",
                    c.id, c.target, c.from, c.to
                );
            }
            if !dry_run {
                println!(
                    "previous values recorded in {}; `ringmq tune revert` restores them",
                    state_shown.display()
                );
            }
            Ok(ok)
        }
        TuneCommand::Revert { dry_run } => {
            let Some(changes) = tuner.revert(dry_run)? else {
                println!(
                    "nothing to revert: no recorded state (apply has not run, or was reverted)"
                );
                return Ok(true);
            };
            let mut ok = true;
            for c in &changes {
                let verb = match &c.outcome {
                    Outcome::Done => "restored".to_string(),
                    Outcome::WouldDo => "would restore".to_string(),
                    Outcome::Manual(m) => format!("by hand ({m})"),
                    Outcome::Failed(why) => {
                        ok = false;
                        format!("FAILED ({why})")
                    }
                };
                println!("{verb:<14} {} = {}", c.target, c.to);
            }
            Ok(ok)
        }
        TuneCommand::Explain => {
            for s in ringmq_tuning::settings::all() {
                println!(
                    "{} ({})\n  {}: {}\n  what:   {}\n  why:    {}\n  source: {}\n",
                    s.id,
                    if s.path.is_empty() { "-" } else { &s.path },
                    a.profile,
                    s.value(a.profile).unwrap_or("- (left as it is)"),
                    s.what,
                    s.why,
                    s.source
                );
            }
            Ok(true)
        }
    };
    r
}
