//! Proves the decoder's allocation bound: decoding hostile input never makes one allocation
//! larger than [`MAX_FRAME_LEN`].
//!
//! Hostile here means a length prefix of up to `u32::MAX`, a collection or string length inside
//! the payload of up to `u64::MAX` (hand-crafted bincode varints, each checked to sit in the
//! field it claims to by decoding the same template with an honest length), and arbitrary bytes.
//!
//! # Design
//! This is its own test binary because it installs a counting `#[global_allocator]`. The
//! counters are thread-local and only armed around the measured call, so the test harness,
//! proptest and other test threads allocating at the same time do not disturb a measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gpuaas_proto::codec::LEN_PREFIX;
use gpuaas_proto::messages::{
    AgentMessage, CoordinatorFrame, CoordinatorMessage, EnrollRequest, EnrollResponse, Refusal,
    RefusalCode, Term,
};
use gpuaas_proto::{
    CodecError, Decoded, FrameDecoder, MAX_FRAME_LEN, NodeId, PROTOCOL_VERSION, encode_frame,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::DeserializeOwned;

const MAX: usize = MAX_FRAME_LEN as usize;

// ---------------------------------------------------------------------------------------------
// The counting allocator.
// ---------------------------------------------------------------------------------------------

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

/// Books one allocation (or the new size of a reallocation) made by the current thread.
fn record(size: usize) {
    // `try_with`: the allocator is also called while thread-locals are being torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            LARGEST.with(|largest| largest.set(largest.get().max(size)));
            TOTAL.with(|total| total.set(total.get().saturating_add(size)));
            COUNT.with(|count| count.set(count.get() + 1));
        }
    });
}

/// Forwards to [`System`], booking every allocation made while the current thread is armed.
struct CountingAlloc;

// SAFETY: every method forwards its arguments unchanged to `System`, so `System`'s guarantees
// are the ones callers get; the only addition is bookkeeping in const-initialised thread-locals
// of `Copy` types, which neither allocates (no re-entrancy) nor registers destructors.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// What one measured call allocated on its thread.
#[derive(Debug, Clone, Copy)]
struct Allocs {
    /// The largest single allocation (or reallocation target size), in bytes.
    largest: usize,
    /// Bytes of all allocations together (freed ones included).
    total: usize,
    /// Number of allocations.
    count: usize,
}

/// Runs `f` with the current thread's counters armed and returns what it allocated. The
/// result is dropped inside the window so that nothing it owns escapes the measurement.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Allocs) {
    LARGEST.with(|c| c.set(0));
    TOTAL.with(|c| c.set(0));
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let result = f();
    ARMED.with(|a| a.set(false));
    let allocs = Allocs {
        largest: LARGEST.with(Cell::get),
        total: TOTAL.with(Cell::get),
        count: COUNT.with(Cell::get),
    };
    (result, allocs)
}

/// Decodes `buf` as `T` under measurement and asserts the per-allocation bound.
fn decode_bounded<T: DeserializeOwned>(buf: &[u8]) -> (Result<Decoded<T>, CodecError>, Allocs) {
    let (result, allocs) = measure(|| FrameDecoder::default().decode::<T>(buf));
    assert!(
        allocs.largest <= MAX,
        "decoding {} bytes made a {}-byte allocation (limit {MAX}); {allocs:?}",
        buf.len(),
        allocs.largest
    );
    (result, allocs)
}

#[test]
fn the_counter_sees_allocations() {
    let (v, allocs) = measure(|| vec![0u8; 12_345]);
    assert_eq!(v.len(), 12_345);
    assert_eq!(allocs.largest, 12_345);
    assert_eq!(allocs.count, 1);
    let ((), nothing) = measure(|| ());
    assert_eq!(nothing.total, 0);
}

// ---------------------------------------------------------------------------------------------
// Hostile length prefixes.
// ---------------------------------------------------------------------------------------------

#[test]
fn oversized_prefix_is_refused_without_allocating() {
    for declared in [u32::MAX, u32::MAX - 1, 1 << 31, MAX_FRAME_LEN + 1] {
        // The prefix alone, and the prefix followed by a (short) body.
        let mut buf = declared.to_be_bytes().to_vec();
        for body in [0, 4096] {
            buf.resize(LEN_PREFIX + body, 0xAB);
            let (result, allocs) = decode_bounded::<AgentMessage>(&buf);
            assert!(
                matches!(result, Err(CodecError::TooLarge { len, max: MAX_FRAME_LEN })
                    if len == u64::from(declared)),
                "{declared}: {result:?}"
            );
            assert_eq!(allocs.total, 0, "{declared}: {allocs:?}");
            let (result, allocs) = decode_bounded::<CoordinatorFrame>(&buf);
            assert!(matches!(result, Err(CodecError::TooLarge { .. })));
            assert_eq!(allocs.total, 0, "{declared}: {allocs:?}");
        }
    }
}

