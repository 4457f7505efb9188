//! A member of a consumer group: prints what it reads from its partitions, committing
//! every 5 s. Start it two or three times to see the partitions shared; stop one
//! (Ctrl-C leaves the group) and the others take its partitions.
//!
//! ```sh
//! cargo run --release -- serve &                         # a broker on 127.0.0.1:9093
//! cargo run --release -- topic create example --partitions 6
//! cargo run -p ringmq-client --example group -- 127.0.0.1:9093 example-group example
//! ```

use ringmq_client::{Client, Error, GroupConfig, GroupConsumer};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9093".into());
    let group = args.next().unwrap_or_else(|| "example-group".into());
    let topic = args.next().unwrap_or_else(|| "example".into());
    let client = Client::connect(&addr).await?;
    let config = GroupConfig {
        assignor: "sticky".into(),
        ..GroupConfig::default()
    };
    let mut member = GroupConsumer::join(client, &group, &[&topic], config).await?;
    println!(
        "member {} of {group}, generation {}: {:?}",
        member.member_id(),
        member.generation(),
        member.assignment()
    );
    let mut generation = member.generation();
    loop {
        tokio::select! {
            records = member.poll() => {
                for r in records? {
                    println!("{} {} {:?}", r.partition, r.offset, r.value);
                }
                if member.generation() != generation {
                    generation = member.generation();
                    println!("generation {generation}: {:?}", member.assignment());
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    member.close().await
}
