//! The shared write-ahead log: one group-commit WAL on memory-mapped segments for every Raft group on a node.