#[test]
fn largest_allowed_prefix_waits_without_allocating() {
    let mut buf = MAX_FRAME_LEN.to_be_bytes().to_vec();
    // RenewCertificate with the start of a u64 length: nothing may be sized before it is whole.
    buf.extend_from_slice(&[2, 253, 0xff]);
    let (result, allocs) = decode_bounded::<AgentMessage>(&buf);
    assert_eq!(
        result.ok(),
        Some(Decoded::Incomplete {
            needed: LEN_PREFIX + MAX
        })
    );
    assert_eq!(allocs.total, 0);
}

// ---------------------------------------------------------------------------------------------
// Hostile lengths inside the payload.
// ---------------------------------------------------------------------------------------------

/// bincode 2 `standard()` varint: one byte below 251, else a marker and a little-endian integer.
fn varint(value: u64) -> Vec<u8> {
    if let Ok(small) = u8::try_from(value)
        && small < 251
    {
        return vec![small];
    }
    if let Ok(v) = u16::try_from(value) {
        let mut out = vec![251];
        out.extend_from_slice(&v.to_le_bytes());
        return out;
    }
    if let Ok(v) = u32::try_from(value) {
        let mut out = vec![252];
        out.extend_from_slice(&v.to_le_bytes());
        return out;
    }
    let mut out = vec![253];
    out.extend_from_slice(&value.to_le_bytes());
    out
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("short payload");
    let mut buf = len.to_be_bytes().to_vec();
    buf.extend_from_slice(payload);
    buf
}

/// A payload whose one length field is `len`, with `head` before it and `tail` after it. With
/// `len` equal to `honest_len` and the bytes `honest_body` in between, it is a valid message.
struct Template {
    name: &'static str,
    head: Vec<u8>,
    honest_len: u64,
    honest_body: Vec<u8>,
    tail: Vec<u8>,
}

impl Template {
    fn honest(&self) -> Vec<u8> {
        let mut p = self.head.clone();
        p.extend(varint(self.honest_len));
        p.extend_from_slice(&self.honest_body);
        p.extend_from_slice(&self.tail);
        frame(&p)
    }

    /// The hostile variant: the length field says `len`, followed by a few body bytes only.
    fn hostile(&self, len: u64) -> Vec<u8> {
        let mut p = self.head.clone();
        p.extend(varint(len));
        p.extend_from_slice(&self.honest_body);
        p.extend_from_slice(&self.tail);
        frame(&p)
    }
}

/// [`PROTOCOL_VERSION`] as two one-byte varints (both parts are below 251).
fn version_bytes() -> Vec<u8> {
    [PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor]
        .map(|part| u8::try_from(part).ok().filter(|b| *b < 251).expect("small"))
        .to_vec()
}

fn agent_templates() -> Vec<(Template, AgentMessage)> {
    let mut out = Vec::new();
    // RenewCertificate { csr_der }: variant 2, then the Vec<u8> length.
    out.push((
        Template {
            name: "AgentMessage::RenewCertificate.csr_der",
            head: vec![2],
            honest_len: 3,
            honest_body: vec![1, 2, 3],
            tail: vec![],
        },
        AgentMessage::RenewCertificate {
            csr_der: vec![1, 2, 3],
        },
    ));
    // Hello: variant 0, protocol, node_id 7, agent_version (String), inventory { hostname,
    // cpu_cores, memory_mib, gpus }, wall_clock_ms.
    let hello_head = {
        let mut h = vec![0];
        h.extend(version_bytes());
        h.push(7);
        h
    };
    let hello = |agent_version: &str, hostname: &str| {
        AgentMessage::Hello(gpuaas_proto::messages::Hello {
            protocol: PROTOCOL_VERSION,
            node_id: NodeId::from_raw(7),
            agent_version: agent_version.into(),
            inventory: gpuaas_proto::inventory::Inventory {
                hostname: hostname.into(),
                cpu_cores: 1,
                memory_mib: 2,
                gpus: vec![],
            },
            wall_clock_ms: 0,
        })
    };
    out.push((
        Template {
            name: "Hello.agent_version",
            head: hello_head.clone(),
            honest_len: 2,
            honest_body: b"v1".to_vec(),
            // hostname "", cpu 1, memory 2, gpus [], wall clock 0
            tail: vec![0, 1, 2, 0, 0],
        },
        hello("v1", ""),
    ));
    out.push((
        Template {
            name: "Hello.inventory.hostname",
            head: [hello_head.clone(), vec![0]].concat(),
            honest_len: 1,
            honest_body: b"h".to_vec(),
            tail: vec![1, 2, 0, 0],
        },
        hello("", "h"),
    ));
    out.push((
        Template {
            name: "Hello.inventory.gpus",
            head: [hello_head, vec![0, 0, 1, 2]].concat(),
            honest_len: 0,
            honest_body: vec![],
            tail: vec![0],
        },
        hello("", ""),
    ));
    out
}

