//! Saved models: safetensors in PyTorch's nn.Linear layout, read back exactly, and every kind of
//! bad file refused with a message naming it.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use shadertrain::Error;
use shadertrain::data::{DataIdentity, DatasetKind};
use shadertrain::model::{Activation, Loss, ModelSpec, Shape, parse_layers};
use shadertrain::model_file::{load_model, load_parameters_for, save_model};
use shadertrain::rng::Rng;

fn spec() -> ModelSpec {
    ModelSpec::mlp(Shape::flat(12), &[7, 5], 3, Activation::Tanh, Loss::Mse)
}

fn random_params(spec: &ModelSpec) -> Vec<f32> {
    let mut rng = Rng::new(21);
    (0..spec.layout().total)
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect()
}

#[test]
fn save_then_load_is_exact_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let params = random_params(&spec());
    save_model(
        &path,
        &spec(),
        &params,
        &DataIdentity::published(DatasetKind::FashionMnist),
        0,
    )
    .unwrap();
    let loaded = load_model(&path).unwrap();
    assert_eq!(loaded.spec, spec());
    assert_eq!(loaded.params, params);
    assert_eq!(
        loaded.data,
        DataIdentity::published(DatasetKind::FashionMnist)
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["model.safetensors"]);
}

#[test]
fn tensors_follow_pytorch_linear_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let spec = spec();
    let params = random_params(&spec);
    save_model(
        &path,
        &spec,
        &params,
        &DataIdentity::published(DatasetKind::Mnist),
        0,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let layout = spec.layout();
    for (i, layer) in layout.matrices.iter().enumerate() {
        let weight = file.tensor(&format!("layers.{i}.weight")).unwrap();
        assert_eq!(weight.shape(), &[layer.outputs, layer.inputs]);
        assert_eq!(weight.dtype(), Dtype::F32);
        let values: Vec<f32> = weight
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        // PyTorch: y = x Wᵀ + b with W [out, in]; ours: y = x W with W [in, out].
        for out in 0..layer.outputs {
            for input in 0..layer.inputs {
                assert_eq!(
                    values[out * layer.inputs + input],
                    params[layer.weight_offset + input * layer.outputs + out]
                );
            }
        }
        assert_eq!(
            file.tensor(&format!("layers.{i}.bias")).unwrap().shape(),
            &[layer.outputs]
        );
    }
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap();
    assert_eq!(metadata["layers"], "dense7:tanh,dense5:tanh,dense3:linear");
    assert_eq!(metadata["input_shape"], "12,1,1");
    assert_eq!(metadata["loss"], "mse");
    assert_eq!(metadata["dataset"], "mnist");
    assert!(
        metadata.contains_key("input_normalisation")
            && metadata.contains_key("shadertrain_version")
    );
}

fn load_error(path: &Path) -> String {
    let err = load_model(path).expect_err("a bad model file must be refused");
    assert!(
        matches!(err, Error::ModelFile { .. } | Error::Io { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    message
}

/// A safetensors file with the reference metadata but the given tensors.
fn foreign(path: &Path, tensors: Vec<(&str, Dtype, Vec<usize>)>, with_metadata: bool) {
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, dtype, shape)| {
            let bytes = vec![0u8; shape.iter().product::<usize>() * dtype.bitsize() / 8];
            (name.to_string(), dtype, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let metadata = with_metadata.then(|| {
        HashMap::from([
            ("layer_sizes".to_string(), "4,2".to_string()),
            ("activation".to_string(), "relu".to_string()),
            ("loss".to_string(), "xent".to_string()),
            ("dataset".to_string(), "mnist".to_string()),
        ])
    });
    std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
}

#[test]
fn bad_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    save_model(
        &good,
        &spec(),
        &random_params(&spec()),
        &DataIdentity::published(DatasetKind::Mnist),
        0,
    )
    .unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    assert!(load_error(&truncated).contains("not a readable safetensors file"));

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a model at all").unwrap();
    assert!(load_error(&garbage).contains("not a readable safetensors file"));

    let missing = dir.path().join("absent.safetensors");
    load_error(&missing);

    let cases = [
        (
            "no-metadata",
            vec![
                ("layers.0.weight", Dtype::F32, vec![2, 4]),
                ("layers.0.bias", Dtype::F32, vec![2]),
            ],
            false,
            "__metadata__",
        ),
        (
            "wrong-dtype",
            vec![
                ("layers.0.weight", Dtype::F64, vec![2, 4]),
                ("layers.0.bias", Dtype::F32, vec![2]),
            ],
            true,
            "F64",
        ),
        (
            "wrong-shape",
            vec![
                ("layers.0.weight", Dtype::F32, vec![4, 2]),
                ("layers.0.bias", Dtype::F32, vec![2]),
            ],
            true,
            "shape",
        ),
        (
            "missing-tensor",
            vec![("layers.0.weight", Dtype::F32, vec![2, 4])],
            true,
            "layers.0.bias is missing",
        ),
        (
            "extra-tensor",
            vec![
                ("layers.0.weight", Dtype::F32, vec![2, 4]),
                ("layers.0.bias", Dtype::F32, vec![2]),
                ("layers.1.weight", Dtype::F32, vec![2, 2]),
            ],
            true,
            "holds 3 tensors",
        ),
    ];
    for (name, tensors, with_metadata, expected) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        foreign(&path, tensors, with_metadata);
        let message = load_error(&path);
        assert!(
            message.contains(expected),
            "{name}: {message:?} should mention {expected:?}"
        );
    }
}

/// Metadata can describe a model of any size; the file holds what it holds. Sizes no kernel can
/// index, or more parameters than the tensors hold, are refused before anything that large is
/// allocated (the first case aborted the process out of memory).
#[test]
fn absurd_sizes_in_metadata_are_refused_without_allocating_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "1,100000,100000",
            "flatten,dense10:linear",
            "larger than a kernel can index",
        ),
        (
            "1,4294967296,4294967296",
            "flatten,dense10:linear",
            "larger than a kernel can index",
        ),
        (
            "1,28,28",
            "flatten,dense4000000000:relu,dense10:linear",
            "more weights than",
        ),
        (
            "1,28,28",
            "flatten,dense1000000:relu,dense10:linear",
            "tensor layers.0.bias is missing; its tensors hold 16 bytes, too few",
        ),
    ];
    for (input, layers, expected) in cases {
        let path = dir.path().join("absurd.safetensors");
        let bytes = vec![0u8; 16];
        let view = TensorView::new(Dtype::F32, vec![4], &bytes).unwrap();
        let metadata = HashMap::from([
            ("layers".to_string(), layers.to_string()),
            ("input_shape".to_string(), input.to_string()),
            ("loss".to_string(), "xent".to_string()),
            ("dataset".to_string(), "mnist".to_string()),
        ]);
        let file = safetensors::serialize([("layers.0.weight", view)], Some(metadata)).unwrap();
        std::fs::write(&path, file).unwrap();
        let message = load_error(&path);
        assert!(message.contains(expected), "{input} {layers}: {message}");
    }
}

