//! The network ext_proc stream as a plain state machine, with no I/O.

use super::{Chunk, NetworkContext, NetworkReply, Verdict};
use crate::error::{Error, Side};
use crate::pb::envoy::service::network_ext_proc::v3::processing_response::{
    ConnectionStatus, DataProcessedStatus,
};
use crate::pb::envoy::service::network_ext_proc::v3::{
    Data, ProcessingRequest, ProcessingResponse,
};

/// Per-connection protocol state: which paths have ended, and whether processing is over.
#[derive(Debug, Default, Clone)]
pub(crate) struct NetworkState {
    /// Read path half-closed.
    read_done: bool,
    /// Write path half-closed.
    write_done: bool,
    /// CLOSE, CLOSE_RST or `close_stream_to_ext_proc_server` sent: later messages are ignored.
    finished: bool,
}

impl NetworkState {
    /// Accepts one request: `Ok(None)` means ignore it (processing already finished).
    pub fn on_request(
        &mut self,
        req: ProcessingRequest,
    ) -> Result<Option<(Side, Chunk, NetworkContext)>, Error> {
        let ProcessingRequest {
            read_data,
            write_data,
            metadata,
            attributes,
        } = req;
        let (side, data) = match (read_data, write_data) {
            (Some(d), None) => (Side::Read, d),
            (None, Some(d)) => (Side::Write, d),
            _ => return Err(Error::BadNetworkRequest),
        };
        if self.finished {
            return Ok(None);
        }
        let done = if side == Side::Read {
            &mut self.read_done
        } else {
            &mut self.write_done
        };
        if *done {
            return Err(Error::OutOfOrder {
                side,
                got: "data",
                after: "end of stream",
            });
        }
        *done = data.end_of_stream;
        let chunk = Chunk {
            data: data.data.into(),
            end_of_stream: data.end_of_stream,
        };
        Ok(Some((
            side,
            chunk,
            NetworkContext {
                metadata,
                attributes,
            },
        )))
    }

    /// Encodes the reply to `chunk` on `side`: always exactly one response, on the same path.
    pub fn encode(&mut self, side: Side, chunk: &Chunk, reply: NetworkReply) -> ProcessingResponse {
        let NetworkReply {
            verdict,
            end_of_stream,
            dynamic_metadata,
            close_stream,
        } = reply;
        let eos = end_of_stream.unwrap_or(chunk.end_of_stream);
        let (status, connection, data) = match verdict {
            // Envoy forwards `data` whatever the status says: echo the original bytes.
            Verdict::Pass => (
                DataProcessedStatus::Unmodified,
                ConnectionStatus::Continue,
                chunk.data.to_vec(),
            ),
            Verdict::Replace(b) => (
                DataProcessedStatus::Modified,
                ConnectionStatus::Continue,
                b.to_vec(),
            ),
            Verdict::Close => (
                DataProcessedStatus::Unmodified,
                ConnectionStatus::Close,
                Vec::new(),
            ),
            Verdict::Reset => (
                DataProcessedStatus::Unmodified,
                ConnectionStatus::CloseRst,
                Vec::new(),
            ),
        };
        if connection != ConnectionStatus::Continue || close_stream {
            self.finished = true;
        }
        let d = Some(Data {
            data,
            end_of_stream: eos,
        });
        let (read_data, write_data) = if side == Side::Read {
            (d, None)
        } else {
            (None, d)
        };
        ProcessingResponse {
            read_data,
            write_data,
            data_processing_status: status as i32,
            connection_status: connection as i32,
            dynamic_metadata,
            close_stream_to_ext_proc_server: close_stream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(data: &[u8], eos: bool) -> ProcessingRequest {
        ProcessingRequest {
            read_data: Some(Data {
                data: data.to_vec(),
                end_of_stream: eos,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pass_echoes_bytes_and_eos() {
        let mut s = NetworkState::default();
        let (side, chunk, _) = s
            .on_request(read(b"hello", true))
            .expect("ok")
            .expect("some");
        let r = s.encode(side, &chunk, NetworkReply::pass());
        let d = r.read_data.expect("read_data");
        assert_eq!((d.data.as_slice(), d.end_of_stream), (&b"hello"[..], true));
        assert_eq!(
            r.data_processing_status,
            DataProcessedStatus::Unmodified as i32
        );
        assert!(r.write_data.is_none());
    }

    #[test]
    fn bare_fin_is_answered_with_eos() {
        let mut s = NetworkState::default();
        let req = ProcessingRequest {
            write_data: Some(Data {
                data: vec![],
                end_of_stream: true,
            }),
            ..Default::default()
        };
        let (side, chunk, _) = s.on_request(req).expect("ok").expect("some");
        assert_eq!(side, Side::Write);
        let r = s.encode(side, &chunk, NetworkReply::pass());
        assert_eq!(
            r.write_data,
            Some(Data {
                data: vec![],
                end_of_stream: true
            })
        );
    }

    #[test]
    fn reset_finishes_and_later_messages_are_ignored() {
        let mut s = NetworkState::default();
        let (side, chunk, _) = s.on_request(read(b"x", false)).expect("ok").expect("some");
        let r = s.encode(side, &chunk, NetworkReply::reset());
        assert_eq!(r.connection_status, ConnectionStatus::CloseRst as i32);
        assert!(s.on_request(read(b"y", false)).expect("ok").is_none());
    }

    #[test]
    fn shape_and_order_errors() {
        let mut s = NetworkState::default();
        assert!(matches!(
            s.on_request(ProcessingRequest::default()),
            Err(Error::BadNetworkRequest)
        ));
        let both = ProcessingRequest {
            read_data: Some(Data::default()),
            write_data: Some(Data::default()),
            ..Default::default()
        };
        assert!(matches!(s.on_request(both), Err(Error::BadNetworkRequest)));
        s.on_request(read(b"", true)).expect("fin ok");
        let e = s
            .on_request(read(b"late", false))
            .expect_err("data after FIN");
        assert_eq!(e.to_status().code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn replace_and_eos_override() {
        let mut s = NetworkState::default();
        let (side, chunk, _) = s
            .on_request(read(b"abc", false))
            .expect("ok")
            .expect("some");
        let r = s.encode(
            side,
            &chunk,
            NetworkReply::replace("xyz").end_of_stream(true),
        );
        assert_eq!(
            r.read_data,
            Some(Data {
                data: b"xyz".to_vec(),
                end_of_stream: true
            })
        );
        assert_eq!(
            r.data_processing_status,
            DataProcessedStatus::Modified as i32
        );
    }
}
