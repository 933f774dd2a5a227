//! Finding an adapter and opening a device on it.

use wgpu::{Backends, DeviceType};

use super::buffers::wait_for;
use crate::error::{Error, Result};

/// Which graphics API to look for adapters through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// Every backend this build supports.
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub fn backends(self) -> Backends {
        match self {
            BackendChoice::Auto => Backends::all(),
            BackendChoice::Vulkan => Backends::VULKAN,
            BackendChoice::Metal => Backends::METAL,
            BackendChoice::Dx12 => Backends::DX12,
            BackendChoice::Gl => Backends::GL,
        }
    }
}

/// How to choose the adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdapterRequest {
    pub backend: BackendChoice,
    /// Keep only adapters whose name contains this (case-insensitive).
    pub name_contains: Option<String>,
}

/// What `shadertrain adapters` shows of one adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// Whether this adapter is the one `Gpu::open` picks for the request.
    pub chosen: bool,
}

/// An open device: the context every buffer and kernel is created in.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
}

async fn enumerate(backends: Backends) -> Vec<wgpu::Adapter> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    let instance = wgpu::Instance::new(descriptor);
    instance.enumerate_adapters(backends).await
}

/// Preference when several adapters match: real GPUs first, then native APIs over GL.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        DeviceType::DiscreteGpu => 0,
        DeviceType::IntegratedGpu => 1,
        DeviceType::VirtualGpu => 2,
        DeviceType::Cpu => 3,
        DeviceType::Other => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (device, backend)
}

fn matches(info: &wgpu::AdapterInfo, request: &AdapterRequest) -> bool {
    request
        .name_contains
        .as_ref()
        .is_none_or(|s| info.name.to_lowercase().contains(&s.to_lowercase()))
}

/// Index (into `adapters`) of the adapter the request picks.
fn choose(adapters: &[wgpu::Adapter], request: &AdapterRequest) -> Option<usize> {
    adapters
        .iter()
        .enumerate()
        .filter(|(_, a)| matches(&a.get_info(), request))
        .min_by_key(|(i, a)| (rank(&a.get_info()), *i))
        .map(|(i, _)| i)
}

/// A graphics API as people write it.
fn backend_name(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        wgpu::Backend::Noop => "no backend",
    }
}

/// The APIs in `backends`, comma-separated.
fn backend_names(backends: Backends) -> String {
    let apis = [
        (Backends::VULKAN, "Vulkan"),
        (Backends::METAL, "Metal"),
        (Backends::DX12, "DX12"),
        (Backends::GL, "GL"),
    ];
    let named: Vec<&str> = (apis.iter())
        .filter(|(api, _)| backends.contains(*api))
        .map(|&(_, name)| name)
        .collect();
    named.join(", ")
}

/// What kind of device an adapter is, as people say it.
fn device_type_name(device_type: DeviceType) -> &'static str {
    match device_type {
        DeviceType::DiscreteGpu => "discrete GPU",
        DeviceType::IntegratedGpu => "integrated GPU",
        DeviceType::VirtualGpu => "virtual GPU",
        DeviceType::Cpu => "CPU",
        DeviceType::Other => "other",
    }
}

/// Why `request` picks none of `adapters`: none at all, or none with the name asked for.
fn no_adapter(adapters: &[wgpu::Adapter], request: &AdapterRequest) -> Error {
    match (&request.name_contains, adapters.is_empty()) {
        (Some(wanted), false) => Error::NoMatchingAdapter {
            wanted: wanted.clone(),
            seen: adapters
                .iter()
                .map(|a| {
                    let info = a.get_info();
                    format!("{} ({})", info.name, backend_name(info.backend))
                })
                .collect::<Vec<_>>()
                .join(", "),
        },
        _ => Error::NoAdapter {
            backends: backend_names(request.backend.backends()),
        },
    }
}

/// Every adapter the backend choice sees, marking the one the request would pick; an error
/// when it would pick none.
pub fn list_adapters(request: &AdapterRequest) -> Result<Vec<AdapterSummary>> {
    let adapters = wait_for(async { Ok(enumerate(request.backend.backends()).await) })?;
    let chosen = choose(&adapters, request).ok_or_else(|| no_adapter(&adapters, request))?;
    Ok(adapters
        .iter()
        .enumerate()
        .map(|(index, adapter)| {
            let info = adapter.get_info();
            AdapterSummary {
                index,
                name: info.name,
                backend: backend_name(info.backend).to_string(),
                device_type: device_type_name(info.device_type).to_string(),
                driver: [info.driver, info.driver_info]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
                chosen: chosen == index,
            }
        })
        .collect())
}

impl Gpu {
    /// Opens a device on the best adapter matching the request, with all of the adapter's limits.
    pub fn open(request: &AdapterRequest) -> Result<Gpu> {
        wait_for(Self::open_async(request))
    }

    /// `open` as a future: how a web page opens its browser's WebGPU device.
    pub async fn open_async(request: &AdapterRequest) -> Result<Gpu> {
        let mut adapters = enumerate(request.backend.backends()).await;
        let index = choose(&adapters, request).ok_or_else(|| no_adapter(&adapters, request))?;
        let adapter = adapters.swap_remove(index);
        let limits = adapter.limits();
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("shadertrain"),
            // Subgroup operations where the adapter has them: the vec4 register matmul kernels
            // share loaded rows through them. 64-bit integers likewise: the packed optimizer
            // updates (optimizer_packed.wgsl) read parameters as 64-bit words.
            required_features: adapter.features()
                & (wgpu::Features::SUBGROUP | wgpu::Features::SHADER_INT64),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) =
            adapter
                .request_device(&descriptor)
                .await
                .map_err(|e| Error::Device {
                    adapter: adapter.get_info().name,
                    reason: e.to_string(),
                })?;
        Ok(Gpu {
            adapter,
            device,
            queue,
            limits,
        })
    }

    pub fn adapter_name(&self) -> String {
        let info = self.adapter.get_info();
        format!(
            "{} ({}, {})",
            info.name,
            backend_name(info.backend),
            device_type_name(info.device_type)
        )
    }
}
