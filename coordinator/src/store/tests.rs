//! Store tests against real SQLite files in temporary directories.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gpuaas_proto::ids::{NodeId, TokenId};
use gpuaas_proto::inventory::{GpuInfo, Inventory, MigState};
use rusqlite::Connection;
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};

use super::writer::Job;
use super::*;

const SECRET: [u8; 32] = [7; 32];
const EXPIRES: i64 = 10_000;

fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state.db")).unwrap();
    (dir, store)
}

fn token(n: u64) -> TokenId {
    TokenId::from_raw(n)
}

fn node(n: u64) -> NodeId {
    NodeId::from_raw(0xabc0_0000 + n)
}

fn create_token(id: TokenId) -> Command {
    Command::CreateEnrollmentToken {
        id,
        secret_sha256: SECRET,
        description: format!("token {id}"),
        created_at_ms: 1_000,
        expires_at_ms: EXPIRES,
    }
}

fn enroll(token_id: TokenId, secret: [u8; 32], now_ms: i64, node_id: NodeId) -> Command {
    Command::Enroll {
        token_id,
        secret_sha256: secret,
        now_ms,
        node_id,
        hostname: "gpu-01".to_owned(),
        agent_version: "0.1.0".to_owned(),
        cert_serial: vec![1, 2, 3],
        cert_not_after_ms: 99_000,
    }
}

fn inventory() -> Inventory {
    Inventory {
        hostname: "gpu-01.example".to_owned(),
        cpu_cores: 64,
        memory_mib: 512 * 1024,
        gpus: vec![GpuInfo {
            index: 0,
            uuid: "GPU-00000000-0000-0000-0000-000000000001".to_owned(),
            model: "H100-80GB".to_owned(),
            nvml_name: "NVIDIA H100 80GB HBM3".to_owned(),
            memory_mib: 81_559,
            pci_bus_id: "0000:3b:00.0".to_owned(),
            minor: 0,
            numa_node: Some(0),
            mig: MigState::UNSUPPORTED,
        }],
    }
}

/// Creates a token and enrolls `node_id` with it.
async fn enrolled(store: &Store, n: u64) -> NodeId {
    store.execute(create_token(token(n))).await.unwrap();
    store
        .execute(enroll(token(n), SECRET, 2_000, node(n)))
        .await
        .unwrap();
    node(n)
}

fn refusal(result: Result<Outcome, StoreError>) -> ApplyError {
    match result {
        Err(StoreError::Apply(e)) => {
            assert!(e.is_refusal(), "{e}");
            e
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn fresh_conn_sees_token(path: &Path, id: TokenId) -> bool {
    let conn = Connection::open(path).unwrap();
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM enrollment_tokens WHERE id = ?1)",
        [id.to_string()],
        |row| row.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_are_group_committed_and_acked_after_commit() {
    const N: u64 = 1_000;
    let (_dir, store) = temp_store();
    let path = Arc::new(store.path().to_path_buf());
    let start = Arc::new(tokio::sync::Barrier::new(usize::try_from(N).unwrap()));
    let mut tasks = Vec::new();
    for n in 0..N {
        let exec = store.execute(create_token(token(n)));
        let (start, path) = (Arc::clone(&start), Arc::clone(&path));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            exec.await.unwrap();
            // Acknowledged, so a connection that has nothing to do with the store sees it.
            tokio::task::spawn_blocking(move || fresh_conn_sees_token(&path, token(n)))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert!(
            task.await.unwrap(),
            "an acknowledged command is not visible"
        );
    }
    let stats = store.stats();
    assert_eq!(stats.commands, N);
    assert!(stats.commits < 100, "no grouping: {stats:?}");
    assert_eq!(stats.failed_batches, 0);
}

#[tokio::test]
async fn write_connection_is_wal_with_synchronous_full() {
    let (_dir, store) = temp_store();
    let settings = store.write_settings().await.unwrap();
    assert_eq!(settings.journal_mode, "wal");
    assert_eq!(settings.synchronous, 2, "synchronous must be FULL");
    assert!(settings.foreign_keys);
    assert_eq!(
        settings.busy_timeout_ms,
        i64::try_from(BUSY_TIMEOUT.as_millis()).unwrap()
    );
}

#[tokio::test]
async fn read_connections_cannot_write() {
    let (_dir, store) = temp_store();
    let err = store
        .read(|conn| {
            conn.execute("DELETE FROM nodes", [])
                .map_err(|source| StoreError::Read {
                    query: ReadQuery::ListNodes,
                    source,
                })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Read { .. }), "{err}");
}

#[test]
fn fresh_database_gets_latest_schema_and_reopening_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    for _ in 0..2 {
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        assert_eq!(schema::current_version(&conn).unwrap(), SCHEMA_VERSION);
        let rows: u32 = conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, SCHEMA_VERSION, "each migration recorded once");
    }
}

#[test]
fn older_database_is_upgraded_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut conn = writer::open_write_connection(&path).unwrap();
    assert_eq!(schema::migrate(&mut conn, &path, 1).unwrap(), 1);
    conn.execute(
        "INSERT INTO nodes (id, hostname, agent_version, enrolled_at_ms, cert_serial,
             cert_not_after_ms) VALUES ('node-00000000000000aa', 'h', 'v', 1, x'01', 2)",
        [],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    let kept = store
        .read_blocking(|c| read::get_node(c, NodeId::from_raw(0xaa)))
        .unwrap();
    assert_eq!(kept.unwrap().hostname, "h");
    assert_eq!(store.read_blocking(read::count_api_tokens).unwrap(), 0);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(Store::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute("INSERT INTO schema_version (version) VALUES (99)", [])
        .unwrap();
    drop(conn);
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("99") && message.contains("state.db"),
        "{message}"
    );
}

