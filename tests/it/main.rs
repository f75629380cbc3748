//! Black-box tests of the `tthc` binary and the engine, driven by the files in
//! `procedures/` and `tests/data/`.

mod definitions;
mod support;
