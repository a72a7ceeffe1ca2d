//! `keelmq-wal`: KeelMQ's write-ahead log. Filled in by the WAL issue.
