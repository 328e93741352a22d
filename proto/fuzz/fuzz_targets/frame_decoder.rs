//! Fuzz target: arbitrary bytes into `FrameDecoder::decode` for the messages of both directions
//! (agent → coordinator, coordinator → agent, and the enrolment request and response).
//!
//! Checks, beyond "does not panic": `Incomplete` asks for more than it was given; a decoded
//! frame consumes exactly prefix + declared length; and a decoded message, re-encoded, decodes
//! again to an equal message that consumes the whole new frame.

#![no_main]

use std::fmt::Debug;

use gpuaas_proto::codec::LEN_PREFIX;
use gpuaas_proto::messages::{AgentMessage, CoordinatorFrame, EnrollRequest, EnrollResponse};
use gpuaas_proto::{Decoded, FrameDecoder, encode_frame};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    check::<AgentMessage>(data);
    check::<CoordinatorFrame>(data);
    check::<EnrollRequest>(data);
    check::<EnrollResponse>(data);
});

fn check<T>(data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let decoder = FrameDecoder::default();
    match decoder.decode::<T>(data) {
        Err(_) => {}
        Ok(Decoded::Incomplete { needed }) => {
            assert!(needed > data.len(), "needs {needed} but has {}", data.len());
        }
        Ok(Decoded::Frame { message, consumed }) => {
            let prefix = data
                .first_chunk::<LEN_PREFIX>()
                .expect("a frame has a prefix");
            let declared = usize::try_from(u32::from_be_bytes(*prefix)).expect("u32 fits usize");
            assert_eq!(consumed, LEN_PREFIX + declared);
            assert!(consumed <= data.len());

            let mut again = Vec::new();
            encode_frame(&message, &mut again).expect("a decoded message re-encodes");
            match decoder.decode::<T>(&again) {
                Ok(Decoded::Frame {
                    message: round_tripped,
                    consumed,
                }) => {
                    assert_eq!(round_tripped, message);
                    assert_eq!(consumed, again.len());
                }
                other => panic!("re-encoded {message:?} does not decode: {other:?}"),
            }
        }
    }
}
