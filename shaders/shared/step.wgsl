// The step schedule (src/gpu/uniforms.rs `StepParams`, `SCHEDULE_HEADER_BYTES`): a storage
// buffer holding a cursor and one Step per training or evaluation step of an epoch, written by the
// host once per epoch; schedule.wgsl's advance_step moves the cursor on at the end of every step.
// Kernels that vary per step import `current_step`, which binds the schedule, read-only, at
// binding 0 of group 0.

struct Step {
    batch_start: u32,
    rows: u32,
    adam_step_size: f32,
    // The training step's number in the run, from 1 (0 in evaluation): dropout masks are keyed
    // by it.
    number: u32,
    // The step's learning rate, from the run's schedule (src/train/schedule.rs).
    learning_rate: f32,
    // AdamW's decoupled decay: parameters are multiplied by 1 - learning_rate * weight_decay
    // before the step (1 for every other optimizer).
    decay_factor: f32,
    _pad0: u32,
    _pad1: u32,
}

struct Schedule {
    cursor: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    steps: array<Step>,
}

@group(0) @binding(0) var<storage, read> schedule: Schedule;

// The step being run.
fn current_step() -> Step {
    return schedule.steps[schedule.cursor];
}
