//! The KL autoencoder between pixels and latents. candle's `AutoEncoderKL` hides the encoder's
//! mean (it only offers a sample drawn from its unseedable RNG), so this assembles the same
//! network from candle's public blocks and exposes the deterministic mean for image-to-image.

use candle_core::{Module, Tensor};
use candle_nn::{conv2d, group_norm, Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
    UpDecoderBlock2D, UpDecoderBlock2DConfig,
};

use crate::config::VaeFileConfig;
use crate::error::Result;

const PAD1: Conv2dConfig = Conv2dConfig {
    padding: 1,
    stride: 1,
    dilation: 1,
    groups: 1,
    cudnn_fwd_algo: None,
};

fn mid_block(
    vb: VarBuilder,
    channels: usize,
    groups: usize,
) -> candle_core::Result<UNetMidBlock2D> {
    let cfg = UNetMidBlock2DConfig {
        resnet_eps: 1e-6,
        output_scale_factor: 1.,
        attn_num_head_channels: None,
        resnet_groups: Some(groups),
        ..Default::default()
    };
    UNetMidBlock2D::new(vb, channels, None, cfg)
}

struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownEncoderBlock2D>,
    mid: UNetMidBlock2D,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeFileConfig) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let conv_in = conv2d(cfg.in_channels, ch[0], 3, PAD1, vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(ch.len());
        for (i, out) in ch.iter().enumerate() {
            let block_cfg = DownEncoderBlock2DConfig {
                num_layers: cfg.layers_per_block,
                resnet_eps: 1e-6,
                resnet_groups: cfg.norm_num_groups,
                add_downsample: i + 1 < ch.len(),
                downsample_padding: 0,
                ..Default::default()
            };
            let input = if i == 0 { ch[0] } else { ch[i - 1] };
            down.push(DownEncoderBlock2D::new(
                vb.pp("down_blocks").pp(i.to_string()),
                input,
                *out,
                block_cfg,
            )?);
        }
        let last = *ch.last().expect("validated non-empty");
        Ok(Self {
            conv_in,
            down,
            mid: mid_block(vb.pp("mid_block"), last, cfg.norm_num_groups)?,
            norm_out: group_norm(cfg.norm_num_groups, last, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(last, 2 * cfg.latent_channels, 3, PAD1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down {
            xs = block.forward(&xs)?;
        }
        let xs = self.norm_out.forward(&self.mid.forward(&xs, None)?)?;
        self.conv_out.forward(&candle_nn::ops::silu(&xs)?)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: UNetMidBlock2D,
    up: Vec<UpDecoderBlock2D>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeFileConfig) -> candle_core::Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let first = cfg.block_out_channels[0];
        let conv_in = conv2d(cfg.latent_channels, rev[0], 3, PAD1, vb.pp("conv_in"))?;
        let mut up = Vec::with_capacity(rev.len());
        for (i, out) in rev.iter().enumerate() {
            let block_cfg = UpDecoderBlock2DConfig {
                num_layers: cfg.layers_per_block + 1,
                resnet_eps: 1e-6,
                resnet_groups: cfg.norm_num_groups,
                add_upsample: i + 1 < rev.len(),
                ..Default::default()
            };
            let input = if i == 0 { rev[0] } else { rev[i - 1] };
            up.push(UpDecoderBlock2D::new(
                vb.pp("up_blocks").pp(i.to_string()),
                input,
                *out,
                block_cfg,
            )?);
        }
        Ok(Self {
            conv_in,
            mid: mid_block(vb.pp("mid_block"), rev[0], cfg.norm_num_groups)?,
            up,
            norm_out: group_norm(cfg.norm_num_groups, first, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(first, cfg.out_channels, 3, PAD1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.mid.forward(&self.conv_in.forward(xs)?, None)?;
        for block in &self.up {
            xs = block.forward(&xs)?;
        }
        let xs = self.norm_out.forward(&xs)?;
        self.conv_out.forward(&candle_nn::ops::silu(&xs)?)
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
        let one = Conv2dConfig::default();
        let quant_conv = if cfg.use_quant_conv {
            Some(conv2d(2 * l, 2 * l, 1, one, vb.pp("quant_conv"))?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(conv2d(l, l, 1, one, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
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
