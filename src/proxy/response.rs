//! Where a backend's response to each command ends, and the status flags it leaves behind:
//! an observer for the relay that walks result sets, prepare replies and simple answers.

use super::relay::{Observer, ProtocolError, Verdict};
use super::session::stmt_ids::StmtIds;
use crate::protocol::constants::{
    cmd, status, EOF_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER, OK_HEADER,
};
use crate::protocol::response::{
    eof_status, is_eof, is_terminator, ok_status, terminator_status, ErrPacket,
};

/// The response shapes the relay distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// OK, ERR, LOCAL INFILE request, or one or more result sets (COM_QUERY, COM_STMT_EXECUTE).
    ResultSets,
    /// COM_STMT_PREPARE: ERR, or OK followed by parameter and column definitions.
    Prepare,
    /// Rows or definitions ending at a terminator (COM_STMT_FETCH, COM_FIELD_LIST).
    Rows,
    /// A single packet of any content (COM_STATISTICS) or OK/ERR/EOF.
    Single,
}

impl Shape {
    /// The response shape of a command; `None` when the command gets no response at all.
    pub fn of(command: u8) -> Option<Shape> {
        match command {
            cmd::QUERY | cmd::STMT_EXECUTE | cmd::PROCESS_INFO => Some(Shape::ResultSets),
            cmd::STMT_PREPARE => Some(Shape::Prepare),
            cmd::STMT_FETCH | cmd::FIELD_LIST => Some(Shape::Rows),
            cmd::STMT_CLOSE | cmd::STMT_SEND_LONG_DATA | cmd::QUIT => None,
            _ => Some(Shape::Single),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    First,
    Columns,
    Rows,
    Counting(u32),
}

pub struct ResponseObserver {
    shape: Shape,
    state: State,
    deprecate_eof: bool,
    /// Status flags of the last OK/EOF seen.
    pub status: Option<u16>,
    /// Error code when the response ended in ERR.
    pub error: Option<u16>,
    /// Its message (filled only on error).
    pub error_message: String,
    /// Statement id from a successful COM_STMT_PREPARE.
    pub prepared_id: Option<u32>,
    /// The server asked for a LOAD DATA LOCAL INFILE upload.
    pub local_infile: bool,
    /// The last packet ended one of several results: a server flushes there.
    result_ended: bool,
    /// Set when the client's statement ids differ from the backend's: the id in a prepare's
    /// answer is then rewritten to the one the client gets, and `prepared_id` is that one.
    pub(crate) ids: Option<StmtIds>,
    /// The prepare's OK packet was just seen and its id not yet rewritten.
    id_to_patch: bool,
    /// A COM_STMT_EXECUTE that asked for a cursor: only then does CURSOR_EXISTS after the
    /// column definitions end the response. A text query never opens a protocol cursor, but
    /// MariaDB flags CURSOR_EXISTS while a stored-program cursor is open (`BEGIN NOT ATOMIC
    /// ... OPEN c; ... SELECT v; END`), and its rows follow as usual.
    pub cursor_requested: bool,
}

impl ResponseObserver {
    pub fn new(shape: Shape, deprecate_eof: bool) -> Self {
        let state = match shape {
            Shape::Rows => State::Rows,
            _ => State::First,
        };
        Self {
            shape,
            state,
            deprecate_eof,
            status: None,
            error: None,
            error_message: String::new(),
            prepared_id: None,
            local_infile: false,
            result_ended: false,
            ids: None,
            id_to_patch: false,
            cursor_requested: false,
        }
    }

    /// After an infile upload the server answers as to a query: OK/ERR, maybe more results.
    pub fn resume_after_infile(&mut self) {
        self.local_infile = false;
        self.state = State::First;
    }

    fn end_result(&mut self, st: Option<u16>) -> Verdict {
        self.status = st.or(self.status);
        match st {
            Some(s) if s & status::MORE_RESULTS_EXISTS != 0 => {
                self.state = State::First;
                self.result_ended = true;
                Verdict::More
            }
            _ => Verdict::Done,
        }
    }

    fn first(&mut self, len: usize, p: &[u8], complete: bool) -> Result<Verdict, ProtocolError> {
        let head = p[0];
        match self.shape {
            Shape::Single => {
                if complete {
                    match head {
                        OK_HEADER => self.status = ok_status(p).or(self.status),
                        EOF_HEADER if len < 9 => {
                            self.status = if self.deprecate_eof {
                                ok_status(p)
                            } else {
                                eof_status(p)
                            }
                            .or(self.status)
                        }
                        ERR_HEADER => self.record_error(p),
                        _ => {}
                    }
                }
                Ok(Verdict::Done)
            }
            Shape::Prepare => match head {
                ERR_HEADER => {
                    self.record_error(p);
                    Ok(Verdict::Done)
                }
                OK_HEADER if complete && p.len() >= 9 => {
                    self.prepared_id = Some(u32::from_le_bytes([p[1], p[2], p[3], p[4]]));
                    self.id_to_patch = self.ids.is_some();
                    let cols = u32::from(u16::from_le_bytes([p[5], p[6]]));
                    let params = u32::from(u16::from_le_bytes([p[7], p[8]]));
                    let mut n = cols + params;
                    if !self.deprecate_eof {
                        n += u32::from(cols > 0) + u32::from(params > 0);
                    }
                    if n == 0 {
                        return Ok(Verdict::Done);
                    }
                    self.state = State::Counting(n);
                    Ok(Verdict::More)
                }
                _ => Err(ProtocolError::UnexpectedInPrepare(head)),
            },
            Shape::ResultSets | Shape::Rows => match head {
                OK_HEADER if complete => Ok(self.end_result(ok_status(p))),
                ERR_HEADER => {
                    self.record_error(p);
                    Ok(Verdict::Done)
                }
                LOCAL_INFILE_HEADER => {
                    self.local_infile = true;
                    Ok(Verdict::Done)
                }
                OK_HEADER => Err(ProtocolError::TruncatedOk),
                _ if complete && !is_column_count(p) => {
                    Err(ProtocolError::ColumnCount(p[..p.len().min(9)].to_vec()))
                }
                _ => {
                    // A column count: definitions follow.
                    self.state = if self.deprecate_eof {
                        State::Rows
                    } else {
                        State::Columns
                    };
                    Ok(Verdict::More)
                }
            },
        }
    }
}

/// A result set starts with a packet holding exactly one length-encoded integer.
fn is_column_count(p: &[u8]) -> bool {
    let mut r = crate::protocol::buf::Reader::new(p);
    matches!(r.lenenc_int(), Ok(Some(n)) if n > 0) && r.is_empty()
}

impl ResponseObserver {
    fn record_error(&mut self, p: &[u8]) {
        match ErrPacket::parse(p) {
            Some(e) => {
                self.error = Some(e.code);
                self.error_message = e.message;
            }
            None => self.error = Some(0),
        }
    }
}

impl Observer for ResponseObserver {
    fn in_rows(&self) -> bool {
        self.state == State::Rows
    }

    fn take_flush_point(&mut self) -> bool {
        std::mem::take(&mut self.result_ended)
    }

    fn patch(&mut self, payload: &mut [u8]) {
        if !std::mem::take(&mut self.id_to_patch) {
            return;
        }
        if let (Some(ids), Some(backend)) = (self.ids.as_mut(), self.prepared_id) {
            let client = ids.on_prepared(backend);
            payload[1..5].copy_from_slice(&client.to_le_bytes());
            self.prepared_id = Some(client);
        }
    }

    fn on_packet(
        &mut self,
        len: usize,
        p: &[u8],
        complete: bool,
    ) -> Result<Verdict, ProtocolError> {
        if len == 0 {
            return match self.state {
                State::Counting(_) | State::Columns | State::Rows => Ok(Verdict::More),
                State::First if self.shape == Shape::Single => Ok(Verdict::Done),
                State::First => Err(ProtocolError::EmptyResponse),
            };
        }
        match self.state {
            State::First => self.first(len, p, complete),
            State::Counting(n) => {
                if n <= 1 {
                    Ok(Verdict::Done)
                } else {
                    self.state = State::Counting(n - 1);
                    Ok(Verdict::More)
                }
            }
            State::Columns => {
                if p[0] == ERR_HEADER {
                    self.record_error(p);
                    return Ok(Verdict::Done);
                }
                if is_eof(p[0], len) {
                    let st = eof_status(p);
                    self.status = st.or(self.status);
                    // With a cursor open only the definitions come now; rows come by fetch.
                    if self.cursor_requested && st.is_some_and(|s| s & status::CURSOR_EXISTS != 0) {
                        return Ok(Verdict::Done);
                    }
                    self.state = State::Rows;
                }
                Ok(Verdict::More)
            }
            State::Rows => {
                if p[0] == ERR_HEADER {
                    self.record_error(p);
                    return Ok(Verdict::Done);
                }
                if complete && is_terminator(p[0], len, self.deprecate_eof) {
                    return Ok(self.end_result(terminator_status(p, self.deprecate_eof)));
                }
                Ok(Verdict::More)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(obs: &mut ResponseObserver, packets: &[&[u8]]) -> Vec<Verdict> {
        packets
            .iter()
            .map(|p| obs.on_packet(p.len(), p, true).unwrap())
            .collect()
    }

    const COLDEF: &[u8] = &[3, b'd', b'e', b'f', 0, 0, 0, 1, b'a'];
    const ROW: &[u8] = &[1, b'1'];

    #[test]
    fn result_set_with_eof_packets() {
        let mut o = ResponseObserver::new(Shape::ResultSets, false);
        let eof = [0xfe, 0, 0, 0x02, 0];
        let v = feed(&mut o, &[&[1], COLDEF, &eof, ROW, ROW, &eof]);
        assert_eq!(v.last(), Some(&Verdict::Done));
        assert!(v[..5].iter().all(|v| *v == Verdict::More));
        assert_eq!(o.status, Some(2));
    }

    #[test]
    fn multi_results_with_deprecate_eof() {
        let mut o = ResponseObserver::new(Shape::ResultSets, true);
        // two result sets flagged MORE_RESULTS_EXISTS, then the OK of a CALL ends it all
        let more = [0xfe, 0, 0, 0x0a, 0, 0, 0];
        let ok = [0x00, 0, 0, 0x03, 0, 0, 0];
        let v = feed(
            &mut o,
            &[&[1], COLDEF, ROW, &more, &[1], COLDEF, ROW, &more, &ok],
        );
        assert_eq!(v.iter().filter(|v| **v == Verdict::Done).count(), 1);
        assert_eq!(v.last(), Some(&Verdict::Done));
        assert_eq!(o.status, Some(3));
    }

    #[test]
    fn cursor_ends_after_definitions() {
        let mut o = ResponseObserver::new(Shape::ResultSets, false);
        o.cursor_requested = true;
        let eof_cursor = [0xfe, 0, 0, 0x42, 0];
        let v = feed(&mut o, &[&[1], COLDEF, &eof_cursor]);
        assert_eq!(v, vec![Verdict::More, Verdict::More, Verdict::Done]);
        assert!(o.status.unwrap() & status::CURSOR_EXISTS != 0);
    }

    #[test]
    fn a_stored_program_cursor_flag_does_not_end_a_text_result() {
        // BEGIN NOT ATOMIC ... OPEN c; FETCH c INTO v; SELECT v; END: CURSOR_EXISTS is set
        // in the EOF after the definitions, and the row and the final OK still follow.
        let mut o = ResponseObserver::new(Shape::ResultSets, false);
        let eof_cursor_more = [0xfe, 0, 0, 0x4a, 0];
        let ok = [0x00, 0, 0, 0x02, 0, 0, 0];
        let v = feed(
            &mut o,
            &[&[1], COLDEF, &eof_cursor_more, ROW, &eof_cursor_more, &ok],
        );
        assert_eq!(v.iter().filter(|v| **v == Verdict::Done).count(), 1);
        assert_eq!(v.last(), Some(&Verdict::Done));
    }

    #[test]
    fn prepare_counts_definitions() {
        let mut o = ResponseObserver::new(Shape::Prepare, false);
        // 2 columns, 1 param -> 1 param def + EOF + 2 col defs + EOF
        let ok = [0, 1, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0];
        let eof = [0xfe, 0, 0, 0, 0];
        let v = feed(&mut o, &[&ok, COLDEF, &eof, COLDEF, COLDEF, &eof]);
        assert_eq!(v.last(), Some(&Verdict::Done));
        assert_eq!(v.iter().filter(|v| **v == Verdict::Done).count(), 1);
        let mut o = ResponseObserver::new(Shape::Prepare, true);
        let none = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(feed(&mut o, &[&none]), vec![Verdict::Done]);
    }

    #[test]
    fn error_and_infile_end_the_response() {
        let mut o = ResponseObserver::new(Shape::ResultSets, true);
        let err = [0xff, 0x7a, 0x04, b'#', b'4', b'2', b'S', b'0', b'2', b'x'];
        assert_eq!(feed(&mut o, &[&err]), vec![Verdict::Done]);
        assert_eq!(o.error, Some(1146));
        assert_eq!(o.error_message, "x");
        let mut o = ResponseObserver::new(Shape::ResultSets, true);
        assert_eq!(feed(&mut o, &[&[0xfb, b'f']]), vec![Verdict::Done]);
        assert!(o.local_infile);
    }

    #[test]
    fn a_prepare_answer_gets_the_clients_id_once_ids_differ() {
        let mut o = ResponseObserver::new(Shape::Prepare, true);
        o.ids = Some(StmtIds::rebuilt([(3, 1)]));
        // the backend answers id 3, which the client already holds (as the backend's 1)
        let mut ok = [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(o.on_packet(ok.len(), &ok, true).unwrap(), Verdict::Done);
        o.patch(&mut ok);
        assert_eq!(u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]), 4);
        assert_eq!(o.prepared_id, Some(4));
        assert_eq!(o.ids.as_ref().unwrap().backend_id(4), 3);
        let mut row = [1, b'x'];
        o.patch(&mut row);
        assert_eq!(row, [1, b'x'], "only the OK packet carries the id");
    }

    #[test]
    fn truncated_column_count_is_malformed() {
        let mut o = ResponseObserver::new(Shape::ResultSets, true);
        assert!(o.on_packet(2, &[0xfc, 0x01], true).is_err());
        let mut o = ResponseObserver::new(Shape::ResultSets, true);
        assert!(o.on_packet(3, &[0xfc, 0x01, 0x01], true).is_ok());
    }

    #[test]
    fn large_row_starting_with_fe_is_not_a_terminator() {
        let mut o = ResponseObserver::new(Shape::Rows, true);
        assert_eq!(
            o.on_packet(0xff_ffff, &[0xfe], false).unwrap(),
            Verdict::More
        );
    }
}
