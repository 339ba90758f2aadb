//! The SD 1.x / 2.x / SDXL conditional UNet (diffusers `UNet2DConditionModel`), built from
//! [`crate::blocks`] so its convolutions, norms and attention run on our kernels. The wiring
//! follows diffusers; the validated configuration is candle's `UNet2DConditionModelConfig`,
//! produced from the folder's config.json by [`crate::config::UNetFileConfig::to_candle`],
//! plus what candle's config has no room for ([`UNetExtras`]: SDXL's size-and-pooled-text
//! conditioning, per-resnet transformer depths of pruned SDXL variants).

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::embeddings::Timesteps;
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};

use crate::blocks::{Downsample, ResnetBlock, SpatialTransformer, Upsample};
use crate::config::TextTimeConfig;
use crate::layers::{Conv2d, GroupNorm};
use crate::time_embedding::TimestepEmbedding;

type Result<T> = candle_core::Result<T>;

/// What the UNet needs beyond candle's config.
#[derive(Debug, Clone, Default)]
pub struct UNetExtras {
    /// SDXL's `text_time` added conditioning.
    pub text_time: Option<TextTimeConfig>,
    /// Transformer depth per resnet of each up block, outermost first; empty: mirror the down
    /// blocks (every SD 1.x / 2.x / SDXL-base UNet).
    pub up_depths: Vec<Vec<usize>>,
    /// LCM-distilled UNets: the width of the guidance embedding (`time_cond_proj_dim`).
    pub time_cond_proj_dim: Option<usize>,
}

/// SDXL's added conditioning for one batch: the pooled text embedding and the six numbers
/// (original height and width, crop top and left, target height and width).
#[derive(Debug, Clone)]
pub struct AddedConditioning {
    /// `[B, pooled_dim]`.
    pub text_embeds: Tensor,
    /// `[B, 6]`.
    pub time_ids: Tensor,
}

/// `add_time_proj` + `add_embedding`: sinusoids of the six numbers next to the pooled text,
/// through a two-layer MLP, added to the timestep embedding.
#[derive(Debug)]
struct TextTimeEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
}

impl TextTimeEmbedding {
    fn forward(&self, added: &AddedConditioning, dtype: DType) -> Result<Tensor> {
        let (batch, six) = added.time_ids.dims2()?;
        // Sinusoids in f32 as diffusers computes them, then the model's dtype.
        let times = self
            .time_proj
            .forward(&added.time_ids.flatten_all()?.to_dtype(DType::F32)?)?
            .to_dtype(dtype)?
            .reshape((batch, ()))?;
        if six != 6 {
            candle_core::bail!("SDXL time ids must be 6 numbers per image, got {six}");
        }
        let input = Tensor::cat(&[&added.text_embeds.to_dtype(dtype)?, &times], 1)?;
        self.embedding.forward(&input, None)
    }
}
/// One level of the UNet: resnets, each optionally followed by a spatial transformer.
#[derive(Debug)]
struct Level {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
}

impl Level {
    fn layer(&self, i: usize, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = self.resnets[i].forward(x, Some(temb))?;
        match self.attentions.get(i) {
            Some(attn) => attn.forward(&x, context),
            None => Ok(x),
        }
    }
}

