//! An update: what a publisher sent, after validation, with its SSE frame.

use bytes::Bytes;

use crate::sse;

/// One published update. The SSE `frame` is encoded once, when the update is
/// created, and the same bytes are handed to every subscriber and replayed
/// from history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub id: String,
    /// The first topic is the canonical one; the others are alternates.
    pub topics: Vec<String>,
    pub private: bool,
    pub event_type: Option<String>,
    pub retry: Option<u64>,
    pub data: String,
    pub frame: Bytes,
}

impl Update {
    pub fn new(
        id: String,
        topics: Vec<String>,
        private: bool,
        event_type: Option<String>,
        retry: Option<u64>,
        data: String,
    ) -> Update {
        let frame = sse::encode_event(&id, event_type.as_deref(), retry, &data);
        Update {
            id,
            topics,
            private,
            event_type,
            retry,
            data,
            frame,
        }
    }

    /// A fresh `urn:uuid:` id, as the hub assigns when the publisher gave none.
    pub fn generate_id() -> String {
        format!("urn:uuid:{}", uuid::Uuid::new_v4())
    }
}
