// The hidden-layer activations, by code (src/model.rs `LayerActivation::shader_code`):
// 0 identity, 1 relu, 2 sigmoid, 3 tanh. The derivative is taken from the output a = f(z),
// which is all a backward pass needs:
//   relu' = (a > 0), sigmoid' = a (1 - a), tanh' = 1 - a^2, identity' = 1.

const IDENTITY: u32 = 0u;
const RELU: u32 = 1u;
const SIGMOID: u32 = 2u;
const TANH: u32 = 3u;

fn activate(activation: u32, z: f32) -> f32 {
    switch activation {
        case RELU: { return max(z, 0.0); }
        case SIGMOID: { return 1.0 / (1.0 + exp(-z)); }
        case TANH: { return tanh(z); }
        default: { return z; }
    }
}

fn activate4(activation: u32, z: vec4<f32>) -> vec4<f32> {
    switch activation {
        case RELU: { return max(z, vec4<f32>(0.0)); }
        case SIGMOID: { return 1.0 / (1.0 + exp(-z)); }
        case TANH: { return tanh(z); }
        default: { return z; }
    }
}

fn derivative_from_output(activation: u32, a: f32) -> f32 {
    switch activation {
        case RELU: { return select(0.0, 1.0, a > 0.0); }
        case SIGMOID: { return a * (1.0 - a); }
        case TANH: { return 1.0 - a * a; }
        default: { return 1.0; }
    }
}

fn derivative_from_output4(activation: u32, a: vec4<f32>) -> vec4<f32> {
    switch activation {
        case RELU: { return select(vec4<f32>(0.0), vec4<f32>(1.0), a > vec4<f32>(0.0)); }
        case SIGMOID: { return a * (1.0 - a); }
        case TANH: { return 1.0 - a * a; }
        default: { return vec4<f32>(1.0); }
    }
}
