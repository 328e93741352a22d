//! Real processes on loopback: `gpuaas-coordinator serve`, `gpuaas-agent enroll/run`,
//! `gpuaas-coordinator dev` and `gpuaasctl`, driven the way an operator would.
//!
//! The binaries are the ones `cargo test --workspace` builds into the target directory.

mod support;

use std::time::Duration;

use support::{Cluster, agent_config, bin, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_three_kill_one_restart_coordinator() {
    let mut cluster = Cluster::start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.enrol_and_run_agent(i).await);
    }
    let api = cluster.api();
    wait_for("three nodes Ready", Duration::from_secs(30), || async {
        let nodes = api.nodes().await;
        nodes.len() == 3 && nodes.iter().all(|n| n["status"] == "ready")
    })
    .await;
    let nodes = api.nodes().await;
    for node in &nodes {
        assert_eq!(
            node["inventory"]["gpus"].as_array().map(Vec::len),
            Some(2),
            "{node}"
        );
        assert_eq!(node["inventory"]["gpus"][0]["model"], "H100-80GB");
        assert!(
            node["clock_skew_ms"]
                .as_i64()
                .is_some_and(|s| s.abs() < 5_000),
            "{node}"
        );
    }
    // Heartbeats (every second here) report the GPUs the agent sees.
    wait_for(
        "heartbeats report two visible GPUs",
        Duration::from_secs(10),
        || async { api.nodes().await.iter().all(|n| n["gpus_visible"] == 2) },
    )
    .await;

    // Kill one agent: its node turns NotReady within the node timeout (3 s here).
    cluster.kill_agent(0);
    let dead = ids[0].clone();
    wait_for(
        "killed agent's node NotReady",
        Duration::from_secs(20),
        || async { api.node(&dead).await["status"] == "not_ready" },
    )
    .await;
    for id in &ids[1..] {
        assert_eq!(api.node(id).await["status"], "ready");
    }

    // Restart the coordinator: the live agents reconnect on their own, same identities.
    cluster.restart_coordinator().await;
    let api = cluster.api();
    wait_for(
        "live agents reconnected",
        Duration::from_secs(40),
        || async {
            let mut ok = true;
            for id in &ids[1..] {
                ok &= api.node(id).await["status"] == "ready";
            }
            ok
        },
    )
    .await;
    assert_eq!(api.node(&dead).await["status"], "not_ready");

    // The killed agent comes back with its identity and its node is Ready again.
    cluster.run_agent(0);
    wait_for(
        "restarted agent's node Ready",
        Duration::from_secs(30),
        || async { api.node(&dead).await["status"] == "ready" },
    )
    .await;
    let listed: Vec<String> = api
        .nodes()
        .await
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect();
    let mut expected = ids.clone();
    expected.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(
        listed_sorted, expected,
        "same node identities after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpuaasctl_manages_tokens_and_nodes() {
    let mut cluster = Cluster::start().await;
    let id = cluster.enrol_and_run_agent(0).await;
    let api = cluster.api();
    wait_for("node Ready", Duration::from_secs(30), || async {
        api.node(&id).await["status"] == "ready"
    })
    .await;

    // Enrolling a host that already has an identity is refused, and the identity is kept.
    let (ok, stderr) = cluster.enrol_again(0).await;
    assert!(
        !ok && stderr.contains("already holds a node identity"),
        "{stderr}"
    );
    assert_eq!(api.nodes().await.len(), 1, "no second node was created");

    let list = cluster.ctl(&["node", "list", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&list).expect("json output");
    assert_eq!(json["nodes"][0]["id"], id.as_str(), "{json}");
    let table = cluster.ctl(&["node", "list"]).await;
    assert!(table.contains(&id) && table.contains("ready"), "{table}");
    let token = cluster.ctl(&["token", "create", "-o", "json"]).await;
    let token: serde_json::Value = serde_json::from_str(&token).expect("json output");
    assert!(
        token["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("gpuaas1.")),
        "{token}"
    );

    cluster.ctl(&["node", "delete", &id]).await;
    wait_for("deleted node gone", Duration::from_secs(10), || async {
        api.nodes().await.is_empty()
    })
    .await;
    // The agent's session was ended and its certificate is refused from now on.
    assert!(cluster.agent_exits_within(0, Duration::from_secs(20)).await);
    let err = cluster.ctl_fails(&["node", "get", &id]).await;
    assert!(err.contains("not_found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_files_stop_the_processes_and_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "heartbeat_secs = 5\n").expect("write");
    let out = tokio::process::Command::new(bin("gpuaas-coordinator"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .await
        .expect("run coordinator");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("heartbeat_secs"), "{stderr}");

    std::fs::write(&bad, "backend = \"sim\"\nkeep_alive_secs = 0\n").expect("write");
    let out = tokio::process::Command::new(bin("gpuaas-agent"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .await
        .expect("run agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keep_alive_secs"), "{stderr}");

    // An agent without an identity says how to enrol.
    std::fs::write(&bad, agent_config(&dir.path().join("state"), "127.0.0.1:1")).expect("write");
    let out = tokio::process::Command::new(bin("gpuaas-agent"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .await
        .expect("run agent");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("enrol first"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_runs_a_cluster_and_stops_on_ctrl_c() {
    support::dev_mode_round_trip(2).await;
}
