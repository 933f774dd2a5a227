//! Trained models as safetensors files that PyTorch can load.
//!
//! Tensors `layers.{i}.weight` and `layers.{i}.bias`, F32, `i` counting the layers that have
//! parameters from 0 (inside a residual block `layers.{i}.branch.{j}` and
//! `layers.{i}.shortcut.{j}`, `j` counting likewise), in PyTorch's layouts: a dense layer's weight `[out, in]` (`nn.Linear`), a
//! convolution's `[out_channels, in_channels, kh, kw]` (`nn.Conv2d`; no bias where it has none),
//! biases `[out]`, a BatchNorm's `weight` (γ), `bias` (β), `running_mean`, `running_var` `[C]`
//! and `num_batches_tracked` (I64, as `nn.BatchNorm2d` keeps them: the training batches it
//! normalised, `Trainer::batches_tracked`). A dense
//! layer after a Flatten of a C × H × W tensor numbers its inputs as `nn.Flatten` does, (channel,
//! row, column), so `nn.Conv2d` … `nn.Flatten()` `nn.Linear` load the file with nothing but a
//! mapping of names. (In the flat parameter buffer a weight is a `[in, out]` matrix over
//! channels-last inputs; it is reordered on the way out and back.) `__metadata__` holds what is
//! needed to use the file without flags: the layer list, the input shape, the loss, the input
//! normalisation, the data (its name and the MD5 of each file), and the version of shadertrain that wrote it.

use std::collections::HashMap;
use std::path::Path;

use clap::ValueEnum;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::data::DataIdentity;
use crate::error::{Error, Result};
use crate::files::write_atomically;
use crate::input::Standardisation;
use crate::layers::kind::TensorMapping;
use crate::model::{Activation, LayerSpec, Loss, ModelSpec, Plan, Shape, TensorId, parse_layers};

/// How inputs are scaled before the first layer without `--normalize`.
pub const INPUT_NORMALISATION: &str = "pixel / 255 (u8 grey levels to [0, 1])";

/// How inputs are scaled before the first layer: `INPUT_NORMALISATION`, or the model's
/// standardisation (its figures also in `input_mean` and `input_std`, for programs).
fn input_normalisation(spec: &ModelSpec) -> String {
    match &spec.standardisation {
        None => INPUT_NORMALISATION.to_string(),
        Some(s) => format!(
            "(pixel / 255 - mean[c]) / std[c] for each channel c, {} (torchvision: \
             Normalize(mean, std) after ToTensor())",
            s.describe()
        ),
    }
}

/// Comma-separated figures, each the shortest text that reads back as the same f32.
fn figures(values: &[f32]) -> String {
    let texts: Vec<String> = values.iter().map(f32::to_string).collect();
    texts.join(",")
}

const FORMAT: &str = "shadertrain model";

/// A model read back from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedModel {
    pub spec: ModelSpec,
    /// Laid out as `spec.layout()` says.
    pub params: Vec<f32>,
    /// The data it was trained on.
    pub data: DataIdentity,
    /// The training batches its BatchNorms normalised (`num_batches_tracked`; 0 without any).
    pub batches_tracked: u64,
}

/// A model's weights read for `--init`, and the training batches its BatchNorms had seen.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialWeights {
    /// Laid out as the model's `layout()` says.
    pub params: Vec<f32>,
    /// `num_batches_tracked` (0 where the file holds no BatchNorm counter).
    pub batches_tracked: u64,
}

/// The command-line spelling of a flag value.
pub fn name_of<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// The BatchNorm counters PyTorch keeps beside the running statistics: `{name}.num_batches_tracked`.
fn batch_counter_names(plan: &Plan) -> Vec<String> {
    (plan.nodes.iter().enumerate())
        .filter(|&(n, _)| plan.layout.norms[n].is_some())
        .filter_map(|(_, node)| Some(format!("{}.num_batches_tracked", node.name.as_ref()?)))
        .collect()
}

