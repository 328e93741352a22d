//! Which nodes are connected and alive, kept in memory.
//!
//! Liveness comes from two signals: the QUIC connection (keep-alive and idle timeout; a closed
//! connection is known at once) and the agent's status heartbeats. A node is `Ready` while it
//! has a session and was heard from within the node timeout, `NotReady` otherwise. The rule is
//! the pure function [`liveness`]; the registry only records timestamps, so every transition
//! can be tested with times passed in. Heartbeats never touch the store: only the Hello of a
//! session and its end are written there.

use std::collections::HashMap;
use std::sync::Mutex;

use gpuaas_proto::NodeId;
use serde::Serialize;

/// A node's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Connected and heard from within the timeout.
    Ready,
    /// Disconnected, or silent for longer than the timeout.
    NotReady,
}

/// The liveness rule: ready while a session is open and the node was heard within `timeout_ms`.
pub fn liveness(
    connected: bool,
    last_heard_ms: Option<i64>,
    now_ms: i64,
    timeout_ms: i64,
) -> NodeStatus {
    match last_heard_ms {
        Some(heard) if connected && now_ms.saturating_sub(heard) < timeout_ms => NodeStatus::Ready,
        _ => NodeStatus::NotReady,
    }
}

/// What the registry knows of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveView {
    /// Current liveness.
    pub status: NodeStatus,
    /// When the node was last heard from, unix ms.
    pub last_heard_ms: Option<i64>,
    /// Agent clock minus coordinator clock at the last message, ms.
    pub clock_skew_ms: Option<i64>,
    /// GPUs the agent's backend listed in its last heartbeat.
    pub gpus_visible: Option<u32>,
}

/// Something that can end a node's session: the QUIC connection in production.
pub trait SessionCloser: Send + Sync + std::fmt::Debug {
    /// Closes the session with an application close code and a reason.
    fn close_session(&self, code: u32, reason: &[u8]);
}

impl SessionCloser for quinn::Connection {
    fn close_session(&self, code: u32, reason: &[u8]) {
        self.close(code.into(), reason);
    }
}

#[derive(Debug)]
struct Entry {
    session: Option<(u64, Box<dyn SessionCloser>)>,
    last_heard_ms: i64,
    skew_ms: i64,
    gpus_visible: Option<u32>,
    reported: NodeStatus,
}

/// The in-memory node registry.
#[derive(Debug)]
pub struct Registry {
    timeout_ms: i64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_session: u64,
    nodes: HashMap<NodeId, Entry>,
}

