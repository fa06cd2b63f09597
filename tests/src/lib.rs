//! End-to-end tests of voxsig-bridge live in `tests/tests/`; this crate has no library code.