/// The tensors of every layer with parameters, as the file holds them, in the plan's order:
/// each kind says its own (`LayerKind::file_tensors`).
fn tensor_mappings(spec: &ModelSpec) -> Vec<TensorMapping> {
    let plan = spec.plan().expect("a validated model");
    let layout = &plan.layout;
    let mut mappings = Vec::new();
    for (n, node) in plan.nodes.iter().enumerate() {
        let (Some(name), Some(kind)) = (&node.name, plan.layer(n).and_then(LayerSpec::kind)) else {
            continue;
        };
        let input = plan.tensors[node.inputs[0]].shape;
        let flattened_from = flattened_image(&plan, node.inputs[0]);
        mappings.extend(kind.file_tensors(
            name,
            input,
            layout.of_layer(n),
            layout.norms[n],
            flattened_from,
        ));
    }
    mappings
}

/// The C × H × W shape tensor `t` (a dense layer's input) was flattened from, through any
/// dropout, where PyTorch's order of its values differs from ours.
fn flattened_image(plan: &Plan, mut t: TensorId) -> Option<Shape> {
    loop {
        let producer = plan.tensors[t].producer?;
        let kind = plan.layer(producer)?.kind()?;
        if kind.keeps_order() {
            t = plan.nodes[producer].inputs[0];
            continue;
        }
        if !kind.moves_nothing() {
            return None;
        }
        let image = plan.tensors[plan.nodes[producer].inputs[0]].shape;
        let reordered = image.channels > 1 && image.height * image.width > 1;
        return reordered.then_some(image);
    }
}

/// Writes the model atomically; `batches_tracked`: the training batches its BatchNorms
/// normalised (`Trainer::batches_tracked`), written as PyTorch's `num_batches_tracked`.
pub fn save_model(
    path: &Path,
    spec: &ModelSpec,
    params: &[f32],
    data: &DataIdentity,
    batches_tracked: u64,
) -> Result<()> {
    let bytes = model_file_bytes(spec, params, data, batches_tracked).map_err(|problem| {
        Error::ModelFile {
            path: path.to_path_buf(),
            problem,
        }
    })?;
    write_atomically(path, &bytes)
}

/// The model file's bytes, as `save_model` writes them (the web page's download).
pub fn model_file_bytes(
    spec: &ModelSpec,
    params: &[f32],
    data: &DataIdentity,
    batches_tracked: u64,
) -> std::result::Result<Vec<u8>, String> {
    assert_eq!(
        params.len(),
        spec.layout().total,
        "parameters do not match the model"
    );
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = tensor_mappings(spec)
        .into_iter()
        .map(|t| {
            let bytes: Vec<u8> = t
                .positions()
                .flat_map(|p| params[p].to_le_bytes())
                .collect();
            (t.name, t.shape, bytes)
        })
        .collect();
    let mut metadata = describe_model(spec, data);
    metadata.insert("format".to_string(), FORMAT.to_string());
    // PyTorch's BatchNorm counts the batches it normalised in training (and averages by that
    // count where its momentum is None): every BatchNorm of ours sees every step.
    // Clamped: a count past i64 (a crafted --init file's) must not lose the run at its save.
    let counter = i64::try_from(batches_tracked)
        .unwrap_or(i64::MAX)
        .to_le_bytes();
    let plan = spec.plan().expect("a validated model");
    let counters = batch_counter_names(&plan)
        .into_iter()
        .map(|name| TensorView::new(Dtype::I64, Vec::new(), &counter).map(|view| (name, view)));
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name.clone(), view))
        })
        .chain(counters)
        .collect::<Result<Vec<_>, _>>()
        .expect("tensor shapes match their data");
    serialize_in_fixed_order(views, metadata)
}

