//! The blocking wrapper, for programs without an async runtime.
//!
//! ```sh
//! cargo run -p ringmq-client --example blocking -- 127.0.0.1:9093
//! ```

use ringmq_client::Position;
use ringmq_client::blocking::BlockingClient;

fn main() -> Result<(), ringmq_client::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9093".into());
    let c = BlockingClient::connect(&addr)?;
    if !c.list_topics()?.contains(&"blocking-example".to_string()) {
        c.create_topic("blocking-example", 1)?;
    }
    let at = c.send_all(
        "blocking-example",
        &[
            (None, b"first".to_vec()),
            (Some(b"k".to_vec()), b"second".to_vec()),
        ],
    )?;
    println!("acknowledged at {at:?}");
    for r in c.read("blocking-example", 0, Position::Offset(at[0].1), 10)? {
        println!(
            "{} {:?}",
            r.offset,
            String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
        );
    }
    Ok(())
}