#[tokio::test]
async fn enroll_refuses_unknown_wrong_expired_and_used_tokens() {
    let (_dir, store) = temp_store();
    store.execute(create_token(token(1))).await.unwrap();

    let unknown = refusal(
        store
            .execute(enroll(token(9), SECRET, 2_000, node(1)))
            .await,
    );
    assert!(matches!(unknown, ApplyError::TokenInvalid { token_id } if token_id == token(9)));
    let wrong = refusal(
        store
            .execute(enroll(token(1), [0; 32], 2_000, node(1)))
            .await,
    );
    assert!(matches!(wrong, ApplyError::TokenInvalid { .. }));
    assert_eq!(unknown.to_string().replace("9", "1"), wrong.to_string());
    let expired = refusal(
        store
            .execute(enroll(token(1), SECRET, EXPIRES, node(1)))
            .await,
    );
    assert!(matches!(
        expired,
        ApplyError::TokenExpired {
            now_ms: EXPIRES,
            ..
        }
    ));

    store
        .execute(enroll(token(1), SECRET, EXPIRES - 1, node(1)))
        .await
        .unwrap();
    let used = refusal(
        store
            .execute(enroll(token(1), SECRET, 3_000, node(2)))
            .await,
    );
    assert!(matches!(used, ApplyError::TokenUsed { .. }), "{used}");

    let record = store
        .read(|c| read::get_token(c, token(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.used_at_ms, Some(EXPIRES - 1));
    assert_eq!(record.used_by_node, Some(node(1)));
    let enrolled = store
        .read(|c| read::get_node(c, node(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(enrolled.enrolled_at_ms, EXPIRES - 1);
    assert!(
        store
            .read(|c| read::get_node(c, node(2)))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_enrolls_with_one_token_one_wins() {
    let (_dir, store) = temp_store();
    store.execute(create_token(token(1))).await.unwrap();
    let a = tokio::spawn(store.execute(enroll(token(1), SECRET, 2_000, node(1))));
    let b = tokio::spawn(store.execute(enroll(token(1), SECRET, 2_000, node(2))));
    let results = [a.await.unwrap(), b.await.unwrap()];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let loser = results.into_iter().find(Result::is_err).unwrap();
    assert!(matches!(refusal(loser), ApplyError::TokenUsed { .. }));
    assert_eq!(store.read(read::list_nodes).await.unwrap().len(), 1);
}

/// Waits (up to 10 s) until `cond` holds.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Jobs in the queue, not yet taken by the writer.
fn queued(store: &Store) -> usize {
    writer::QUEUE_CAPACITY - store.queue.capacity()
}

/// `execute` futures that still hold a sender, i.e. have not put their job in the queue yet.
fn unsent(store: &Store) -> usize {
    store.queue.strong_count() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_command_does_not_roll_back_its_batch_mates() {
    let (_dir, store) = temp_store();
    store.execute(create_token(token(1))).await.unwrap();
    // Hold the write lock from another connection, so that the writer, once it has taken
    // `first`, waits in BEGIN while the next commands queue up behind it.
    let blocker = Connection::open(store.path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let first = tokio::spawn(store.execute(create_token(token(2))));
    wait_until("the writer took the first command", || {
        unsent(&store) == 0 && queued(&store) == 0
    })
    .await;
    let before = store.stats();
    let mates = [
        tokio::spawn(store.execute(create_token(token(3)))),
        tokio::spawn(store.execute(create_token(token(1)))), // duplicate id: refused
        tokio::spawn(store.execute(create_token(token(4)))),
    ];
    wait_until("three commands are queued", || {
        unsent(&store) == 0 && queued(&store) == 3
    })
    .await;
    blocker.execute_batch("ROLLBACK").unwrap();
    first.await.unwrap().unwrap();
    let [ok_a, refused, ok_b] = mates;
    ok_a.await.unwrap().unwrap();
    let err = refusal(refused.await.unwrap());
    assert!(matches!(err, ApplyError::TokenIdTaken { token_id } if token_id == token(1)));
    ok_b.await.unwrap().unwrap();
    let after = store.stats();
    assert_eq!(after.commits - before.commits, 2, "{before:?} -> {after:?}");
    assert_eq!(after.refused, 1);
    for n in [2, 3, 4] {
        assert!(fresh_conn_sees_token(store.path(), token(n)));
    }
}

#[tokio::test]
async fn failed_commit_acknowledges_nothing_and_the_writer_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut conn = writer::open_write_connection(&path).unwrap();
    schema::migrate(&mut conn, &path, SCHEMA_VERSION).unwrap();
    // A deferred foreign key that a "poison" token violates: SQLite refuses the COMMIT.
    conn.execute_batch(
        "CREATE TABLE poison (node TEXT REFERENCES nodes (id) DEFERRABLE INITIALLY DEFERRED);
         CREATE TRIGGER poison_commit AFTER INSERT ON enrollment_tokens
             WHEN NEW.description = 'poison'
         BEGIN INSERT INTO poison VALUES ('node-ffffffffffffffff'); END;",
    )
    .unwrap();
    // Queue the batch before the writer starts, so it takes all three at once.
    let (queue, jobs) = mpsc::channel(writer::QUEUE_CAPACITY);
    let mut answers = Vec::new();
    for (n, description) in [(1, "ok"), (2, "poison"), (3, "ok")] {
        let (reply, answer) = oneshot::channel();
        let cmd = Command::CreateEnrollmentToken {
            id: token(n),
            secret_sha256: SECRET,
            description: description.to_owned(),
            created_at_ms: 1,
            expires_at_ms: 2,
        };
        assert!(queue.try_send(Job::Command { cmd, reply }).is_ok());
        answers.push(answer);
    }
    let counters = Arc::new(writer::Counters::default());
    let handle = writer::spawn(conn, jobs, Arc::clone(&counters)).unwrap();
    for answer in answers {
        let err = answer.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::BatchFailed {
                    stage: BatchStage::Commit,
                    commands: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    for n in 1..=3 {
        assert!(
            !fresh_conn_sees_token(&path, token(n)),
            "token {n} was applied"
        );
    }
    let (reply, answer) = oneshot::channel();
    let cmd = create_token(token(4));
    assert!(queue.send(Job::Command { cmd, reply }).await.is_ok());
    answer.await.unwrap().unwrap();
    assert!(fresh_conn_sees_token(&path, token(4)));
    assert_eq!(counters.failed_batches.load(Ordering::Relaxed), 1);
    assert_eq!(counters.commits.load(Ordering::Relaxed), 1);
    drop(queue);
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn deleted_node_is_inactive_and_listed_as_revoked() {
    let (_dir, store) = temp_store();
    let keep = enrolled(&store, 1).await;
    let gone = enrolled(&store, 2).await;
    let delete = |deleted_at_ms| Command::DeleteNode {
        node_id: gone,
        deleted_at_ms,
    };
    store.execute(delete(5_000)).await.unwrap();
    assert!(
        !store
            .read(move |c| read::node_is_active(c, gone))
            .await
            .unwrap()
    );
    assert!(
        store
            .read(move |c| read::node_is_active(c, keep))
            .await
            .unwrap()
    );
    assert_eq!(
        store.read(read::deleted_node_ids).await.unwrap(),
        vec![gone]
    );
    let listed: Vec<NodeId> = store
        .read(read::list_nodes)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(listed, vec![keep]);
    let row = store.read(move |c| read::get_node(c, gone)).await.unwrap();
    assert_eq!(row.unwrap().deleted_at_ms, Some(5_000));

    let again = refusal(store.execute(delete(6_000)).await);
    assert!(matches!(again, ApplyError::NodeNotFound { node_id } if node_id == gone));
    for cmd in [
        Command::RecordSeen {
            node_id: gone,
            seen_at_ms: 1,
            clock_skew_ms: 0,
        },
        Command::RenewCertificate {
            node_id: gone,
            cert_serial: vec![9],
            cert_not_after_ms: 1,
        },
        Command::DeleteNode {
            node_id: node(77),
            deleted_at_ms: 1,
        },
    ] {
        let err = refusal(store.execute(cmd).await);
        assert!(matches!(err, ApplyError::NodeNotFound { .. }), "{err}");
    }
}

#[tokio::test]
async fn hello_seen_and_renewal_update_the_node() {
    let (_dir, store) = temp_store();
    let id = enrolled(&store, 1).await;
    let hello = |node_id| Command::RecordHello {
        node_id,
        agent_version: "0.2.0".to_owned(),
        inventory: inventory(),
        seen_at_ms: 3_000,
        clock_skew_ms: -12,
    };
    store.execute(hello(id)).await.unwrap();
    let err = refusal(store.execute(hello(node(50))).await);
    assert!(err.to_string().contains(&node(50).to_string()), "{err}");
    store
        .execute(Command::RecordSeen {
            node_id: id,
            seen_at_ms: 4_000,
            clock_skew_ms: 3,
        })
        .await
        .unwrap();
    store
        .execute(Command::RenewCertificate {
            node_id: id,
            cert_serial: vec![4, 5],
            cert_not_after_ms: 200_000,
        })
        .await
        .unwrap();
    let n = store
        .read(move |c| read::get_node(c, id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.hostname, "gpu-01.example");
    assert_eq!(n.agent_version, "0.2.0");
    assert_eq!(n.inventory, Some(inventory()));
    assert_eq!((n.last_seen_at_ms, n.clock_skew_ms), (Some(4_000), Some(3)));
    assert_eq!((n.cert_serial, n.cert_not_after_ms), (vec![4, 5], 200_000));
}

#[tokio::test]
async fn api_tokens_have_unique_names_and_are_found_by_hash() {
    let (_dir, store) = temp_store();
    let api = |name: &str, sha256| Command::CreateApiToken {
        name: name.to_owned(),
        sha256,
        role: "admin".to_owned(),
        created_at_ms: 1_000,
    };
    store.execute(api("ops", [1; 32])).await.unwrap();
    let taken = refusal(store.execute(api("ops", [2; 32])).await);
    assert!(matches!(&taken, ApplyError::NameTaken { name } if name == "ops"));
    let same_hash = refusal(store.execute(api("other", [1; 32])).await);
    assert!(matches!(same_hash, ApplyError::ApiTokenHashTaken { .. }));
    let found = store
        .read(|c| read::api_token_by_hash(c, &[1; 32]))
        .await
        .unwrap();
    assert_eq!(
        found.map(|t| (t.name, t.role)),
        Some(("ops".into(), "admin".into()))
    );
    assert!(
        store
            .read(|c| read::api_token_by_hash(c, &[2; 32]))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.read(read::count_api_tokens).await.unwrap(), 1);
}

#[tokio::test]
async fn data_survives_close_and_reopen() {
    let (dir, store) = temp_store();
    let id = enrolled(&store, 1).await;
    store.close().await.unwrap();
    let store = Store::open(dir.path().join("state.db")).unwrap();
    assert!(
        store
            .read(move |c| read::node_is_active(c, id))
            .await
            .unwrap()
    );
    let tok = store.read(|c| read::get_token(c, token(1))).await.unwrap();
    assert_eq!(tok.unwrap().used_by_node, Some(id));
}

#[tokio::test]
async fn dropping_the_store_fails_nothing_already_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state.db")).unwrap();
    let pending = store.execute(create_token(token(1)));
    drop(store);
    pending.await.unwrap();
    assert!(fresh_conn_sees_token(
        &dir.path().join("state.db"),
        token(1)
    ));
}

#[test]
fn apply_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let commands = [
        create_token(token(1)),
        enroll(token(1), SECRET, 2_000, node(1)),
        enroll(token(1), SECRET, 2_001, node(2)), // refused
        Command::RecordHello {
            node_id: node(1),
            agent_version: "0.2.0".to_owned(),
            inventory: inventory(),
            seen_at_ms: 3_000,
            clock_skew_ms: 4,
        },
        Command::DeleteNode {
            node_id: node(1),
            deleted_at_ms: 4_000,
        },
    ];
    let dumps: Vec<String> = ["a.db", "b.db"]
        .iter()
        .map(|name| {
            let path = dir.path().join(name);
            let mut conn = writer::open_write_connection(&path).unwrap();
            schema::migrate(&mut conn, &path, SCHEMA_VERSION).unwrap();
            for cmd in &commands {
                let sp = conn.savepoint().unwrap();
                if apply(&sp, cmd).is_ok() {
                    sp.commit().unwrap();
                }
            }
            let dump = "SELECT group_concat(quote(n.id) || quote(n.inventory_json) ||
                 quote(n.deleted_at_ms) || quote(t.used_by_node) || quote(t.used_at_ms), '|')
                 FROM nodes n JOIN enrollment_tokens t";
            conn.query_row(dump, [], |r| r.get(0)).unwrap()
        })
        .collect();
    assert_eq!(dumps[0], dumps[1]);
    assert!(dumps[0].contains("node-00000000abc00001"), "{}", dumps[0]);
}
