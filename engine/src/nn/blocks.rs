//! The building blocks shared by the UNet and the VAE, named and wired as in diffusers
//! (`ResnetBlock2D`, `Downsample2D`, `Upsample2D`, `Transformer2DModel`, the VAE's `Attention`),
//! so a diffusers checkpoint's tensor names load directly. Built on [`crate::layers`].

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::layers::{self, Conv2d, GroupNorm, Linear};

type Result<T> = candle_core::Result<T>;

/// diffusers `ResnetBlock2D` with the default time-embedding scale-shift.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    output_scale: f64,
}

impl ResnetBlock {
    pub fn load(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(vb.pp("norm1"), groups, cin, eps)?,
            conv1: Conv2d::load(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj: temb
                .map(|t| Linear::load(vb.pp("time_emb_proj"), t, cout))
                .transpose()?,
            norm2: GroupNorm::load(vb.pp("norm2"), groups, cout, eps)?,
            conv2: Conv2d::load(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            shortcut: (cin != cout)
                .then(|| Conv2d::load(vb.pp("conv_shortcut"), cin, cout, 1, 1, 0))
                .transpose()?,
            output_scale,
        })
    }

    /// `temb` is the already-SiLU'd time embedding `[B, T]` (one SiLU per UNet call).
    pub fn forward(&self, x: &Tensor, silu_temb: Option<&Tensor>) -> Result<Tensor> {
        let normed = self.norm1.forward_silu(x)?;
        // The time embedding's projection is added as conv1's per-channel offset, and the
        // skip connection as conv2's starting value (fused on the CPU fast path).
        let h = match (&self.time_emb_proj, silu_temb) {
            (Some(proj), Some(t)) => self.conv1.forward_add(&normed, &proj.forward(t)?)?,
            _ => self.conv1.forward(&normed)?,
        };
        let skip = match &self.shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = self
            .conv2
            .forward_add(&self.norm2.forward_silu(&h)?, &skip)?;
        if self.output_scale == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale
        }
    }
}

/// diffusers `Downsample2D` with a convolution: stride 2, and with `padding == 0` the input is
/// padded by one on the right and bottom only (the VAE encoder).
#[derive(Debug)]
pub struct Downsample {
    conv: Conv2d,
    asymmetric: bool,
}

impl Downsample {
    pub fn load(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(vb.pp("conv"), channels, channels, 3, 2, padding)?,
            asymmetric: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.asymmetric {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// diffusers `Upsample2D`: nearest 2x (or to the skip connection's size), then a 3x3 conv.
#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn load(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        self.conv.forward(&layers::upsample_nearest(x, size)?)
    }
}

/// diffusers `Attention` as used by transformer blocks (self- or cross-attention).
#[derive(Debug)]
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl CrossAttention {
    fn load(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: Linear::load_no_bias(vb.pp("to_q"), dim, inner)?,
            to_k: Linear::load_no_bias(vb.pp("to_k"), context_dim, inner)?,
            to_v: Linear::load_no_bias(vb.pp("to_v"), context_dim, inner)?,
            to_out: Linear::load(vb.pp("to_out.0"), inner, dim)?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        self.to_out.forward(&layers::attention(
            &q,
            &k,
            &v,
            self.heads,
            self.scale,
            self.to_q.precision(),
        )?)
    }
}

/// diffusers `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward.
#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn load(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner_ff = dim * 4;
        Ok(Self {
            norm1: layers::layer_norm(vb.pp("norm1"), dim, 1e-5)?,
            attn1: CrossAttention::load(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: layers::layer_norm(vb.pp("norm2"), dim, 1e-5)?,
            attn2: CrossAttention::load(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: layers::layer_norm(vb.pp("norm3"), dim, 1e-5)?,
            ff_in: Linear::load(vb.pp("ff.net.0.proj"), dim, inner_ff * 2)?,
            ff_out: Linear::load(vb.pp("ff.net.2"), inner_ff, dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        let ff = self.ff_out.forward(&layers::geglu(
            &self.ff_in.forward(&self.norm3.forward(&x)?)?,
        )?)?;
        ff + x
    }
}

#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers `Transformer2DModel` (the UNet's spatial transformer).
#[derive(Debug)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        context_dim: usize,
        groups: usize,
        linear_projection: bool,
    ) -> Result<Self> {
        if heads == 0 || !channels.is_multiple_of(heads) {
            candle_core::bail!("transformer: {channels} channels do not split into {heads} heads");
        }
        let head_dim = channels / heads;
        let projection = |vb: VarBuilder| -> Result<Projection> {
            Ok(if linear_projection {
                Projection::Linear(Linear::load(vb, channels, channels)?)
            } else {
                Projection::Conv(Conv2d::load(vb, channels, channels, 1, 1, 0)?)
            })
        };
        let blocks = (0..depth)
            .map(|i| {
                TransformerBlock::load(
                    vb.pp("transformer_blocks").pp(i),
                    channels,
                    context_dim,
                    heads,
                    head_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::load(vb.pp("norm"), groups, channels, 1e-6)?,
            proj_in: projection(vb.pp("proj_in"))?,
            blocks,
            proj_out: projection(vb.pp("proj_out"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => layers::to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(linear) => linear.forward(&layers::to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&layers::from_tokens(&tokens, h, w)?)?,
            Projection::Linear(linear) => layers::from_tokens(&linear.forward(&tokens)?, h, w)?,
        };
        out + x
    }
}

/// The VAE's single-head self-attention over pixels (diffusers `Attention` with group norm).
#[derive(Debug)]
pub struct VaeAttention {
    norm: GroupNorm,
    attention: CrossAttention,
}

impl VaeAttention {
    pub fn load(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        // Checkpoints converted from old diffusers name the projections query/key/value.
        let (q, k, v, o) = if vb.contains_tensor("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        let norm_name = if vb.contains_tensor("group_norm.weight") {
            "group_norm"
        } else {
            "norm"
        };
        Ok(Self {
            norm: GroupNorm::load(vb.pp(norm_name), groups, channels, eps)?,
            attention: CrossAttention {
                to_q: Linear::load_flexible(vb.pp(q), channels, channels)?,
                to_k: Linear::load_flexible(vb.pp(k), channels, channels)?,
                to_v: Linear::load_flexible(vb.pp(v), channels, channels)?,
                to_out: Linear::load_flexible(vb.pp(o), channels, channels)?,
                heads: 1,
                scale: 1.0 / (channels as f64).sqrt(),
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let tokens = layers::to_tokens(&self.norm.forward(x)?)?;
        let out = self.attention.forward(&tokens, None)?;
        layers::from_tokens(&out, h, w)? + x
    }
}
