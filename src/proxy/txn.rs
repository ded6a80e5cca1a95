//! Transaction and statement state of a session, read from status flags and commands: where
//! a session may be closed or moved (no transaction, no open cursor, no pending long data).

use crate::protocol::constants::{cmd, status, CURSOR_TYPE_READ_ONLY};

#[derive(Debug, Default, Clone)]
pub struct TxnState {
    status: u16,
    /// Statements with an open cursor or pending long data; `None` while there are none
    /// (boxed: every session holds this, few ever use cursors).
    open: Option<Box<OpenStatements>>,
}

#[derive(Debug, Default, Clone)]
struct OpenStatements {
    /// Statements with an open cursor.
    cursors: Vec<u32>,
    /// Statements that got COM_STMT_SEND_LONG_DATA and not yet executed.
    long_data: Vec<u32>,
}

fn forget(list: &mut Vec<u32>, id: u32) {
    list.retain(|&x| x != id);
}

fn remember(list: &mut Vec<u32>, id: u32) {
    if !list.contains(&id) {
        list.push(id);
    }
}

impl TxnState {
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn in_transaction(&self) -> bool {
        self.status & status::IN_TRANS != 0
    }

    pub fn has_open_cursor(&self) -> bool {
        self.open.as_ref().is_some_and(|o| !o.cursors.is_empty())
    }

    /// A boundary: nothing would be lost by closing or moving the session now.
    pub fn at_boundary(&self) -> bool {
        !self.in_transaction() && self.open.is_none()
    }

    fn opened(&mut self) -> &mut OpenStatements {
        self.open.get_or_insert_default()
    }

    /// Records the effect of a finished command. `head` is the start of the command payload
    /// (command byte, then the statement id for statement commands), `resp_status` the flags
    /// of its last OK/EOF, `ok` whether it ended without an error.
    pub fn after_command(&mut self, head: &[u8], resp_status: Option<u16>, ok: bool) {
        if let Some(s) = resp_status {
            self.status = s;
        }
        let Some(&command) = head.first() else {
            return;
        };
        let stmt =
            (head.len() >= 5).then(|| u32::from_le_bytes([head[1], head[2], head[3], head[4]]));
        match (command, stmt) {
            (cmd::STMT_SEND_LONG_DATA, Some(id)) => remember(&mut self.opened().long_data, id),
            (cmd::STMT_EXECUTE, Some(id)) => {
                let wants_cursor = head.get(5).is_some_and(|f| f & CURSOR_TYPE_READ_ONLY != 0);
                let opened = resp_status.is_some_and(|s| s & status::CURSOR_EXISTS != 0);
                if ok && wants_cursor && opened {
                    let open = self.opened();
                    forget(&mut open.long_data, id);
                    remember(&mut open.cursors, id);
                } else if let Some(open) = &mut self.open {
                    forget(&mut open.long_data, id);
                    forget(&mut open.cursors, id);
                }
            }
            (cmd::STMT_FETCH, Some(id)) => {
                let exhausted = resp_status.is_some_and(|s| s & status::LAST_ROW_SENT != 0);
                if let (true, Some(open)) = (exhausted || !ok, &mut self.open) {
                    forget(&mut open.cursors, id);
                }
            }
            (cmd::STMT_RESET, Some(id)) | (cmd::STMT_CLOSE, Some(id)) => {
                if let Some(open) = &mut self.open {
                    forget(&mut open.cursors, id);
                    forget(&mut open.long_data, id);
                }
            }
            (cmd::RESET_CONNECTION, _) | (cmd::CHANGE_USER, _) if ok => self.open = None,
            _ => {}
        }
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.cursors.is_empty() && o.long_data.is_empty())
        {
            self.open = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(c: u8, id: u32, flags: u8) -> Vec<u8> {
        let mut v = vec![c];
        v.extend_from_slice(&id.to_le_bytes());
        v.push(flags);
        v
    }

    #[test]
    fn transaction_flag_follows_status() {
        let mut t = TxnState::default();
        assert!(t.at_boundary());
        t.after_command(
            &[cmd::QUERY],
            Some(status::IN_TRANS | status::AUTOCOMMIT),
            true,
        );
        assert!(!t.at_boundary());
        // an error carries no status: still in the transaction
        t.after_command(&[cmd::QUERY], None, false);
        assert!(t.in_transaction());
        t.after_command(&[cmd::QUERY], Some(status::AUTOCOMMIT), true);
        assert!(t.at_boundary());
    }

    #[test]
    fn cursor_open_until_last_row_or_close() {
        let mut t = TxnState::default();
        t.after_command(
            &stmt(cmd::STMT_EXECUTE, 7, 1),
            Some(status::CURSOR_EXISTS),
            true,
        );
        assert!(t.has_open_cursor());
        t.after_command(
            &stmt(cmd::STMT_FETCH, 7, 0),
            Some(status::CURSOR_EXISTS),
            true,
        );
        assert!(t.has_open_cursor());
        t.after_command(
            &stmt(cmd::STMT_FETCH, 7, 0),
            Some(status::LAST_ROW_SENT),
            true,
        );
        assert!(t.at_boundary());
        t.after_command(
            &stmt(cmd::STMT_EXECUTE, 8, 1),
            Some(status::CURSOR_EXISTS),
            true,
        );
        t.after_command(&stmt(cmd::STMT_CLOSE, 8, 0), None, true);
        assert!(t.at_boundary());
    }

    #[test]
    fn long_data_pending_until_execute() {
        let mut t = TxnState::default();
        t.after_command(&stmt(cmd::STMT_SEND_LONG_DATA, 3, 0), None, true);
        assert!(!t.at_boundary());
        t.after_command(
            &stmt(cmd::STMT_EXECUTE, 3, 0),
            Some(status::AUTOCOMMIT),
            true,
        );
        assert!(t.at_boundary());
    }
}