#[cfg(unix)]
#[test]
fn written_files_are_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_model(
        &path,
        &spec(),
        &random_params(&spec()),
        &DataIdentity::published(DatasetKind::Mnist),
        0,
    )
    .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

/// A small convnet: one convolution (4 filters, 3×3 on 1×8×8), a pool, a dense layer.
fn convnet() -> ModelSpec {
    let spec = ModelSpec {
        input: Shape::image(1, 8, 8),
        layers: parse_layers(
            "conv4k3,maxpool2,flatten,dropout0.5,dense3",
            Activation::Relu,
        )
        .unwrap(),
        loss: Loss::Xent,
        standardisation: None,
    };
    spec.validate().unwrap();
    spec
}

/// The tensors of a file, without its metadata, as PyTorch's `save_file(model.state_dict())`
/// would write them.
fn without_metadata(from: &Path, to: &Path, reshape: Option<(&str, Vec<usize>)>) {
    let bytes = std::fs::read(from).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = match &reshape {
                Some((target, shape)) if *target == name => shape.clone(),
                _ => view.shape().to_vec(),
            };
            let mut data = view.data().to_vec();
            data.resize(shape.iter().product::<usize>() * 4, 0);
            (name, shape, data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(to, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn convnet_tensors_have_pytorch_shapes_and_load_without_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.safetensors");
    let spec = convnet();
    let params = random_params(&spec);
    save_model(
        &ours,
        &spec,
        &params,
        &DataIdentity::published(DatasetKind::Mnist),
        0,
    )
    .unwrap();
    assert_eq!(load_model(&ours).unwrap().spec, spec);
    let params_saved = load_model(&ours).unwrap().params;
    assert_eq!(
        params_saved[..36],
        params[..36],
        "the convolution's weights"
    );

    let bytes = std::fs::read(&ours).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    // nn.Conv2d(1, 4, 3): weight [out, in, kh, kw]; after two pooled 3×3 rows and columns,
    // nn.Flatten gives 4·3·3 = 36 features for nn.Linear(36, 3).
    let shapes: Vec<(String, Vec<usize>)> = [
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.1.bias",
    ]
    .iter()
    .map(|name| {
        (
            name.to_string(),
            file.tensor(name).unwrap().shape().to_vec(),
        )
    })
    .collect();
    assert_eq!(
        shapes,
        vec![
            ("layers.0.weight".to_string(), vec![4, 1, 3, 3]),
            ("layers.0.bias".to_string(), vec![4]),
            ("layers.1.weight".to_string(), vec![3, 36]),
            ("layers.1.bias".to_string(), vec![3]),
        ]
    );
    assert_eq!(file.len(), 4);

    let pytorch = dir.path().join("pytorch.safetensors");
    without_metadata(&ours, &pytorch, None);
    // (The flat buffer pads each layer's slice; padding is not saved, so compare with the load.)
    let saved = load_model(&ours).unwrap().params;
    assert_eq!(load_parameters_for(&pytorch, &spec).unwrap().params, saved);
    // `load_model` needs the metadata (it says what the model is); `--init` takes it from flags.
    assert!(load_error(&pytorch).contains("__metadata__"));

    let misshapen = dir.path().join("misshapen.safetensors");
    without_metadata(
        &ours,
        &misshapen,
        Some(("layers.0.weight", vec![4, 1, 5, 5])),
    );
    let message = load_parameters_for(&misshapen, &spec)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("layers.0.weight")
            && message.contains("[4, 1, 5, 5]")
            && message.contains("[4, 1, 3, 3]")
            && message.contains("misshapen.safetensors"),
        "{message}"
    );
}
