//! A recorded sequence of kernel dispatches with their bind groups (and the texture-mirror
//! refreshes some of them need), built once and replayed every step: recording a step is only
//! set_pipeline / set_bind_group / dispatch, and buffer-to-texture copies.

use wgpu::{BindingResource, Buffer, CommandEncoder, ComputePass};

use crate::gpu::{Gpu, Kernel, TextureMirror};

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
    /// programs (a kernel, or the host between steps); on lavapipe a refresh costs about 20 µs
    /// per MB.
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

    pub fn dispatches(&self) -> impl Iterator<Item = &Dispatch<'k>> {
        self.commands.iter().filter_map(|c| match c {
            Command::Dispatch(d) => Some(d),
            Command::Refresh(_) => None,
        })
    }

    /// Records every command; returns how many dispatches.
    pub fn record(&self, recorder: &mut Recorder<'_>) -> usize {
        for command in &self.commands {
            match command {
                Command::Dispatch(d) => {
                    let pass = recorder.pass();
                    pass.set_pipeline(&d.kernel.pipeline);
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.grid[0], d.grid[1], d.grid[2]);
                }
                Command::Refresh(mirror) => mirror.record_refresh(recorder.encoder()),
            }
        }
        self.dispatches().count()
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
