//! The KL autoencoder between pixels and latents (diffusers `AutoencoderKL`), built from
//! [`crate::blocks`]. Our own rather than candle's: candle's hides the encoder's mean (it only
//! offers a sample from its unseedable RNG), and ours runs on our kernels.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::blocks::{Downsample, ResnetBlock, Upsample, VaeAttention};
use crate::config::VaeFileConfig;
use crate::error::Result;
use crate::layers::{Conv2d, GroupNorm};

type CResult<T> = candle_core::Result<T>;

const EPS: f64 = 1e-6;

/// resnet, attention, resnet at the lowest resolution.
struct MidBlock {
    resnet0: ResnetBlock,
    attention: VaeAttention,
    resnet1: ResnetBlock,
}

impl MidBlock {
    fn load(vb: VarBuilder, channels: usize, groups: usize) -> CResult<Self> {
        Ok(Self {
            resnet0: ResnetBlock::load(
                vb.pp("resnets.0"),
                channels,
                channels,
                None,
                groups,
                EPS,
                1.0,
            )?,
            attention: VaeAttention::load(vb.pp("attentions.0"), channels, groups, EPS)?,
            resnet1: ResnetBlock::load(
                vb.pp("resnets.1"),
                channels,
                channels,
                None,
                groups,
                EPS,
                1.0,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let x = self.resnet0.forward(x, None)?;
        let x = self.attention.forward(&x)?;
        self.resnet1.forward(&x, None)
    }
}

fn resnets(
    vb: VarBuilder,
    count: usize,
    cin: usize,
    cout: usize,
    groups: usize,
) -> CResult<Vec<ResnetBlock>> {
    (0..count)
        .map(|j| {
            ResnetBlock::load(
                vb.pp("resnets").pp(j),
                if j == 0 { cin } else { cout },
                cout,
                None,
                groups,
                EPS,
                1.0,
            )
        })
        .collect()
}

struct Encoder {
    conv_in: Conv2d,
    down: Vec<(Vec<ResnetBlock>, Option<Downsample>)>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeFileConfig) -> CResult<Self> {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let mut down = Vec::with_capacity(ch.len());
        for (i, &out) in ch.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let input = if i == 0 { ch[0] } else { ch[i - 1] };
            let sampler = (i + 1 < ch.len())
                .then(|| Downsample::load(vb.pp("downsamplers.0"), out, 0))
                .transpose()?;
            down.push((
                resnets(vb, cfg.layers_per_block, input, out, groups)?,
                sampler,
            ));
        }
        let last = *ch.last().expect("validated non-empty");
        Ok(Self {
            conv_in: Conv2d::load(vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down,
            mid: MidBlock::load(vb.pp("mid_block"), last, groups)?,
            norm_out: GroupNorm::load(vb.pp("conv_norm_out"), groups, last, EPS)?,
            conv_out: Conv2d::load(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for (resnets, sampler) in &self.down {
            for r in resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(d) = sampler {
                x = d.forward(&x)?;
            }
        }
        let x = self.mid.forward(&x)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<(Vec<ResnetBlock>, Option<Upsample>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeFileConfig) -> CResult<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let first = cfg.block_out_channels[0];
        let groups = cfg.norm_num_groups;
        let mut up = Vec::with_capacity(rev.len());
        for (i, &out) in rev.iter().enumerate() {
            let vb = vb.pp("up_blocks").pp(i);
            let input = if i == 0 { rev[0] } else { rev[i - 1] };
            let sampler = (i + 1 < rev.len())
                .then(|| Upsample::load(vb.pp("upsamplers.0"), out))
                .transpose()?;
            up.push((
                resnets(vb, cfg.layers_per_block + 1, input, out, groups)?,
                sampler,
            ));
        }
        Ok(Self {
            conv_in: Conv2d::load(vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?,
            mid: MidBlock::load(vb.pp("mid_block"), rev[0], groups)?,
            up,
            norm_out: GroupNorm::load(vb.pp("conv_norm_out"), groups, first, EPS)?,
            conv_out: Conv2d::load(vb.pp("conv_out"), first, cfg.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut x = self.mid.forward(&self.conv_in.forward(x)?)?;
        for (resnets, sampler) in &self.up {
            for r in resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(u) = sampler {
                x = u.forward(&x, None)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}

/// The autoencoder, with latents in the UNet's scale (multiplied by `scaling_factor`).
pub struct Autoencoder {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    latent_channels: usize,
    scaling_factor: f64,
}

impl Autoencoder {
    pub fn new(vb: VarBuilder, cfg: &VaeFileConfig) -> Result<Self> {
        let l = cfg.latent_channels;
        let quant_conv = cfg
            .use_quant_conv
            .then(|| Conv2d::load(vb.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0))
            .transpose()?;
        let post_quant_conv = cfg
            .use_post_quant_conv
            .then(|| Conv2d::load(vb.pp("post_quant_conv"), l, l, 1, 1, 0))
            .transpose()?;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg)?,
            quant_conv,
            post_quant_conv,
            latent_channels: l,
            scaling_factor: cfg.scaling_factor,
        })
    }

    /// Pixels in [-1, 1], `[N, 3, H, W]` → the mean of the latent distribution, scaled.
    pub fn encode_mean(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut moments = self.encoder.forward(pixels)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        let mean = moments.narrow(1, 0, self.latent_channels)?;
        Ok((mean * self.scaling_factor)?)
    }

    /// Scaled latents → pixels in [-1, 1] (unclamped).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let mut xs = (latents / self.scaling_factor)?;
        if let Some(p) = &self.post_quant_conv {
            xs = p.forward(&xs)?;
        }
        Ok(self.decoder.forward(&xs)?)
    }
}
