//! The limit the PostgreSQL sink is measured against (`scripts/sinks_bench.py`): a plain
//! `tokio-postgres` loop inserting rows with the sink's statement shape, in the sink's batch
//! size — each batch one transaction of pipelined executes of one prepared statement. Reads
//! `PG_LOOP_URL` (`postgres://…`), `PG_LOOP_ROWS`, `PG_LOOP_BATCH`; prints one JSON line. Without
//! `PG_LOOP_URL` it prints how to run it and exits (so `cargo bench` passes on any machine).

use std::time::Instant;

use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let Ok(url) = std::env::var("PG_LOOP_URL") else {
        println!("pg_loop: set PG_LOOP_URL (see scripts/sinks_bench.py)");
        return;
    };
    let rows = env_number("PG_LOOP_ROWS", 100_000) as i64;
    let batch = env_number("PG_LOOP_BATCH", 100).max(1) as i64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (mut client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("connects");
        tokio::spawn(connection);
        let statement = client
            .prepare(
                "INSERT INTO loop_rows(id, topic, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .await
            .expect("prepares");
        let body = "{\"a\": 1, \"b\": 1, \"h\": \"0123456789abcdef0123456789abcdef\"}".to_string();
        let started = Instant::now();
        let mut id = 0i64;
        while id < rows {
            let tx = client.transaction().await.expect("transaction");
            let end = (id + batch).min(rows);
            let topics: Vec<String> = (id..end).map(|i| format!("bench/{}", i % 10)).collect();
            let ids: Vec<i64> = (id..end).collect();
            let runs = ids.iter().zip(&topics).map(|(i, t)| {
                let params: [&(dyn ToSql + Sync); 3] = [i, t, &body];
                let (tx, statement) = (&tx, &statement);
                async move { tx.execute(statement, &params).await }
            });
            futures_util::future::try_join_all(runs)
                .await
                .expect("inserts");
            tx.commit().await.expect("commits");
            id = end;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{{\"rows\": {rows}, \"batch\": {batch}, \"secs\": {secs:.3}, \"rate\": {:.1}}}",
            rows as f64 / secs
        );
    });
}
