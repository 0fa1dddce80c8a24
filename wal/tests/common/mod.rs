//! Helpers shared by the WAL's integration tests.

pub mod crash_data;