/// `safetensors::serialize` with the header's keys (and `__metadata__`'s) in sorted order, so
/// that the same tensors and metadata always give the same bytes: the crate writes the
/// metadata from a `HashMap`, whose order changes from run to run.
pub(crate) fn serialize_in_fixed_order<'a>(
    views: Vec<(impl AsRef<str>, TensorView<'a>)>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let unwritable = |e: &dyn std::fmt::Display| format!("could not serialise: {e}");
    let views: Vec<(String, TensorView<'a>)> = views
        .into_iter()
        .map(|(name, view)| (name.as_ref().to_string(), view))
        .collect();
    let mut bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| unwritable(&e))?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = &bytes[8..8 + header_len];
    // serde_json's map is a BTreeMap: parsing and writing the header sorts every object's keys.
    let parsed: serde_json::Value = serde_json::from_slice(header).map_err(|e| unwritable(&e))?;
    let mut sorted = serde_json::to_vec(&parsed).map_err(|e| unwritable(&e))?;
    if sorted.len() > header_len {
        return Err(unwritable(&"the sorted header is longer than the original"));
    }
    sorted.resize(header_len, b' ');
    bytes[8..8 + header_len].copy_from_slice(&sorted);
    Ok(bytes)
}

/// The `__metadata__` entries that describe a model: what using it needs without flags.
pub(crate) fn describe_model(spec: &ModelSpec, data: &DataIdentity) -> HashMap<String, String> {
    let input = spec.input;
    let mut metadata = HashMap::from([
        ("layers".to_string(), spec.describe()),
        (
            "input_shape".to_string(),
            format!("{},{},{}", input.channels, input.height, input.width),
        ),
        ("loss".to_string(), name_of(&spec.loss)),
        ("input_normalisation".to_string(), input_normalisation(spec)),
        (
            "shadertrain_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    if let Some(s) = &spec.standardisation {
        metadata.insert("input_mean".to_string(), figures(&s.mean));
        metadata.insert("input_std".to_string(), figures(&s.std));
    }
    data.describe_in(&mut metadata);
    metadata
}

/// Reads back what `describe_model` wrote (or what versions before the layer list wrote:
/// `layer_sizes` and `activation` of an MLP); a problem is described for the file's error.
pub(crate) fn read_model_description(
    metadata: &HashMap<String, String>,
) -> Result<(ModelSpec, DataIdentity), String> {
    let field = |key: &str| {
        metadata
            .get(key)
            .cloned()
            .ok_or_else(|| format!("__metadata__ lacks {key:?}: not written by shadertrain"))
    };
    let loss_name = field("loss")?;
    let loss =
        Loss::from_str(&loss_name, true).map_err(|_| format!("unknown loss {loss_name:?}"))?;
    let data = DataIdentity::read_from(metadata)?;
    let spec = match metadata.get("layers") {
        Some(layers) => {
            let dims: Vec<usize> = field("input_shape")?
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| "__metadata__ input_shape is not C,H,W".to_string())?;
            let [channels, height, width] = dims[..] else {
                return Err("__metadata__ input_shape is not C,H,W".into());
            };
            ModelSpec {
                input: Shape::image(channels, height, width),
                // Every activation is named, so the default is never used.
                layers: parse_layers(layers, Activation::Relu)
                    .map_err(|e| format!("__metadata__ layers: {e}"))?,
                loss,
                standardisation: None,
            }
        }
        None => legacy_mlp(metadata, loss)?,
    };
    let read_figures = |key: &str| -> Result<Option<Vec<f32>>, String> {
        let Some(text) = metadata.get(key) else {
            return Ok(None);
        };
        let values = text.split(',').map(|v| v.trim().parse::<f32>());
        (values.collect::<Result<Vec<_>, _>>())
            .map(Some)
            .map_err(|_| format!("__metadata__ {key} is not a list of numbers"))
    };
    let spec = ModelSpec {
        standardisation: match (read_figures("input_mean")?, read_figures("input_std")?) {
            (None, None) => None,
            (Some(mean), Some(std)) => Some(Standardisation { mean, std }),
            _ => return Err("__metadata__ has one of input_mean and input_std only".into()),
        },
        ..spec
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok((spec, data))
}

/// An MLP as versions before the layer list described it: `layer_sizes` (input, hidden widths,
/// classes) and one `activation`.
fn legacy_mlp(metadata: &HashMap<String, String>, loss: Loss) -> Result<ModelSpec, String> {
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
    if widths.len() < 2 || widths.contains(&0) {
        return Err(format!(
            "layer_sizes {widths:?} needs positive input and output widths"
        ));
    }
    let activation_name = field("activation")?;
    let activation = Activation::from_str(&activation_name, true)
        .map_err(|_| format!("unknown activation {activation_name:?}"))?;
    Ok(ModelSpec::mlp(
        Shape::flat(widths[0]),
        &widths[1..widths.len() - 1],
        widths[widths.len() - 1],
        activation,
        loss,
    ))
}

/// Parses a safetensors file and its `__metadata__`, if it has one; `bad` words the errors for
/// the file.
pub(crate) fn parse_safetensors<'a>(
    bytes: &'a [u8],
    bad: &dyn Fn(String) -> Error,
) -> Result<(SafeTensors<'a>, Option<HashMap<String, String>>)> {
    let unreadable =
        |e: safetensors::SafeTensorError| bad(format!("not a readable safetensors file: {e}"));
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(unreadable)?;
    let file = SafeTensors::deserialize(bytes).map_err(unreadable)?;
    Ok((file, header.metadata().clone()))
}

/// Reads a model written by `save_model`, checking every tensor against its metadata.
pub fn load_model(path: &Path) -> Result<SavedModel> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    model_from_bytes(path, &bytes)
}

