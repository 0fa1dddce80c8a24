//! The benchmark harness `tessera-bench`: workloads against an embedded 3-node cluster or an external one (arrives with issue 7, once the store exists).
