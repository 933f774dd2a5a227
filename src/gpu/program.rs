//! A recorded sequence of kernel dispatches with their bind groups (and the texture-mirror
//! refreshes some of them need), built once and replayed every step: recording a step is only
//! set_pipeline / set_bind_group / dispatch, and buffer-to-texture copies.

use wgpu::{BindingResource, Buffer, CommandEncoder, ComputePass};

use super::{Gpu, Kernel, TextureMirror};

pub struct Dispatch<'k> {
    pub kernel: &'k Kernel,
    pub bind_group: wgpu::BindGroup,
    pub grid: [u32; 3],
}

pub enum Command<'k> {
    Dispatch(Dispatch<'k>),
    /// Copies a buffer's current contents into its texture mirror, for the next dispatch.
    Refresh(TextureMirror),
}

#[derive(Default)]
pub struct Program<'k> {
    pub commands: Vec<Command<'k>>,
    /// Buffers whose mirror this program has refreshed and no dispatch of it has written since.
    fresh: Vec<Buffer>,
}

impl<'k> Program<'k> {
    /// A dispatch of `kernel` on `resources` (in binding order).
    pub fn dispatch(
        &mut self,
        gpu: &Gpu,
        kernel: &'k Kernel,
        resources: &[BindingResource<'_>],
        grid: [u32; 3],
    ) {
        let written = kernel.written(resources);
        self.fresh.retain(|buffer| !written.contains(&buffer));
        self.commands.push(Command::Dispatch(Dispatch {
            kernel,
            bind_group: kernel.bind(gpu, resources),
            grid,
        }));
    }

    /// A refresh of `mirror` before the next dispatch, which reads it, unless this program has
    /// already refreshed it since its buffer was last written. A program's first read of each
    /// mirror always refreshes it, so a mirror is never stale whatever wrote its buffer between
    /// programs (a kernel, or the host between steps).
    pub fn refresh(&mut self, mirror: &TextureMirror) {
        if self.fresh.contains(mirror.buffer()) {
            return;
        }
        self.fresh.push(mirror.buffer().clone());
        self.commands.push(Command::Refresh(mirror.clone()));
    }

    /// Appends `other`'s commands (which refresh what they read as if they started a program).
    pub fn extend(&mut self, other: Program<'k>) {
        self.commands.extend(other.commands);
        self.fresh = other.fresh;
    }

    /// Records every command; returns how many dispatches.
    pub fn record(&self, recorder: &mut Recorder<'_>) -> usize {
        let mut dispatches = 0;
        for command in &self.commands {
            match command {
                Command::Dispatch(d) => {
                    let pass = recorder.pass();
                    pass.set_pipeline(&d.kernel.pipeline);
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.grid[0], d.grid[1], d.grid[2]);
                    dispatches += 1;
                }
                Command::Refresh(mirror) => mirror.record_refresh(recorder.encoder()),
            }
        }
        dispatches
    }
}

/// Records programs into one command encoder, keeping one compute pass open across consecutive
/// dispatches (a copy closes it).
pub struct Recorder<'e> {
    encoder: &'e mut CommandEncoder,
    pass: Option<ComputePass<'static>>,
}

impl<'e> Recorder<'e> {
    pub fn new(encoder: &'e mut CommandEncoder) -> Self {
        Recorder {
            encoder,
            pass: None,
        }
    }

    fn pass(&mut self) -> &mut ComputePass<'static> {
        let encoder = &mut *self.encoder;
        self.pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&Default::default())
                .forget_lifetime()
        })
    }

    /// The encoder, for commands outside a compute pass (the open pass ends first).
    pub fn encoder(&mut self) -> &mut CommandEncoder {
        self.pass = None;
        self.encoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{AdapterRequest, Kernels};

    #[test]
    fn a_mirror_is_copied_again_only_after_its_buffer_is_written() {
        let gpu = Gpu::open(&AdapterRequest::default()).unwrap();
        let kernels = Kernels::new(&gpu);
        let mirrored = gpu.storage_buffer("mirrored", 64).unwrap();
        let other = gpu.storage_buffer("other", 64).unwrap();
        let mirror = TextureMirror::new(&gpu, "mirror", &mirrored).unwrap();
        // advance_step binds its one buffer read-write.
        fn write<'k>(gpu: &Gpu, program: &mut Program<'k>, kernel: &'k Kernel, buffer: &Buffer) {
            program.dispatch(gpu, kernel, &[buffer.as_entire_binding()], [1, 1, 1]);
        }
        let writer = &kernels.advance_step;
        let mut program = Program::default();
        program.refresh(&mirror);
        program.refresh(&mirror);
        write(&gpu, &mut program, writer, &other);
        program.refresh(&mirror);
        write(&gpu, &mut program, writer, &mirrored);
        program.refresh(&mirror);
        let copies: Vec<bool> = (program.commands.iter())
            .map(|c| matches!(c, Command::Refresh(_)))
            .collect();
        assert_eq!(copies, [true, false, false, true]);
    }
}
