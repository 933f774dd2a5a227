// The step schedule: a storage buffer holding a cursor and one Step per training or evaluation
// step of an epoch, written by the host once per epoch. The kernels that vary per step (gather,
// loss, optimizer) read steps[cursor]; advance_step runs last in every step and moves the cursor
// on. So a whole epoch is recorded and run without the host, and without dynamic offsets
// (binding a buffer at a dynamic offset leaks memory per dispatch on lavapipe, Mesa 22.3).
//
//   cursor += 1
//
// Bindings (group 0):
//   0 schedule  storage, read_write   Schedule (shared/step.wgsl): a 16-byte header, then Step [steps]
//
// Workgroup: 1 invocation. Dispatch grid: (1, 1, 1).

import package::shared::step::Schedule;

@group(0) @binding(0) var<storage, read_write> schedule: Schedule;

@compute @workgroup_size(1)
fn advance_step() {
    schedule.cursor += 1u;
}