impl Registry {
    /// A registry that marks a node NotReady after `timeout_ms` of silence.
    pub fn new(timeout_ms: i64) -> Self {
        Self {
            timeout_ms,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a new session of `node`; an older session of the same node is closed. Returns
    /// the session's number, which later calls use so a stale session cannot touch a new one.
    pub fn connected(
        &self,
        node: NodeId,
        conn: Box<dyn SessionCloser>,
        now_ms: i64,
        skew_ms: i64,
    ) -> u64 {
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        let entry = inner.nodes.entry(node).or_insert(Entry {
            session: None,
            last_heard_ms: now_ms,
            skew_ms,
            gpus_visible: None,
            reported: NodeStatus::NotReady,
        });
        if let Some((_, old)) = entry.session.replace((session, conn)) {
            old.close_session(
                gpuaas_proto::messages::close_code::REPLACED,
                b"replaced by a newer session",
            );
        }
        entry.last_heard_ms = now_ms;
        entry.skew_ms = skew_ms;
        session
    }

    /// Records a message from `node`'s session `session` (a stale session is ignored), with
    /// the visible GPU count a heartbeat carries. Returns the count recorded before, so the
    /// caller can report a change; one lock per heartbeat.
    pub fn heard(
        &self,
        node: NodeId,
        session: u64,
        now_ms: i64,
        skew_ms: i64,
        gpus_visible: Option<u32>,
    ) -> Option<u32> {
        let mut inner = self.lock();
        let entry = inner
            .nodes
            .get_mut(&node)
            .filter(|e| e.session.as_ref().is_some_and(|(s, _)| *s == session))?;
        entry.last_heard_ms = now_ms;
        entry.skew_ms = skew_ms;
        let before = entry.gpus_visible;
        if gpus_visible.is_some() {
            entry.gpus_visible = gpus_visible;
        }
        before
    }

    /// Records the end of `node`'s session `session` (a newer session is left alone).
    pub fn disconnected(&self, node: NodeId, session: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.nodes.get_mut(&node)
            && entry.session.as_ref().is_some_and(|(s, _)| *s == session)
        {
            entry.session = None;
        }
    }

    /// Forgets `node` and closes its session, if any (node deleted).
    pub fn evict(&self, node: NodeId) {
        if let Some(entry) = self.lock().nodes.remove(&node)
            && let Some((_, conn)) = entry.session
        {
            conn.close_session(
                gpuaas_proto::messages::close_code::NODE_REVOKED,
                b"node deleted",
            );
        }
    }

    /// The liveness of `node` at `now_ms`.
    pub fn view(&self, node: NodeId, now_ms: i64) -> LiveView {
        let inner = self.lock();
        match inner.nodes.get(&node) {
            Some(e) => LiveView {
                status: liveness(
                    e.session.is_some(),
                    Some(e.last_heard_ms),
                    now_ms,
                    self.timeout_ms,
                ),
                last_heard_ms: Some(e.last_heard_ms),
                clock_skew_ms: Some(e.skew_ms),
                gpus_visible: e.gpus_visible,
            },
            None => LiveView {
                status: NodeStatus::NotReady,
                last_heard_ms: None,
                clock_skew_ms: None,
                gpus_visible: None,
            },
        }
    }

    /// Number of nodes that are Ready at `now_ms`.
    pub fn ready_count(&self, now_ms: i64) -> usize {
        let inner = self.lock();
        inner
            .nodes
            .values()
            .filter(|e| {
                liveness(
                    e.session.is_some(),
                    Some(e.last_heard_ms),
                    now_ms,
                    self.timeout_ms,
                ) == NodeStatus::Ready
            })
            .count()
    }

    /// Recomputes every node's status at `now_ms` and returns those that changed since the
    /// last sweep, so the caller can log and audit transitions.
    pub fn sweep(&self, now_ms: i64) -> Vec<(NodeId, NodeStatus)> {
        let mut inner = self.lock();
        let mut changed = Vec::new();
        for (id, e) in &mut inner.nodes {
            let status = liveness(
                e.session.is_some(),
                Some(e.last_heard_ms),
                now_ms,
                self.timeout_ms,
            );
            if status != e.reported {
                e.reported = status;
                changed.push((*id, status));
            }
        }
        changed.sort_by_key(|(id, _)| *id);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_rule() {
        assert_eq!(
            liveness(true, Some(1_000), 1_000, 15_000),
            NodeStatus::Ready
        );
        assert_eq!(
            liveness(true, Some(1_000), 15_999, 15_000),
            NodeStatus::Ready
        );
        assert_eq!(
            liveness(true, Some(1_000), 16_000, 15_000),
            NodeStatus::NotReady
        );
        assert_eq!(
            liveness(false, Some(1_000), 1_000, 15_000),
            NodeStatus::NotReady
        );
        assert_eq!(liveness(true, None, 1_000, 15_000), NodeStatus::NotReady);
    }

    #[derive(Debug, Default)]
    struct Closed(std::sync::Arc<Mutex<Vec<u32>>>);

    impl SessionCloser for Closed {
        fn close_session(&self, code: u32, _reason: &[u8]) {
            self.0.lock().unwrap().push(code);
        }
    }

    #[test]
    fn transitions_on_a_virtual_clock() {
        let reg = Registry::new(15_000);
        let node = NodeId::from_raw(7);
        let closed = Closed::default();
        let codes = closed.0.clone();
        let s1 = reg.connected(node, Box::new(closed), 0, 12);
        assert_eq!(reg.sweep(0), vec![(node, NodeStatus::Ready)]);
        assert_eq!(reg.heard(node, s1, 10_000, 15, Some(7)), None);
        assert_eq!(reg.heard(node, s1, 10_000, 15, None), Some(7));
        assert_eq!(reg.view(node, 10_000).gpus_visible, Some(7));
        assert_eq!(reg.sweep(24_999), vec![]);
        assert_eq!(reg.view(node, 24_999).clock_skew_ms, Some(15));
        assert_eq!(reg.sweep(25_000), vec![(node, NodeStatus::NotReady)]);
        // reconnect: a newer session replaces the old one, which is closed
        let s2 = reg.connected(node, Box::new(Closed::default()), 30_000, 0);
        assert_eq!(
            *codes.lock().unwrap(),
            vec![gpuaas_proto::messages::close_code::REPLACED]
        );
        assert_eq!(reg.sweep(30_000), vec![(node, NodeStatus::Ready)]);
        // the stale session's end does not disconnect the new one
        reg.disconnected(node, s1);
        assert_eq!(reg.view(node, 30_001).status, NodeStatus::Ready);
        reg.disconnected(node, s2);
        assert_eq!(reg.sweep(30_001), vec![(node, NodeStatus::NotReady)]);
        assert_eq!(reg.ready_count(30_001), 0);
    }

    #[test]
    fn unknown_node_is_not_ready() {
        let reg = Registry::new(15_000);
        let view = reg.view(NodeId::from_raw(1), 0);
        assert_eq!(view.status, NodeStatus::NotReady);
        assert_eq!(view.last_heard_ms, None);
        assert!(reg.sweep(0).is_empty());
    }
}
