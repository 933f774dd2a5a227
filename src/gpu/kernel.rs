//! One compute pipeline with its bind group layout (`Kernel`), and how one is built from a
//! shader module: below the kernel families (`kernels`, `matmul`) that build theirs with it.

use wgpu::{BindGroupLayoutEntry, BindingType, BufferBindingType, ShaderStages};

use super::Gpu;

/// The kind of one binding slot, as declared in the kernel's WGSL header.
///
/// Kernel parameters (shapes, offsets, hyperparameters) are read from small read-only storage
/// buffers, not uniform buffers: lavapipe (Mesa 22.3) inlines uniform values into a freshly
/// compiled shader variant whenever a pipeline is bound again, so a training step, which switches
/// pipelines every dispatch, recompiled shaders and leaked their code (≈ 0.5 MB and several ms a
/// step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Params,
    Read,
    ReadWrite,
    /// A texture mirror of a buffer (`mirror::TextureMirror`), read with `textureLoad`.
    Mirror,
}

/// A pipeline and the layout its bind groups are made with.
pub struct Kernel {
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// Binding numbers, in the order `bind` takes resources.
    bindings: Vec<u32>,
    /// Whether the kernel may write the resource at each of those bindings.
    writable: Vec<bool>,
}

impl Kernel {
    /// A bind group for this kernel; `resources` in binding order.
    pub fn bind(&self, gpu: &Gpu, resources: &[wgpu::BindingResource<'_>]) -> wgpu::BindGroup {
        assert_eq!(
            resources.len(),
            self.bindings.len(),
            "kernel {} takes {} bindings",
            self.name,
            self.bindings.len()
        );
        let entries: Vec<wgpu::BindGroupEntry> = self
            .bindings
            .iter()
            .zip(resources)
            .map(|(&binding, resource)| wgpu::BindGroupEntry {
                binding,
                resource: resource.clone(),
            })
            .collect();
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }

    /// The buffers among `resources` (in binding order) that the kernel may write.
    pub fn written<'a>(&self, resources: &[wgpu::BindingResource<'a>]) -> Vec<&'a wgpu::Buffer> {
        resources
            .iter()
            .zip(&self.writable)
            .filter_map(|(resource, &writable)| match resource {
                wgpu::BindingResource::Buffer(binding) if writable => Some(binding.buffer),
                _ => None,
            })
            .collect()
    }
}

/// Workgroup width of the element-wise and per-row kernels (`@workgroup_size(64)` in their WGSL).
pub const ROW_WORKGROUP: u32 = 64;

/// A module of `source`.
pub(super) fn shader_module(
    device: &wgpu::Device,
    label: &str,
    source: &str,
) -> wgpu::ShaderModule {
    device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    })
}

pub(super) fn build(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    entry_point: &'static str,
    slots: &[(u32, Slot)],
    constants: &[(&str, f64)],
) -> Kernel {
    let entries: Vec<BindGroupLayoutEntry> = slots
        .iter()
        .map(|&(binding, slot)| BindGroupLayoutEntry {
            binding,
            visibility: ShaderStages::COMPUTE,
            ty: match slot {
                Slot::Params | Slot::Read | Slot::ReadWrite => BindingType::Buffer {
                    ty: BufferBindingType::Storage {
                        read_only: slot != Slot::ReadWrite,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Slot::Mirror => BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Float { filterable: false },
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(entry_point),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry_point),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry_point),
        layout: Some(&pipeline_layout),
        module,
        entry_point: Some(entry_point),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            ..Default::default()
        },
        cache: None,
    });
    Kernel {
        name: entry_point,
        pipeline,
        layout,
        bindings: slots.iter().map(|&(b, _)| b).collect(),
        writable: slots.iter().map(|&(_, s)| s == Slot::ReadWrite).collect(),
    }
}
