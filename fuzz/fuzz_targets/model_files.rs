//! Model and checkpoint files on arbitrary bytes: reading one must return a value or an error,
//! never panic or exhaust memory, and what it returns must agree with its own description.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shadertrain::checkpoint;
use shadertrain::model::ModelSpec;
use shadertrain::model_file::{model_from_bytes, parameters_from_bytes};

fuzz_target!(|bytes: &[u8]| {
    let path = Path::new("fuzz-input.safetensors");
    if let Ok(model) = model_from_bytes(path, bytes) {
        assert_eq!(model.params.len(), model.spec.layout().total);
        // What messages print of it.
        let _ = (model.data.describe(), model.spec.describe());
    }
    // As `--init` reads a file for the reference model.
    if let Ok(weights) = parameters_from_bytes(path, bytes, &ModelSpec::reference()) {
        assert_eq!(weights.params.len(), ModelSpec::reference().layout().total);
    }
    if let Ok(saved) = checkpoint::from_bytes(path, bytes) {
        let layout = saved.run.spec.layout();
        assert_eq!(saved.state.parameters.len(), layout.total);
        // The optimizer's state covers the trained parameters, not BatchNorm's running
        // statistics.
        for state in &saved.state.optimizer_state {
            assert_eq!(state.len(), layout.trained);
        }
        // A run agrees with itself (and describing it for the comparison does not panic).
        assert!(saved.run.contradictions(&saved.run).is_empty());
    }
});