/// `load_model` on the file's bytes; `path` only names it in errors.
pub fn model_from_bytes(path: &Path, bytes: &[u8]) -> Result<SavedModel> {
    let bad = bad_file(path);
    let (file, metadata) = parse_safetensors(bytes, &bad)?;
    let metadata =
        metadata.ok_or_else(|| bad("no __metadata__: not written by shadertrain".into()))?;
    let (spec, data) = read_model_description(&metadata).map_err(&bad)?;
    let InitialWeights {
        params,
        batches_tracked,
    } = read_parameters(&file, &spec, &bad)?;
    Ok(SavedModel {
        spec,
        params,
        data,
        batches_tracked,
    })
}

/// The weights of a file for the model `spec` (`--init`): a file shadertrain wrote must describe
/// the same layers on the same input; a file without shadertrain's metadata (as PyTorch's
/// `save_file(model.state_dict())` writes it, under our tensor names) must hold every tensor
/// `spec` has, in name and shape.
pub fn load_parameters_for(path: &Path, spec: &ModelSpec) -> Result<InitialWeights> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parameters_from_bytes(path, &bytes, spec)
}

/// `load_parameters_for` on the file's bytes; `path` only names it in errors.
pub fn parameters_from_bytes(
    path: &Path,
    bytes: &[u8],
    spec: &ModelSpec,
) -> Result<InitialWeights> {
    let bad = bad_file(path);
    let (file, metadata) = parse_safetensors(bytes, &bad)?;
    let ours = metadata.filter(|m| m.contains_key("layers") || m.contains_key("layer_sizes"));
    if let Some(metadata) = ours {
        let (saved, _) = read_model_description(&metadata).map_err(&bad)?;
        if saved.describe() != spec.describe() || saved.input.len() != spec.input.len() {
            return Err(bad(format!(
                "it holds the model {} on inputs of {}, not {} on inputs of {}",
                saved.describe(),
                saved.input,
                spec.describe(),
                spec.input
            )));
        }
        return read_parameters(&file, &saved, &bad);
    }
    read_parameters(&file, spec, &bad)
}

fn bad_file(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |problem| Error::ModelFile {
        path: path.to_path_buf(),
        problem,
    }
}