fn coordinator_templates() -> Vec<(Template, CoordinatorFrame)> {
    vec![
        (
            Template {
                name: "CoordinatorMessage::CertificateRenewed.cert_der",
                // term 9, variant 2
                head: vec![9, 2],
                honest_len: 2,
                honest_body: vec![0xAA, 0xBB],
                tail: vec![],
            },
            CoordinatorFrame {
                term: Term(9),
                message: CoordinatorMessage::CertificateRenewed {
                    cert_der: vec![0xAA, 0xBB],
                },
            },
        ),
        (
            Template {
                name: "CoordinatorMessage::Refused.message",
                // term 9, variant 1, code 7 (Internal)
                head: vec![9, 1, 7],
                honest_len: 2,
                honest_body: b"no".to_vec(),
                tail: vec![],
            },
            CoordinatorFrame {
                term: Term(9),
                message: CoordinatorMessage::Refused(Refusal {
                    code: RefusalCode::Internal,
                    message: "no".into(),
                }),
            },
        ),
    ]
}

fn enroll_request_templates() -> Vec<(Template, EnrollRequest)> {
    let request = |token: &str, csr: Vec<u8>| EnrollRequest {
        protocol: PROTOCOL_VERSION,
        token: token.into(),
        csr_der: csr,
        hostname: String::new(),
        agent_version: String::new(),
    };
    vec![
        (
            Template {
                name: "EnrollRequest.token",
                head: version_bytes(),
                honest_len: 1,
                honest_body: b"t".to_vec(),
                tail: vec![0, 0, 0],
            },
            request("t", vec![]),
        ),
        (
            Template {
                name: "EnrollRequest.csr_der",
                head: [version_bytes(), vec![0]].concat(),
                honest_len: 1,
                honest_body: vec![5],
                tail: vec![0, 0],
            },
            request("", vec![5]),
        ),
    ]
}

fn enroll_response_templates() -> Vec<(Template, EnrollResponse)> {
    vec![(
        Template {
            name: "EnrollResponse::Enrolled.cert_der",
            // variant 0, node id 3
            head: vec![0, 3],
            honest_len: 1,
            honest_body: vec![4],
            // ca_der []
            tail: vec![0],
        },
        EnrollResponse::Enrolled {
            node_id: NodeId::from_raw(3),
            cert_der: vec![4],
            ca_der: vec![],
        },
    )]
}

/// Lengths a hostile peer would write: past every limit, at the edges of the limit, and at the
/// edges of the integer widths the varint can carry.
const HOSTILE_LENGTHS: &[u64] = &[
    u64::MAX,
    u64::MAX - 1,
    1 << 63,
    (1 << 32) + 1,
    u32::MAX as u64,
    MAX_FRAME_LEN as u64 + 1,
    MAX_FRAME_LEN as u64,
    MAX_FRAME_LEN as u64 - 1,
    MAX_FRAME_LEN as u64 / 2,
    u16::MAX as u64 + 1,
];

