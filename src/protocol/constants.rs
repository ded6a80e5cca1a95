//! Numeric constants of the MySQL protocol: capability flags, status flags, commands, headers.

/// Capability flags (the lower 32 bits shared by MySQL and MariaDB).
pub mod cap {
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const ODBC: u32 = 1 << 6;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const IGNORE_SIGPIPE: u32 = 1 << 12;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const RESERVED: u32 = 1 << 14;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_DATA: u32 = 1 << 21;
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;

    /// What the proxy offers clients. Deliberately absent: optional result-set metadata,
    /// query attributes, zstd and MariaDB's extended capabilities, so every result set has
    /// the classic shape the relay recognises with every backend kind. SSL and COMPRESS are
    /// added or removed per listener and per backend.
    pub const PROXY_DEFAULT: u32 = LONG_PASSWORD
        | FOUND_ROWS
        | LONG_FLAG
        | CONNECT_WITH_DB
        | NO_SCHEMA
        | COMPRESS
        | ODBC
        | LOCAL_FILES
        | IGNORE_SPACE
        | PROTOCOL_41
        | INTERACTIVE
        | IGNORE_SIGPIPE
        | TRANSACTIONS
        | RESERVED
        | SECURE_CONNECTION
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC_DATA
        | CAN_HANDLE_EXPIRED_PASSWORDS
        | SESSION_TRACK
        | DEPRECATE_EOF;
}

/// Server status flags carried by OK and EOF packets.
pub mod status {
    pub const IN_TRANS: u16 = 1;
    pub const AUTOCOMMIT: u16 = 1 << 1;
    pub const MORE_RESULTS_EXISTS: u16 = 1 << 3;
    pub const CURSOR_EXISTS: u16 = 1 << 6;
    pub const LAST_ROW_SENT: u16 = 1 << 7;
    pub const IN_TRANS_READONLY: u16 = 1 << 13;
}

/// Command bytes (first byte of a client command packet).
pub mod cmd {
    pub const SLEEP: u8 = 0x00;
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const CREATE_DB: u8 = 0x05;
    pub const DROP_DB: u8 = 0x06;
    pub const REFRESH: u8 = 0x07;
    pub const SHUTDOWN: u8 = 0x08;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_INFO: u8 = 0x0a;
    pub const CONNECT: u8 = 0x0b;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const DEBUG: u8 = 0x0d;
    pub const PING: u8 = 0x0e;
    pub const TIME: u8 = 0x0f;
    pub const DELAYED_INSERT: u8 = 0x10;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const TABLE_DUMP: u8 = 0x13;
    pub const CONNECT_OUT: u8 = 0x14;
    pub const REGISTER_SLAVE: u8 = 0x15;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const DAEMON: u8 = 0x1d;
    pub const BINLOG_DUMP_GTID: u8 = 0x1e;
    pub const RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB's COM_STMT_BULK_EXECUTE: a statement id at the same place as COM_STMT_EXECUTE.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;

    /// The statement id a prepared-statement command names (its payload's bytes 1 to 4),
    /// if `payload` is such a command and long enough to hold it.
    pub fn statement_id(payload: &[u8]) -> Option<u32> {
        match payload {
            [STMT_EXECUTE | STMT_BULK_EXECUTE | STMT_FETCH | STMT_RESET | STMT_CLOSE
            | STMT_SEND_LONG_DATA, a, b, c, d, ..] => Some(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }

    /// A short name for logs and metric labels.
    pub fn name(c: u8) -> &'static str {
        match c {
            SLEEP => "sleep",
            QUIT => "quit",
            INIT_DB => "init_db",
            QUERY => "query",
            FIELD_LIST => "field_list",
            CREATE_DB => "create_db",
            DROP_DB => "drop_db",
            REFRESH => "refresh",
            SHUTDOWN => "shutdown",
            STATISTICS => "statistics",
            PROCESS_INFO => "process_info",
            CONNECT => "connect",
            PROCESS_KILL => "process_kill",
            DEBUG => "debug",
            PING => "ping",
            TIME => "time",
            DELAYED_INSERT => "delayed_insert",
            CHANGE_USER => "change_user",
            BINLOG_DUMP => "binlog_dump",
            TABLE_DUMP => "table_dump",
            CONNECT_OUT => "connect_out",
            REGISTER_SLAVE => "register_slave",
            STMT_PREPARE => "stmt_prepare",
            STMT_EXECUTE => "stmt_execute",
            STMT_SEND_LONG_DATA => "stmt_send_long_data",
            STMT_CLOSE => "stmt_close",
            STMT_RESET => "stmt_reset",
            SET_OPTION => "set_option",
            STMT_FETCH => "stmt_fetch",
            DAEMON => "daemon",
            BINLOG_DUMP_GTID => "binlog_dump_gtid",
            RESET_CONNECTION => "reset_connection",
            _ => "unknown",
        }
    }
}

/// First payload bytes that identify a response packet.
pub const OK_HEADER: u8 = 0x00;
pub const ERR_HEADER: u8 = 0xff;
pub const EOF_HEADER: u8 = 0xfe;
pub const LOCAL_INFILE_HEADER: u8 = 0xfb;
pub const AUTH_MORE_DATA_HEADER: u8 = 0x01;

/// A payload of this length means the logical packet continues in the next one.
pub const MAX_PAYLOAD: usize = 0xff_ffff;

/// COM_STMT_EXECUTE flag asking for a read-only cursor.
pub const CURSOR_TYPE_READ_ONLY: u8 = 1;

/// utf8mb4_general_ci, announced in the proxy's greeting.
pub const DEFAULT_COLLATION: u8 = 45;

/// The plugin name the proxy puts in the response it forwards, so that the backend always
/// answers with an auth switch carrying its own scramble (see COMPAT.md).
pub const UNKNOWN_AUTH_PLUGIN: &str = "auth_unknown_plugin";
pub const NATIVE_PASSWORD_PLUGIN: &str = "mysql_native_password";
