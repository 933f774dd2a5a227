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
    /// Copies a buffer's first bytes into its texture mirror, for the next dispatch.
    Refresh(TextureMirror, u64),
}

#[derive(Default)]
pub struct Program<'k> {
    pub commands: Vec<Command<'k>>,
    /// Buffers whose mirror this program has refreshed and no dispatch of it has written since,
    /// with the bytes refreshed.
    fresh: Vec<(Buffer, u64)>,
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
        self.fresh.retain(|(buffer, _)| !written.contains(&buffer));
        self.commands.push(Command::Dispatch(Dispatch {
            kernel,
            bind_group: kernel.bind(gpu, resources),
            grid,
        }));
    }

    /// A refresh of the first `bytes` of `mirror` before the next dispatch, which reads them,
    /// unless this program has already refreshed as many since its buffer was last written. A
    /// program's first read of each mirror always refreshes it, so what a dispatch reads is
    /// never stale whatever wrote the buffer between programs (a kernel, or the host between
    /// steps).
    pub fn refresh(&mut self, mirror: &TextureMirror, bytes: u64) {
        let fresh = self.fresh.iter_mut().find(|(b, _)| b == mirror.buffer());
        match fresh {
            Some((_, done)) if *done >= bytes => return,
            Some((_, done)) => *done = bytes,
            None => self.fresh.push((mirror.buffer().clone(), bytes)),
        }
        self.commands.push(Command::Refresh(mirror.clone(), bytes));
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
                Command::Refresh(mirror, bytes) => {
                    mirror.record_refresh_of(recorder.encoder(), *bytes)
                }
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
    fn a_mirror_is_copied_again_only_after_its_buffer_is_written_or_more_is_read() {
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
        program.refresh(&mirror, 32);
        program.refresh(&mirror, 32);
        program.refresh(&mirror, 16);
        write(&gpu, &mut program, writer, &other);
        program.refresh(&mirror, 32);
        // A read of more than was copied copies again.
        program.refresh(&mirror, 64);
        write(&gpu, &mut program, writer, &mirrored);
        program.refresh(&mirror, 16);
        let copies: Vec<Option<u64>> = (program.commands.iter())
            .filter_map(|c| match c {
                Command::Refresh(_, bytes) => Some(Some(*bytes)),
                Command::Dispatch(_) => None,
            })
            .collect();
        assert_eq!(copies, [Some(32), Some(64), Some(16)]);
    }
}
