//! The CLIP text encoder (transformers' `CLIPTextModel`), built from the folder's config.
//! candle's own CLIP keeps its config private and has no exact-GELU variant (SD 2 needs it),
//! so this is a small faithful copy with the checkpoint's own tensor names. SD 2's
//! "penultimate layer" needs no special case: its text_encoder folder already drops the last
//! layer (num_hidden_layers 23), so running every layer plus the final norm is right.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use crate::layers::Linear;

use crate::config::TextEncoderFileConfig;
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?,
            Activation::Gelu => xs.gelu_erf(),
        }
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            q: Linear::load(vb.pp("q_proj"), dim, dim)?,
            k: Linear::load(vb.pp("k_proj"), dim, dim)?,
            v: Linear::load(vb.pp("v_proj"), dim, dim)?,
            out: Linear::load(vb.pp("out_proj"), dim, dim)?,
            heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, dim) = xs.dims3()?;
        let hd = dim / self.heads;
        let split = |t: Tensor| {
            t.reshape((b, s, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q.forward(xs)? * (hd as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, dim))?;
        self.out.forward(&ctx)
    }
}

struct EncoderLayer {
    attn: Attention,
    ln1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ln2: LayerNorm,
    act: Activation,
}

impl EncoderLayer {
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let h = (self.attn.forward(&self.ln1.forward(xs)?, mask)? + xs)?;
        let m = self
            .fc2
            .forward(&self.act.apply(&self.fc1.forward(&self.ln2.forward(&h)?)?)?)?;
        m + h
    }
}

/// CLIP's text transformer: token ids `[B, S]` to hidden states `[B, S, D]`.
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s projection of the pooled output (no bias).
    text_projection: Option<Linear>,
    /// The id whose first position pools the sequence (transformers' rule: with the legacy
    /// `eos_token_id` 2, the position of the largest id, which is CLIP's end token).
    eos_token_id: Option<u32>,
}

/// What SDXL reads from a text encoder: one layer's hidden states and the pooled output.
pub struct TextEncoding {
    /// `[B, S, D]`: the hidden states of the requested layer.
    pub hidden: Tensor,
    /// `[B, P]`: the final layer's normed state at the end token, projected (with a projection).
    pub pooled: Option<Tensor>,
}

impl ClipTextModel {
    /// Accepts both the hub's `text_model.*` tensor names and the unprefixed names newer
    /// transformers versions save.
    pub fn new(vb: VarBuilder, cfg: &TextEncoderFileConfig) -> Result<Self> {
        let root = vb.clone();
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let d = cfg.hidden_size;
        let act = if cfg.hidden_act == "gelu" {
            Activation::Gelu
        } else {
            Activation::QuickGelu
        };
        let emb = vb.pp("embeddings");
        let token_embedding = embedding(cfg.vocab_size, d, emb.pp("token_embedding"))?;
        let position_embedding =
            embedding(cfg.max_position_embeddings, d, emb.pp("position_embedding"))?;
        let eps = cfg.layer_norm_eps;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("encoder.layers").pp(i.to_string());
                Ok(EncoderLayer {
                    attn: Attention::new(l.pp("self_attn"), d, cfg.num_attention_heads)?,
                    ln1: layer_norm(d, eps, l.pp("layer_norm1"))?,
                    fc1: Linear::load(l.pp("mlp.fc1"), d, cfg.intermediate_size)?,
                    fc2: Linear::load(l.pp("mlp.fc2"), cfg.intermediate_size, d)?,
                    ln2: layer_norm(d, eps, l.pp("layer_norm2"))?,
                    act,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(d, eps, vb.pp("final_layer_norm"))?;
        // The projection sits beside `text_model`, at the file's top level.
        let text_projection = match cfg.projection_dim {
            Some(p) if cfg.with_projection() => {
                Some(Linear::load_no_bias(root.pp("text_projection"), d, p)?)
            }
            _ => None,
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            eos_token_id: cfg.eos_token_id,
        })
    }

    /// Every layer and the final norm: the last hidden state (SD 1.x / 2.x conditioning).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let xs = self.run_layers(ids, self.layers.len())?;
        Ok(self.final_layer_norm.forward(&xs)?)
    }

    /// SDXL's reading: the hidden states after the penultimate layer (transformers'
    /// `hidden_states[-2]`, no final norm) and, when `pooled`, the projected end-token state
    /// of the full model (needs a projection, see `CLIPTextModelWithProjection`).
    pub fn encode_penultimate(&self, ids: &Tensor, pooled: bool) -> Result<TextEncoding> {
        let n = self.layers.len();
        if n < 2 {
            return Err(crate::error::EngineError::UnsupportedArchitecture(
                "a text encoder with fewer than 2 layers has no penultimate layer".into(),
            ));
        }
        let hidden = self.run_layers(ids, n - 1)?;
        if !pooled {
            return Ok(TextEncoding {
                hidden,
                pooled: None,
            });
        }
        let projection = self.text_projection.as_ref().ok_or_else(|| {
            crate::error::EngineError::UnsupportedArchitecture(
                "pooled text embeddings need CLIPTextModelWithProjection's text_projection".into(),
            )
        })?;
        let mask = causal_mask(ids.dim(1)?, hidden.dtype(), ids.device())?.broadcast_as((
            ids.dim(0)?,
            1,
            ids.dim(1)?,
            ids.dim(1)?,
        ))?;
        let last = self.layers[n - 1].forward(&hidden, &mask)?;
        let last = self.final_layer_norm.forward(&last)?;
        let rows = self.pool_positions(ids)?;
        let picked = rows
            .iter()
            .enumerate()
            .map(|(b, &pos)| last.get(b)?.get(pos))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = projection.forward(&Tensor::stack(&picked, 0)?)?;
        Ok(TextEncoding {
            hidden,
            pooled: Some(pooled),
        })
    }

    /// Where each sequence is pooled, as transformers' CLIPTextTransformer decides.
    fn pool_positions(&self, ids: &Tensor) -> Result<Vec<usize>> {
        let rows = ids.to_vec2::<u32>()?;
        Ok(rows
            .iter()
            .map(|row| match self.eos_token_id {
                Some(eos) if eos != 2 => row.iter().position(|&t| t == eos).unwrap_or(0),
                // Legacy configs: argmax of the ids (torch returns the first maximum).
                _ => {
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&t| t == max).unwrap_or(0)
                }
            })
            .collect())
    }

    /// Embeddings then the first `count` layers.
    fn run_layers(&self, ids: &Tensor, count: usize) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let positions = Tensor::arange(0u32, s as u32, ids.device())?.unsqueeze(0)?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(s, xs.dtype(), ids.device())?.broadcast_as((b, 1, s, s))?;
        for layer in &self.layers[..count] {
            xs = layer.forward(&xs, &mask)?;
        }
        Ok(xs)
    }
}

fn causal_mask(s: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (1, 1, s, s), device)?.to_dtype(dtype)
}
