//! A recorded sequence of kernel dispatches with their bind groups, built once and replayed
//! every step: recording a step is only set_pipeline / set_bind_group / dispatch.

use crate::gpu::Kernel;

pub struct Dispatch<'k> {
    pub kernel: &'k Kernel,
    pub bind_group: wgpu::BindGroup,
    pub grid: [u32; 3],
}

#[derive(Default)]
pub struct Program<'k> {
    pub dispatches: Vec<Dispatch<'k>>,
}

impl<'k> Program<'k> {
    pub fn push(&mut self, kernel: &'k Kernel, bind_group: wgpu::BindGroup, grid: [u32; 3]) {
        self.dispatches.push(Dispatch {
            kernel,
            bind_group,
            grid,
        });
    }

    pub fn extend(&mut self, other: Program<'k>) {
        self.dispatches.extend(other.dispatches);
    }

    /// Records every dispatch; returns how many.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) -> usize {
        for d in &self.dispatches {
            pass.set_pipeline(&d.kernel.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.grid[0], d.grid[1], d.grid[2]);
        }
        self.dispatches.len()
    }
}
