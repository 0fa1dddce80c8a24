//! Tessera's engine: the Raft consensus core every range runs, and (as they
//! land) the ranges, the multi-raft store, the embedded `Db` and the node binary.