#[derive(Debug)]
pub struct UNet {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    down: Vec<(Level, Option<Downsample>)>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: SpatialTransformer,
    up: Vec<(Level, Option<Upsample>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    center_input: bool,
    text_time: Option<TextTimeEmbedding>,
}

impl UNet {
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        cfg: &UNet2DConditionModelConfig,
        extras: &UNetExtras,
    ) -> Result<Self> {
        let blocks = &cfg.blocks;
        let n = blocks.len();
        if n == 0 {
            candle_core::bail!("UNet without blocks");
        }
        let ch0 = blocks[0].out_channels;
        let temb = ch0 * 4;
        let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let transformer = |vb: VarBuilder, channels: usize, heads: usize, depth: usize| {
            SpatialTransformer::load(
                vb,
                channels,
                heads,
                depth,
                cfg.cross_attention_dim,
                groups,
                cfg.use_linear_projection,
            )
        };

        // One level: `count` resnets (resnet j takes `input(j)` channels), each followed by a
        // spatial transformer in cross-attention blocks. Down and up levels differ only there.
        // `depth(j)`: the transformer depth after resnet j (0: none).
        let level = |vb: VarBuilder,
                     block: BlockConfig,
                     count: usize,
                     input: &dyn Fn(usize) -> usize,
                     depth: &dyn Fn(usize) -> usize| {
            let cout = block.out_channels;
            let mut level = Level {
                resnets: vec![],
                attentions: vec![],
            };
            for j in 0..count {
                let resnet = vb.pp("resnets").pp(j);
                level.resnets.push(ResnetBlock::load(
                    resnet,
                    input(j),
                    cout,
                    Some(temb),
                    groups,
                    eps,
                    1.0,
                )?);
                if block.use_cross_attn.is_some() {
                    let attn = vb.pp("attentions").pp(j);
                    level.attentions.push(transformer(
                        attn,
                        cout,
                        block.attention_head_dim,
                        depth(j),
                    )?);
                }
            }
            Ok::<_, candle_core::Error>(level)
        };

        let mut down = Vec::with_capacity(n);
        for (i, block) in blocks.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let cin = if i == 0 {
                ch0
            } else {
                blocks[i - 1].out_channels
            };
            let cout = block.out_channels;
            let depth = block.use_cross_attn.unwrap_or(0);
            let level = level(
                vb.clone(),
                *block,
                cfg.layers_per_block,
                &|j| if j == 0 { cin } else { cout },
                &|_| depth,
            )?;
            let sampler = (i + 1 < n)
                .then(|| Downsample::load(vb.pp("downsamplers.0"), cout, cfg.downsample_padding))
                .transpose()?;
            down.push((level, sampler));
        }

