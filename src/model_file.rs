//! Trained models as safetensors files that PyTorch can load.
//!
//! Tensors follow `torch.nn.Linear`: `layers.{i}.weight` of shape [out, in] and `layers.{i}.bias`
//! of shape [out], F32, i counting dense layers from 0. (In the flat parameter buffer a weight is
//! [in, out]; it is transposed on the way out and back.) `__metadata__` holds what is needed to
//! use the file without flags: layer sizes, activation, loss, input normalisation, dataset, and the
//! version of shadertrain that wrote it.

use std::collections::HashMap;
use std::path::Path;

use clap::ValueEnum;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::files::write_atomically;
use crate::model::{Activation, Loss, ModelSpec};

/// How inputs were scaled before the first layer; the only scaling shadertrain uses.
pub const INPUT_NORMALISATION: &str = "pixel / 255 (u8 grey levels to [0, 1])";

/// A model read back from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedModel {
    pub spec: ModelSpec,
    /// Laid out as `spec.layout()` says.
    pub params: Vec<f32>,
    pub dataset: DatasetKind,
}

pub(crate) fn name_of<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// Writes the model atomically.
pub fn save_model(
    path: &Path,
    spec: &ModelSpec,
    params: &[f32],
    dataset: DatasetKind,
) -> Result<()> {
    let layout = spec.layout();
    assert_eq!(
        params.len(),
        layout.total,
        "parameters do not match the model"
    );
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, layer) in layout.layers.iter().enumerate() {
        let weight = &params[layer.weight_offset..layer.bias_offset];
        let mut transposed = Vec::with_capacity(weight.len() * 4);
        for out in 0..layer.outputs {
            for input in 0..layer.inputs {
                transposed.extend_from_slice(&weight[input * layer.outputs + out].to_le_bytes());
            }
        }
        tensors.push((
            format!("layers.{i}.weight"),
            vec![layer.outputs, layer.inputs],
            transposed,
        ));
        let bias = &params[layer.bias_offset..layer.bias_offset + layer.outputs];
        tensors.push((
            format!("layers.{i}.bias"),
            vec![layer.outputs],
            bias.iter().flat_map(|b| b.to_le_bytes()).collect(),
        ));
    }
    let mut metadata = describe_model(spec, dataset);
    metadata.insert("format".to_string(), "shadertrain mlp".to_string());
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("tensor shapes match their data");
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::ModelFile {
        path: path.to_path_buf(),
        problem: format!("could not serialise: {e}"),
    })?;
    write_atomically(path, &bytes)
}

/// The `__metadata__` entries that describe a model: what using it needs without flags.
pub(crate) fn describe_model(spec: &ModelSpec, dataset: DatasetKind) -> HashMap<String, String> {
    let widths: Vec<String> = spec.widths().iter().map(|w| w.to_string()).collect();
    HashMap::from([
        ("layer_sizes".to_string(), widths.join(",")),
        ("activation".to_string(), name_of(&spec.activation)),
        ("loss".to_string(), name_of(&spec.loss)),
        (
            "input_normalisation".to_string(),
            INPUT_NORMALISATION.to_string(),
        ),
        ("dataset".to_string(), dataset.name().to_string()),
        (
            "shadertrain_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ])
}

/// Reads back what `describe_model` wrote; a problem is described for the file's error.
pub(crate) fn read_model_description(
    metadata: &HashMap<String, String>,
) -> Result<(ModelSpec, DatasetKind), String> {
    let field = |key: &str| {
        metadata
            .get(key)
            .cloned()
            .ok_or_else(|| format!("__metadata__ lacks {key:?}: not written by shadertrain"))
    };
    let widths: Vec<usize> = field("layer_sizes")?
        .split(',')
        .map(|w| w.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| "__metadata__ layer_sizes is not a list of widths".to_string())?;
    if widths.len() < 2 {
        return Err(format!(
            "layer_sizes {widths:?} needs an input and an output width"
        ));
    }
    let activation_name = field("activation")?;
    let activation = Activation::from_str(&activation_name, true)
        .map_err(|_| format!("unknown activation {activation_name:?}"))?;
    let loss_name = field("loss")?;
    let loss =
        Loss::from_str(&loss_name, true).map_err(|_| format!("unknown loss {loss_name:?}"))?;
    let dataset_name = field("dataset")?;
    let dataset = DatasetKind::from_str(&dataset_name, true)
        .map_err(|_| format!("unknown dataset {dataset_name:?}"))?;
    let spec = ModelSpec {
        inputs: widths[0],
        hidden: widths[1..widths.len() - 1].to_vec(),
        classes: widths[widths.len() - 1],
        activation,
        loss,
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok((spec, dataset))
}

/// Parses a safetensors file and its `__metadata__` (whose absence means `foreign`); `bad`
/// words the errors for the file.
pub(crate) fn parse_safetensors<'a>(
    bytes: &'a [u8],
    bad: &dyn Fn(String) -> Error,
    foreign: &str,
) -> Result<(SafeTensors<'a>, HashMap<String, String>)> {
    let unreadable =
        |e: safetensors::SafeTensorError| bad(format!("not a readable safetensors file: {e}"));
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(unreadable)?;
    let file = SafeTensors::deserialize(bytes).map_err(unreadable)?;
    let metadata = header
        .metadata()
        .clone()
        .ok_or_else(|| bad(format!("no __metadata__: {foreign}")))?;
    Ok((file, metadata))
}

/// Reads a model written by `save_model`, checking every tensor against the metadata.
pub fn load_model(path: &Path) -> Result<SavedModel> {
    let bad = |problem: String| Error::ModelFile {
        path: path.to_path_buf(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (file, metadata) = parse_safetensors(&bytes, &bad, "not written by shadertrain")?;
    let (spec, dataset) = read_model_description(&metadata).map_err(bad)?;
    let widths = spec.widths();
    let layout = spec.layout();
    let mut params = vec![0.0f32; layout.total];
    for (i, layer) in layout.layers.iter().enumerate() {
        let read = |name: String, shape: Vec<usize>| -> Result<Vec<f32>> {
            let view = file
                .tensor(&name)
                .map_err(|_| bad(format!("tensor {name} is missing")))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            if view.shape() != shape.as_slice() {
                return Err(bad(format!(
                    "tensor {name} has shape {:?}, expected {shape:?} for layer sizes {widths:?}",
                    view.shape()
                )));
            }
            Ok(view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let weight = read(
            format!("layers.{i}.weight"),
            vec![layer.outputs, layer.inputs],
        )?;
        for out in 0..layer.outputs {
            for input in 0..layer.inputs {
                params[layer.weight_offset + input * layer.outputs + out] =
                    weight[out * layer.inputs + input];
            }
        }
        let bias = read(format!("layers.{i}.bias"), vec![layer.outputs])?;
        params[layer.bias_offset..layer.bias_offset + layer.outputs].copy_from_slice(&bias);
    }
    if file.len() != 2 * layout.layers.len() {
        return Err(bad(format!(
            "holds {} tensors; a model with layer sizes {widths:?} has {}",
            file.len(),
            2 * layout.layers.len()
        )));
    }
    Ok(SavedModel {
        spec,
        params,
        dataset,
    })
}
