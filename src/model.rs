//! What a model is: a multilayer perceptron's shape, its activation and loss, and where each
//! parameter lives in the flat parameter buffer.

use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
}

/// The activation of one dense layer as the kernels see it: the output layer has none (its
/// softmax is part of the loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerActivation {
    Identity,
    Hidden(Activation),
}

impl LayerActivation {
    /// The code `shaders/activation.wgsl` switches on.
    pub fn shader_code(self) -> u32 {
        match self {
            LayerActivation::Identity => 0,
            LayerActivation::Hidden(Activation::Relu) => 1,
            LayerActivation::Hidden(Activation::Sigmoid) => 2,
            LayerActivation::Hidden(Activation::Tanh) => 3,
        }
    }

    pub fn from_shader_code(code: u32) -> Option<Self> {
        [
            LayerActivation::Identity,
            LayerActivation::Hidden(Activation::Relu),
            LayerActivation::Hidden(Activation::Sigmoid),
            LayerActivation::Hidden(Activation::Tanh),
        ]
        .into_iter()
        .find(|a| a.shader_code() == code)
    }

    pub fn apply(self, z: f32) -> f32 {
        match self {
            LayerActivation::Identity => z,
            LayerActivation::Hidden(Activation::Relu) => z.max(0.0),
            LayerActivation::Hidden(Activation::Sigmoid) => 1.0 / (1.0 + (-z).exp()),
            LayerActivation::Hidden(Activation::Tanh) => z.tanh(),
        }
    }

    /// f'(z) expressed through the output a = f(z).
    pub fn derivative_from_output(self, a: f32) -> f32 {
        match self {
            LayerActivation::Identity => 1.0,
            LayerActivation::Hidden(Activation::Relu) => {
                if a > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            LayerActivation::Hidden(Activation::Sigmoid) => a * (1.0 - a),
            LayerActivation::Hidden(Activation::Tanh) => 1.0 - a * a,
        }
    }
}

/// The loss on the softmax of the last layer's outputs, against one-hot targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Loss {
    /// Categorical cross-entropy.
    Xent,
    /// Mean squared error between the softmax probabilities and the one-hot target.
    Mse,
}

/// A multilayer perceptron: inputs → hidden dense layers (with `activation`) → `classes` logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub inputs: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
    pub activation: Activation,
    pub loss: Loss,
}

impl ModelSpec {
    /// The reference model: 784-256(relu)-128(relu)-10, softmax + cross-entropy.
    pub fn reference() -> Self {
        ModelSpec {
            inputs: 784,
            hidden: vec![256, 128],
            classes: 10,
            activation: Activation::Relu,
            loss: Loss::Xent,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.inputs == 0 || self.classes < 2 || self.hidden.contains(&0) {
            return Err(Error::Config(format!(
                "layer widths must be positive and classes at least 2 (got inputs {}, hidden {:?}, classes {})",
                self.inputs, self.hidden, self.classes
            )));
        }
        Ok(())
    }

    /// Widths of every activation from the input to the logits.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths = vec![self.inputs];
        widths.extend(&self.hidden);
        widths.push(self.classes);
        widths
    }

    pub fn layer_activation(&self, layer: usize) -> LayerActivation {
        if layer == self.hidden.len() {
            LayerActivation::Identity
        } else {
            LayerActivation::Hidden(self.activation)
        }
    }

    pub fn layout(&self) -> ParamLayout {
        let widths = self.widths();
        let mut offset = 0;
        let layers = widths
            .windows(2)
            .map(|w| {
                let layer = DenseLayer {
                    inputs: w[0],
                    outputs: w[1],
                    weight_offset: offset,
                    bias_offset: offset + w[0] * w[1],
                };
                offset = layer.bias_offset + layer.outputs;
                layer
            })
            .collect();
        ParamLayout {
            layers,
            total: offset,
        }
    }
}

/// Where one dense layer's parameters sit in the flat buffer: the weight `W` as a row-major
/// `[inputs, outputs]` matrix (so `y = x W + b`), followed by the bias `b` of length `outputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseLayer {
    pub inputs: usize,
    pub outputs: usize,
    pub weight_offset: usize,
    pub bias_offset: usize,
}

/// The named offsets of every parameter in the flat parameter, gradient and moment buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    pub layers: Vec<DenseLayer>,
    pub total: usize,
}

impl ParamLayout {
    /// Keras' Dense default: Glorot uniform weights, U(±sqrt(6 / (fan_in + fan_out))), zero bias.
    pub fn glorot_uniform(&self, rng: &mut Rng) -> Vec<f32> {
        let mut params = vec![0.0; self.total];
        for layer in &self.layers {
            let limit = (6.0 / (layer.inputs + layer.outputs) as f32).sqrt();
            for w in &mut params[layer.weight_offset..layer.bias_offset] {
                *w = rng.uniform(-limit, limit);
            }
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_layout_packs_layers_back_to_back() {
        let layout = ModelSpec::reference().layout();
        assert_eq!(layout.layers.len(), 3);
        assert_eq!(layout.layers[1].weight_offset, 784 * 256 + 256);
        assert_eq!(
            layout.total,
            784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
        );
    }

    #[test]
    fn no_hidden_layer_is_a_linear_softmax_model() {
        let spec = ModelSpec {
            hidden: vec![],
            ..ModelSpec::reference()
        };
        assert_eq!(spec.layout().layers.len(), 1);
        assert_eq!(spec.layer_activation(0), LayerActivation::Identity);
    }

    #[test]
    fn glorot_respects_limits_and_zero_bias() {
        let layout = ModelSpec::reference().layout();
        let params = layout.glorot_uniform(&mut Rng::new(3));
        let first = layout.layers[0];
        let limit = (6.0f32 / (784.0 + 256.0)).sqrt();
        let weights = &params[first.weight_offset..first.bias_offset];
        assert!(weights.iter().all(|w| w.abs() <= limit));
        assert!(weights.iter().any(|w| w.abs() > 0.9 * limit));
        assert!(
            params[first.bias_offset..first.bias_offset + 256]
                .iter()
                .all(|&b| b == 0.0)
        );
    }
}