        let last = blocks[n - 1];
        let mid = vb.pp("mid_block");
        let mid_scale = cfg.mid_block_scale_factor;
        let mid_resnets = [
            ResnetBlock::load(
                mid.pp("resnets.0"),
                last.out_channels,
                last.out_channels,
                Some(temb),
                groups,
                eps,
                mid_scale,
            )?,
            ResnetBlock::load(
                mid.pp("resnets.1"),
                last.out_channels,
                last.out_channels,
                Some(temb),
                groups,
                eps,
                mid_scale,
            )?,
        ];
        let mid_attention = transformer(
            mid.pp("attentions.0"),
            last.out_channels,
            last.attention_head_dim,
            last.use_cross_attn.unwrap_or(1),
        )?;

        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp("up_blocks").pp(i);
            let block = blocks[n - 1 - i];
            let cout = block.out_channels;
            let prev = if i == 0 {
                last.out_channels
            } else {
                blocks[n - i].out_channels
            };
            let skip_in = blocks[if i == n - 1 { 0 } else { n - i - 2 }].out_channels;
            let layers = cfg.layers_per_block + 1;
            // Up-block resnets also take the skip connection, concatenated on channels.
            let input = |j: usize| {
                let skip = if j == layers - 1 { skip_in } else { cout };
                (if j == 0 { prev } else { cout }) + skip
            };
            let mirrored = block.use_cross_attn.unwrap_or(0);
            let depths = extras.up_depths.get(i);
            let depth = |j: usize| depths.and_then(|d| d.get(j).copied()).unwrap_or(mirrored);
            let level = level(vb.clone(), block, layers, &input, &depth)?;
            let sampler = (i + 1 < n)
                .then(|| Upsample::load(vb.pp("upsamplers.0"), cout))
                .transpose()?;
            up.push((level, sampler));
        }

        Ok(Self {
            conv_in: Conv2d::load(vb.pp("conv_in"), in_channels, ch0, 3, 1, 1)?,
            time_proj: Timesteps::new(ch0, cfg.flip_sin_to_cos, cfg.freq_shift),
            time_embedding: TimestepEmbedding::load(
                vb.pp("time_embedding"),
                ch0,
                temb,
                extras.time_cond_proj_dim,
            )?,
            down,
            mid_resnets,
            mid_attention,
            up,
            norm_out: GroupNorm::load(vb.pp("conv_norm_out"), groups, ch0, eps)?,
            conv_out: Conv2d::load(vb.pp("conv_out"), ch0, out_channels, 3, 1, 1)?,
            center_input: cfg.center_input_sample,
            text_time: extras
                .text_time
                .map(|tt| {
                    Ok::<_, candle_core::Error>(TextTimeEmbedding {
                        time_proj: Timesteps::new(
                            tt.time_embed_dim,
                            cfg.flip_sin_to_cos,
                            cfg.freq_shift,
                        ),
                        embedding: TimestepEmbedding::load(
                            vb.pp("add_embedding"),
                            tt.pooled_dim + 6 * tt.time_embed_dim,
                            temb,
                            None,
                        )?,
                    })
                })
                .transpose()?,
        })
    }

    /// Predicts noise (or v) for `x [B, C, h, w]` at `timestep` given `context [B, S, D]`.
    pub fn forward(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_conditioned(x, timestep, context, None, None)
    }

    /// The width of the guidance embedding this UNet takes (LCM-distilled UNets), if any.
    pub fn time_cond_proj_dim(&self) -> Option<usize> {
        self.time_embedding.cond_proj_dim()
    }

    /// The forward with every optional input: SDXL's added conditioning (required by an SDXL
    /// UNet, refused by the others) and an LCM-distilled UNet's guidance embedding
    /// `timestep_cond [B, time_cond_proj_dim]`, added to the timestep embedding as diffusers does.
    pub fn forward_conditioned(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, _, h, w) = x.dims4()?;
        let x = if self.center_input {
            ((x * 2.0)? - 1.0)?
        } else {
            x.clone()
        };
        // The sinusoids in f32 (as diffusers: fp16 cannot hold 999 x frequency exactly).
        let t = (Tensor::ones(batch, DType::F32, x.device())? * timestep)?;
        let t = self.time_proj.forward(&t)?.to_dtype(x.dtype())?;
        let mut temb = self.time_embedding.forward(&t, timestep_cond)?;
        match (&self.text_time, added) {
            (Some(tt), Some(added)) => temb = (temb + tt.forward(added, x.dtype())?)?,
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("this UNet (SDXL) needs pooled text and sizes"),
            (None, Some(_)) => candle_core::bail!("this UNet takes no added conditioning"),
        }
        // Every resnet applies SiLU to the embedding before its projection: do it once.
        let temb = candle_nn::ops::silu(&temb)?;

        let mut x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for (level, sampler) in &self.down {
            for i in 0..level.resnets.len() {
                x = level.layer(i, &x, &temb, context)?;
                skips.push(x.clone());
            }
            if let Some(down) = sampler {
                x = down.forward(&x)?;
                skips.push(x.clone());
            }
        }

        x = self.mid_resnets[0].forward(&x, Some(&temb))?;
        x = self.mid_attention.forward(&x, context)?;
        x = self.mid_resnets[1].forward(&x, Some(&temb))?;

        // Sizes not divisible by 2^levels upsample to the skip's size, as diffusers does.
        let factor = 1usize << (self.up.len() - 1);
        let exact = h % factor == 0 && w % factor == 0;
        for (level, sampler) in &self.up {
            for i in 0..level.resnets.len() {
                let skip = skips.pop().expect("one skip per up-block resnet");
                x = level.layer(i, &Tensor::cat(&[&x, &skip], 1)?, &temb, context)?;
            }
            if let Some(up) = sampler {
                let size = match (exact, skips.last()) {
                    (false, Some(s)) => Some((s.dim(2)?, s.dim(3)?)),
                    _ => None,
                };
                x = up.forward(&x, size)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}