/// Every tensor of `spec` from `file`, into the flat buffer's layout, and the BatchNorms' batch
/// counter; a missing, extra or misshapen tensor is an error naming it.
fn read_parameters(
    file: &SafeTensors<'_>,
    spec: &ModelSpec,
    bad: &dyn Fn(String) -> Error,
) -> Result<InitialWeights> {
    // The model's tensors of another type first: their byte counts would mislead the count
    // below. (A tensor that is not the model's is named as such further down; the mappings cost
    // nothing until their positions are read, once the file is known to hold enough bytes.)
    let plan = spec.plan().map_err(|e| bad(e.to_string()))?;
    let layout = &plan.layout;
    let mappings = tensor_mappings(spec);
    let counters = batch_counter_names(&plan);
    for name in mappings.iter().map(|t| &t.name) {
        let Ok(view) = file.tensor(name) else {
            continue;
        };
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor {name} holds {} values; shadertrain reads F32 (in PyTorch, convert with \
                 .float() before saving)",
                view.dtype()
            )));
        }
    }
    // Checked before allocating: metadata can describe any size, the file holds what it holds.
    let count = layout.parameter_count() + layout.state();
    let held: usize = file.tensors().iter().map(|(_, t)| t.data().len()).sum();
    if held / 4 < count {
        let missing = (mappings.iter().map(|t| &t.name))
            .find(|name| file.tensor(name).is_err())
            .map(|name| format!("tensor {name} is missing; "))
            .unwrap_or_default();
        return Err(bad(format!(
            "{missing}its tensors hold {held} bytes, too few for the {count} parameters of the \
             model {}",
            spec.describe()
        )));
    }
    let mut params = vec![0.0f32; layout.total];
    for t in &mappings {
        let view = file.tensor(&t.name).map_err(|_| {
            bad(format!(
                "tensor {} is missing (the model is {})",
                t.name,
                spec.describe()
            ))
        })?;
        if view.shape() != t.shape.as_slice() {
            return Err(bad(format!(
                "tensor {} has shape {:?}, expected {:?} for the model {}",
                t.name,
                view.shape(),
                t.shape,
                spec.describe()
            )));
        }
        for (bytes, position) in view.data().chunks_exact(4).zip(t.positions()) {
            params[position] = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
    }
    // PyTorch's batch counters may be there or not (files of PyTorch's may leave them out).
    let counter_of = |name: &String| -> Result<Option<u64>> {
        let Ok(view) = file.tensor(name) else {
            return Ok(None);
        };
        // PyTorch writes one I64; a state dict converted whole with .float() (as the message
        // above asks of the weights) holds it as a float.
        let data = view.data();
        let whole =
            |value: f64| (value.fract() == 0.0 && value < i64::MAX as f64).then_some(value as i64);
        let value = match (view.dtype(), view.shape()) {
            (Dtype::I64, []) if data.len() == 8 => {
                Some(i64::from_le_bytes(data.try_into().expect("8 bytes")))
            }
            (Dtype::I32, []) if data.len() == 4 => {
                Some(i32::from_le_bytes(data.try_into().expect("4 bytes")).into())
            }
            (Dtype::F32, []) if data.len() == 4 => {
                whole(f32::from_le_bytes(data.try_into().expect("4 bytes")).into())
            }
            (Dtype::F64, []) if data.len() == 8 => {
                whole(f64::from_le_bytes(data.try_into().expect("8 bytes")))
            }
            (dtype, shape) => {
                return Err(bad(format!(
                    "tensor {name} is {dtype} of shape {shape:?}; a BatchNorm's batch counter \
                     is one number (I64 in PyTorch)"
                )));
            }
        };
        match value.and_then(|v| u64::try_from(v).ok()) {
            Some(count) => Ok(Some(count)),
            None => Err(bad(format!(
                "tensor {name} holds no count of batches (a whole number from 0)"
            ))),
        }
    };
    let held_counters: Vec<u64> = (counters.iter())
        .map(counter_of)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let counters_held = held_counters.len();
    if file.len() != mappings.len() + counters_held {
        let mut extra: Vec<String> = file
            .names()
            .into_iter()
            .filter(|name| !mappings.iter().any(|t| t.name == **name))
            .filter(|name| !counters.iter().any(|c| c == *name))
            .map(|name| name.to_string())
            .collect();
        extra.sort();
        return Err(bad(format!(
            "holds {} tensors; the model {} has {} (not its: {})",
            file.len(),
            spec.describe(),
            mappings.len(),
            extra.join(", ")
        )));
    }
    // Every BatchNorm of ours counts the same steps; of a file whose counters differ (a
    // PyTorch model whose BatchNorms were not all trained alike), the largest.
    let batches_tracked = held_counters.into_iter().max().unwrap_or(0);
    Ok(InitialWeights {
        params,
        batches_tracked,
    })
}
