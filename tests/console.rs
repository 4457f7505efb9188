//! The web console as a person sees it: a real broker with data, each page opened in
//! headless Chromium (Debian's `chromium`, which scripts/test installs), its rendered DOM
//! checked for the real figures (topic names, offsets, records, group lag), and a
//! screenshot of each page kept under `target/tmp/console-screenshots/`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.exists())
            })
        })
}

fn ringmq(broker: &common::Broker, args: &[&str], stdin: &str) {
    common::ringmq_cli(broker, args, stdin);
}

/// Opens `url` in headless Chromium, lets its scripts run (virtual time: the console
/// polls /metrics every 2 s), and returns the DOM; also writes a screenshot.
fn render(browser: &PathBuf, url: &str, screenshot: &PathBuf) -> String {
    let common_args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,900",
        "--virtual-time-budget=6000",
    ];
    let dom = Command::new(browser)
        .args(common_args)
        .arg("--dump-dom")
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(dom.status.success(), "chromium --dump-dom {url}");
    let shot = Command::new(browser)
        .args(common_args)
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(shot.status.success(), "chromium --screenshot {url}");
    assert!(
        std::fs::metadata(screenshot).is_ok_and(|m| m.len() > 10_000),
        "a screenshot of {url}"
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

#[test]
fn the_console_shows_the_brokers_topics_records_and_group_lag() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: scripts/test installs it (Debian's chromium package)"
        );
        eprintln!("SKIPPED: no chromium on PATH (scripts/test installs Debian's chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Broker::start_with(dir.path(), 2);
    ringmq(
        &broker,
        &["topic", "create", "orders", "--partitions", "3"],
        "",
    );
    let lines: String = (1..=600).map(|i| format!("k|value-{i}\n")).collect();
    // One key: every record in one partition.
    ringmq(
        &broker,
        &[
            "produce",
            "orders",
            "--key-separator",
            "|",
            "--header",
            "src=cli",
        ],
        &lines,
    );
    ringmq(
        &broker,
        &["consume", "orders", "--group", "billing", "--count", "200"],
        "",
    );
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let base = format!("http://{}/", broker.admin);
    // (page, fragment, what its DOM must hold)
    let pages: &[(&str, &str, &[&str])] = &[
        (
            "overview",
            "#/overview",
            &["Overview", "Partitions</div><div class=\"value\">3<"],
        ),
        (
            "topics",
            "#/topics",
            &["#/topics/orders\">orders</a>", ">600<"],
        ),
        (
            "topic",
            "#/topics/orders",
            &["Topic orders", ">600<", "High watermark"],
        ),
        (
            "messages",
            "#/messages?topic=orders&partition=", // completed below with the partition
            &["value-600", "src=cli", "showing 5 from offset 595"],
        ),
        (
            "groups",
            "#/groups",
            &["#/groups/billing\">billing</a>", ">400<"],
        ),
        (
            "group",
            "#/groups/billing",
            &["id=\"group-lag\">400<", ">200<", ">600<"],
        ),
        ("shards", "#/shards", &["Shards", "Produce req/s"]),
        ("cluster", "#/cluster", &["A single node"]),
    ];
    // The partition the key went to: the one with records.
    let partition = {
        let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["consume", "orders", "--format", "json", "--count", "1"])
            .env("RINGMQ_BROKERS", broker.addr.to_string())
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap())
                .unwrap();
        v["partition"].as_u64().unwrap()
    };
    for (name, fragment, wants) in pages {
        let fragment = if *name == "messages" {
            format!("{fragment}{partition}&limit=5")
        } else {
            fragment.to_string()
        };
        let shot = shots.join(format!("{name}.png"));
        let dom = render(&browser, &format!("{base}{fragment}"), &shot);
        // What the page shows: the DOM without the script (whose templates hold the
        // page's words too).
        let dom = match (dom.find("<script>"), dom.rfind("</script>")) {
            (Some(a), Some(b)) if a < b => format!("{}{}", &dom[..a], &dom[b..]),
            _ => dom,
        };
        assert!(
            !dom.contains("class=\"error\""),
            "{name}: the page shows an error:\n{dom}"
        );
        for want in *wants {
            assert!(
                dom.contains(want),
                "{name}: no {want:?} in the page:\n{dom}"
            );
        }
    }
    eprintln!("console screenshots: {}", shots.display());
    broker.stop();
}