fn check_templates<T>(templates: &[(Template, T)])
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for (template, expected) in templates {
        // The template really puts the length where it says: honestly filled, it decodes.
        let honest = template.honest();
        match FrameDecoder::default().decode::<T>(&honest) {
            Ok(Decoded::Frame { message, consumed }) => {
                assert_eq!(&message, expected, "{}", template.name);
                assert_eq!(consumed, honest.len(), "{}", template.name);
            }
            other => panic!(
                "{}: honest template does not decode: {other:?}",
                template.name
            ),
        }
        for &len in HOSTILE_LENGTHS {
            let buf = template.hostile(len);
            let (result, allocs) = decode_bounded::<T>(&buf);
            assert!(
                matches!(result, Err(CodecError::Decode(_))),
                "{} with length {len}: {result:?}",
                template.name
            );
            // A few bytes of payload may cost at most one preallocation of the limit, plus
            // small change for the error.
            assert!(
                allocs.total <= MAX + 4096,
                "{} with length {len}: {allocs:?}",
                template.name
            );
        }
    }
}

#[test]
fn hostile_lengths_in_agent_messages_stay_under_the_limit() {
    check_templates(&agent_templates());
}

#[test]
fn hostile_lengths_in_coordinator_frames_stay_under_the_limit() {
    check_templates(&coordinator_templates());
}

#[test]
fn hostile_lengths_in_enrolment_messages_stay_under_the_limit() {
    check_templates(&enroll_request_templates());
    check_templates(&enroll_response_templates());
}

/// The largest message the limit admits decodes, and costs about its own size.
#[test]
fn a_full_size_frame_costs_about_its_size() {
    let payload_budget = MAX - 16;
    let message = AgentMessage::RenewCertificate {
        csr_der: vec![0x5A; payload_budget],
    };
    let mut buf = Vec::new();
    encode_frame(&message, &mut buf).expect("fits the limit");
    let (result, allocs) = decode_bounded::<AgentMessage>(&buf);
    assert!(matches!(result, Ok(Decoded::Frame { .. })));
    assert!(allocs.total <= 2 * MAX, "{allocs:?}");
}

/// An honest `Vec<GpuInfo>` of minimal records costs about 10 bytes each on the wire but 128
/// bytes in memory, and serde grows a vector by doubling, so without a bound a frame under the
/// limit could make one allocation of several times the limit (4 MiB measured for 100 000
/// records: bincode claims the limit per element only on its native `Decode` path, not for
/// serde sequences). `Inventory::gpus` is therefore decoded by a visitor that refuses more than
/// `MAX_GPUS_PER_NODE` elements while decoding.
#[test]
fn dense_gpu_list_stays_under_the_limit() {
    use gpuaas_proto::inventory::{GpuInfo, Inventory, MigState};
    use gpuaas_proto::messages::Hello;

    let gpu = GpuInfo {
        index: 0,
        uuid: String::new(),
        model: String::new(),
        nvml_name: String::new(),
        memory_mib: 0,
        pci_bus_id: String::new(),
        minor: 0,
        numa_node: None,
        mig: MigState::UNSUPPORTED,
    };
    let message = AgentMessage::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        node_id: NodeId::from_raw(1),
        agent_version: String::new(),
        inventory: Inventory {
            hostname: String::new(),
            cpu_cores: 0,
            memory_mib: 0,
            gpus: vec![gpu; 100_000],
        },
        wall_clock_ms: 0,
    });
    let mut buf = Vec::new();
    encode_frame(&message, &mut buf).expect("about 1 MB, under the limit");
    let (result, allocs) = decode_bounded::<AgentMessage>(&buf);
    assert!(
        result.is_err(),
        "a 100 000-GPU inventory must be refused while decoding"
    );
    assert!(allocs.total <= 2 * MAX, "{allocs:?}");
}

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes.
// ---------------------------------------------------------------------------------------------

fn check_arbitrary(buf: &[u8]) {
    let _ = decode_bounded::<AgentMessage>(buf);
    let _ = decode_bounded::<CoordinatorFrame>(buf);
    let _ = decode_bounded::<EnrollRequest>(buf);
    let _ = decode_bounded::<EnrollResponse>(buf);
}

proptest! {
    #[test]
    fn arbitrary_bytes_stay_under_the_limit(bytes in vec(any::<u8>(), 0..512)) {
        check_arbitrary(&bytes);
    }

    /// Behind an honest prefix, so the payload decoder sees every byte; the first bytes are
    /// biased toward big varint markers so that length fields claim a lot.
    #[test]
    fn arbitrary_payloads_stay_under_the_limit(
        head in vec(prop_oneof![Just(253u8), Just(252u8), Just(0xff), any::<u8>()], 0..16),
        tail in vec(any::<u8>(), 0..256),
    ) {
        check_arbitrary(&frame(&[head, tail].concat()));
    }
}
