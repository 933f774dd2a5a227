//! Saved models: safetensors in PyTorch's nn.Linear layout, read back exactly, and every kind of
//! bad file refused with a message naming it.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use shadertrain::Error;
use shadertrain::data::DatasetKind;
use shadertrain::model::{Activation, Loss, ModelSpec, Shape};
use shadertrain::model_file::{load_model, save_model};
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
    save_model(&path, &spec(), &params, DatasetKind::FashionMnist).unwrap();
    let loaded = load_model(&path).unwrap();
    assert_eq!(loaded.spec, spec());
    assert_eq!(loaded.params, params);
    assert_eq!(loaded.dataset, DatasetKind::FashionMnist);
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
    save_model(&path, &spec, &params, DatasetKind::Mnist).unwrap();
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
    save_model(&good, &spec(), &random_params(&spec()), DatasetKind::Mnist).unwrap();
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

#[cfg(unix)]
#[test]
fn written_files_are_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_model(&path, &spec(), &random_params(&spec()), DatasetKind::Mnist).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}
