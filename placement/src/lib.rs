//! Placement: pure decisions to split, merge and move ranges over a view of the cluster.
