//! Creates a topic, produces keyed records and reads them back.
//!
//! ```sh
//! cargo run --release -- serve &                         # a broker on 127.0.0.1:9093
//! cargo run -p ringmq-client --example produce_consume -- 127.0.0.1:9093
//! ```

use ringmq_client::{
    Admin, Client, Consumer, Error, ErrorCode, Position, Producer, ProducerConfig,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9093".into());
    let client = Client::connect(&addr).await?;
    match Admin::new(client.clone())
        .create_topic("example", 3, &[])
        .await
    {
        Ok(())
        | Err(Error::Broker {
            code: ErrorCode::TopicExists,
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..10 {
        let key = format!("user-{}", i % 3);
        let headers = vec![("origin".to_string(), b"example".to_vec())];
        let at = producer
            .send(
                "example",
                Some(key.as_bytes()),
                format!("event {i}").as_bytes(),
                &headers,
            )
            .await?;
        println!("sent {key} -> partition {} offset {}", at.0, at.1);
        acks.push(at);
    }
    producer.close().await?;

    let mut consumer = Consumer::new(client);
    for p in 0..3 {
        consumer.assign("example", p, Position::Earliest).await?;
    }
    let records = consumer.poll().await?;
    for r in &records {
        println!(
            "read partition {} offset {} key {:?} value {:?}",
            r.partition,
            r.offset,
            r.key.as_deref().map(String::from_utf8_lossy),
            r.value.as_deref().map(String::from_utf8_lossy)
        );
    }
    Ok(())
}
