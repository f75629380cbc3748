//! Black-box tests of the `tthc` binary and the engine, driven by the files in
//! `procedures/` and `tests/data/`.

mod agencies;
mod api;
mod api_support;
mod bench;
mod cluster;
mod contract;
mod definitions;
mod engine;
mod engine_props;
mod engine_support;
mod fees;
mod founding;
mod guards;
mod input;
mod khodl;
mod nodes;
mod portal;
mod results;
mod reuse;
mod seal;
mod storage;
mod support;
