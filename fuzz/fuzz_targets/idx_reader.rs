//! The IDX reader on arbitrary bytes (raw or gzip): it must return a value or an error, never
//! panic, and what it returns must agree with the header.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shadertrain::data::idx::read_idx_u8_from;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(array) = read_idx_u8_from(Path::new("fuzz-input"), bytes) {
        let expected: usize = array.dims.iter().product();
        assert_eq!(array.data.len(), expected);
        assert!(!array.dims.is_empty());
    }
});
