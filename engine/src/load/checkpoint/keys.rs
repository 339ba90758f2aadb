//! The names a single-file checkpoint gives its tensors (the original Stable Diffusion / SGM
//! layout: `input_blocks.4.1.proj_in`, `first_stage_model.decoder.up.3.block.0`, OpenCLIP's
//! `resblocks.5.attn.in_proj_weight`) translated to the diffusers names our networks load.
//! The translation follows diffusers' `single_file_utils.py` (`convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`)
//! but is computed from the block layout the file itself shows, not from SD's fixed one.

use std::collections::HashMap;

/// How one diffusers tensor is read from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The file's tensor as it is.
    Same(String),
    /// The file's tensor with its trailing 1x1 dimensions dropped (the VAE attention's
    /// projections are stored as 1x1 convolutions; diffusers has linear layers).
    Squeezed(String),
    /// Part `index` (0 = q, 1 = k, 2 = v) of a fused `in_proj` tensor, split along its rows.
    Third(String, usize),
    /// The file's matrix transposed (OpenCLIP's `text_projection` is `x @ P`; diffusers
    /// stores a linear layer's weight).
    Transposed(String),
}

/// Diffusers name -> how to read it, for one component.
pub type KeyMap = HashMap<String, Fetch>;

/// The UNet's block structure, as far as the names depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetLayout {
    /// Resnets per down level (up levels have one more).
    pub layers_per_block: usize,
}

/// Maps the UNet's tensors under `prefix` (`model.diffusion_model.`).
pub fn unet<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    prefix: &str,
    layout: UNetLayout,
) -> KeyMap {
    keys.into_iter()
        .filter_map(|key| {
            let name = unet_name(key.strip_prefix(prefix)?, layout)?;
            Some((name, Fetch::Same(key.to_string())))
        })
        .collect()
}

/// The diffusers name of one original-layout UNet tensor (prefix removed), if it has one.
pub fn unet_name(key: &str, layout: UNetLayout) -> Option<String> {
    const FIXED: [(&str, &str); 8] = [
        ("time_embed.0.", "time_embedding.linear_1."),
        // LCM's guidance embedding: converters keep diffusers' name.
        ("time_embedding.cond_proj.", "time_embedding.cond_proj."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    for (from, to) in FIXED {
        if let Some(rest) = key.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (part, rest) = rest.split_once('.')?;
        return Some(match part {
            "0" | "2" => format!(
                "mid_block.resnets.{}.{}",
                usize::from(part == "2"),
                resnet(rest)
            ),
            "1" => format!("mid_block.attentions.0.{rest}"),
            _ => return None,
        });
    }
    let per_level = layout.layers_per_block + 1;
    let (group, rest) = key.split_once('.')?;
    let (index, rest) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let (part, rest) = rest.split_once('.')?;
    let part: usize = part.parse().ok()?;
    match group {
        "input_blocks" if index > 0 => {
            let (level, layer) = ((index - 1) / per_level, (index - 1) % per_level);
            if layer == layout.layers_per_block {
                let rest = rest.strip_prefix("op.")?;
                return Some(format!("down_blocks.{level}.downsamplers.0.conv.{rest}"));
            }
            Some(match part {
                0 => format!("down_blocks.{level}.resnets.{layer}.{}", resnet(rest)),
                1 => format!("down_blocks.{level}.attentions.{layer}.{rest}"),
                _ => return None,
            })
        }
        "output_blocks" => {
            let (level, layer) = (index / per_level, index % per_level);
            Some(match part {
                0 => format!("up_blocks.{level}.resnets.{layer}.{}", resnet(rest)),
                // The upsampler follows the resnet (and the attention, where there is one).
                _ if rest.starts_with("conv.") => format!("up_blocks.{level}.upsamplers.0.{rest}"),
                1 => format!("up_blocks.{level}.attentions.{layer}.{rest}"),
                _ => return None,
            })
        }
        _ => None,
    }
}

/// A resnet's inner names: `in_layers.2` is `conv1`, and so on.
fn resnet(rest: &str) -> String {
    const RESNET: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    RESNET
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{to}{r}")))
        .unwrap_or_else(|| rest.to_string())
}

/// Maps the VAE's tensors under `prefix` (`first_stage_model.`); `levels` is the number of
/// resolution levels (the decoder's `up.N` count in reverse order to diffusers' `up_blocks`).
pub fn vae<'a>(keys: impl IntoIterator<Item = &'a str>, prefix: &str, levels: usize) -> KeyMap {
    keys.into_iter()
        .filter_map(|key| {
            let rest = key.strip_prefix(prefix)?;
            let (name, squeeze) = vae_name(rest, levels)?;
            let fetch = if squeeze {
                Fetch::Squeezed(key.to_string())
            } else {
                Fetch::Same(key.to_string())
            };
            Some((name, fetch))
        })
        .collect()
}

/// The diffusers name of one original-layout VAE tensor, and whether it is a 1x1 convolution
/// that diffusers holds as a linear layer.
pub fn vae_name(key: &str, levels: usize) -> Option<(String, bool)> {
    let (side, rest) = key.split_once('.')?;
    if matches!(side, "quant_conv" | "post_quant_conv") {
        return Some((key.to_string(), false));
    }
    if !matches!(side, "encoder" | "decoder") {
        return None;
    }
    const ATTENTION: [(&str, &str); 5] = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ];
    let inner = |rest: &str| rest.replace("nin_shortcut", "conv_shortcut");
    let name = if let Some(rest) = rest.strip_prefix("mid.attn_1.") {
        let (from, to) = ATTENTION.iter().find(|(from, _)| rest.starts_with(from))?;
        let squeeze = rest.ends_with("weight") && *from != "norm.";
        return Some((
            format!("{side}.mid_block.attentions.0.{to}{}", &rest[from.len()..]),
            squeeze,
        ));
    } else if let Some(rest) = rest.strip_prefix("mid.block_") {
        let (n, rest) = rest.split_once('.')?;
        let n: usize = n.parse().ok()?;
        format!("mid_block.resnets.{}.{}", n.checked_sub(1)?, inner(rest))
    } else if let Some(rest) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{rest}")
    } else if let Some(rest) = rest.strip_prefix("down.").or(rest.strip_prefix("up.")) {
        let up = side == "decoder";
        let (level, rest) = rest.split_once('.')?;
        let level: usize = level.parse().ok()?;
        let (blocks, level) = if up {
            ("up_blocks", levels.checked_sub(level + 1)?)
        } else {
            ("down_blocks", level)
        };
        if let Some(rest) = rest.strip_prefix("block.") {
            format!("{blocks}.{level}.resnets.{}", inner(rest))
        } else if let Some(rest) = rest
            .strip_prefix("downsample.")
            .or(rest.strip_prefix("upsample."))
        {
            let sampler = if up { "upsamplers" } else { "downsamplers" };
            format!("{blocks}.{level}.{sampler}.0.{rest}")
        } else {
            return None;
        }
    } else {
        rest.to_string()
    };
    Some((format!("{side}.{name}"), false))
}

/// Maps an OpenAI CLIP text encoder stored under `prefix` (`cond_stage_model.transformer.`,
/// with or without `text_model.` after it) to transformers' `text_model.*` names.
pub fn clip<'a>(keys: impl IntoIterator<Item = &'a str>, prefix: &str) -> KeyMap {
    keys.into_iter()
        .filter_map(|key| {
            let rest = key.strip_prefix(prefix)?;
            let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
            // transformers' `position_ids` buffer and the like are not weights we load.
            (!rest.ends_with("position_ids"))
                .then(|| (format!("text_model.{rest}"), Fetch::Same(key.to_string())))
        })
        .collect()
}

/// Maps an OpenCLIP text encoder stored under `prefix` (`cond_stage_model.model.` for SD 2,
/// `conditioner.embedders.1.model.` for SDXL) to transformers' `CLIPTextModel(WithProjection)`
/// names: fused `in_proj` split into q/k/v, `text_projection` transposed.
pub fn open_clip<'a>(keys: impl IntoIterator<Item = &'a str>, prefix: &str) -> KeyMap {
    let mut map = KeyMap::new();
    for key in keys {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        let same = |name: String| (name, Fetch::Same(key.to_string()));
        let entry = match rest {
            "token_embedding.weight" => same("text_model.embeddings.token_embedding.weight".into()),
            "positional_embedding" => {
                same("text_model.embeddings.position_embedding.weight".into())
            }
            "text_projection" => (
                "text_projection.weight".into(),
                Fetch::Transposed(key.to_string()),
            ),
            _ => {
                if let Some(norm) = rest.strip_prefix("ln_final.") {
                    same(format!("text_model.final_layer_norm.{norm}"))
                } else if let Some(layer) = rest.strip_prefix("transformer.resblocks.") {
                    let Some((index, inner)) = layer.split_once('.') else {
                        continue;
                    };
                    let base = format!("text_model.encoder.layers.{index}");
                    if let Some(kind) = inner.strip_prefix("attn.in_proj_") {
                        for (i, q) in ["q", "k", "v"].into_iter().enumerate() {
                            map.insert(
                                format!("{base}.self_attn.{q}_proj.{kind}"),
                                Fetch::Third(key.to_string(), i),
                            );
                        }
                        continue;
                    }
                    const LAYER: [(&str, &str); 5] = [
                        ("ln_1.", "layer_norm1."),
                        ("ln_2.", "layer_norm2."),
                        ("mlp.c_fc.", "mlp.fc1."),
                        ("mlp.c_proj.", "mlp.fc2."),
                        ("attn.out_proj.", "self_attn.out_proj."),
                    ];
                    let Some(name) = LAYER.iter().find_map(|(from, to)| {
                        inner.strip_prefix(from).map(|r| format!("{to}{r}"))
                    }) else {
                        continue;
                    };
                    same(format!("{base}.{name}"))
                } else {
                    continue;
                }
            }
        };
        map.insert(entry.0, entry.1);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: UNetLayout = UNetLayout {
        layers_per_block: 2,
    };

    /// The (original, diffusers) pairs diffusers' own conversion scripts list for SD's layout.
    #[test]
    fn unet_names_match_the_conversion_scripts_table() {
        for (file, ours) in [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            ("out.2.weight", "conv_out.weight"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.bias",
                "down_blocks.1.resnets.0.conv_shortcut.bias",
            ),
            (
                "input_blocks.11.0.out_layers.3.weight",
                "down_blocks.3.resnets.1.conv2.weight",
            ),
            (
                "middle_block.0.emb_layers.1.weight",
                "mid_block.resnets.0.time_emb_proj.weight",
            ),
            (
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "middle_block.2.in_layers.2.bias",
                "mid_block.resnets.1.conv1.bias",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.proj_out.weight",
                "up_blocks.1.attentions.2.proj_out.weight",
            ),
            (
                "output_blocks.11.0.skip_connection.weight",
                "up_blocks.3.resnets.2.conv_shortcut.weight",
            ),
            ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
        ] {
            assert_eq!(unet_name(file, SD).as_deref(), Some(ours), "{file}");
        }
    }

    #[test]
    fn other_block_counts_shift_the_indices() {
        let one = UNetLayout {
            layers_per_block: 1,
        };
        assert_eq!(
            unet_name("input_blocks.2.0.op.weight", one).as_deref(),
            Some("down_blocks.0.downsamplers.0.conv.weight")
        );
        assert_eq!(
            unet_name("input_blocks.3.1.norm.weight", one).as_deref(),
            Some("down_blocks.1.attentions.0.norm.weight")
        );
        assert_eq!(
            unet_name("output_blocks.3.0.in_layers.0.bias", one).as_deref(),
            Some("up_blocks.1.resnets.1.norm1.bias")
        );
    }

    #[test]
    fn vae_names_reverse_the_decoder_levels_and_squeeze_attention() {
        for (file, ours, squeeze) in [
            (
                "encoder.down.0.block.1.nin_shortcut.weight",
                "encoder.down_blocks.0.resnets.1.conv_shortcut.weight",
                false,
            ),
            (
                "encoder.down.2.downsample.conv.bias",
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
                false,
            ),
            (
                "decoder.up.3.block.2.norm1.weight",
                "decoder.up_blocks.0.resnets.2.norm1.weight",
                false,
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
                false,
            ),
            (
                "encoder.mid.block_2.conv2.weight",
                "encoder.mid_block.resnets.1.conv2.weight",
                false,
            ),
            (
                "decoder.mid.attn_1.q.weight",
                "decoder.mid_block.attentions.0.to_q.weight",
                true,
            ),
            (
                "decoder.mid.attn_1.proj_out.bias",
                "decoder.mid_block.attentions.0.to_out.0.bias",
                false,
            ),
            (
                "decoder.mid.attn_1.norm.weight",
                "decoder.mid_block.attentions.0.group_norm.weight",
                false,
            ),
            ("decoder.norm_out.bias", "decoder.conv_norm_out.bias", false),
            ("encoder.conv_in.weight", "encoder.conv_in.weight", false),
            ("post_quant_conv.weight", "post_quant_conv.weight", false),
        ] {
            assert_eq!(
                vae_name(file, 4),
                Some((ours.to_string(), squeeze)),
                "{file}"
            );
        }
    }

    #[test]
    fn clip_l_loads_with_or_without_text_model() {
        let keys = [
            "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
        ];
        let map = clip(keys, "cond_stage_model.transformer.");
        assert_eq!(
            map["text_model.encoder.layers.0.mlp.fc1.weight"],
            Fetch::Same(keys[0].into())
        );
        let bare = clip(
            ["cond_stage_model.transformer.final_layer_norm.bias"],
            "cond_stage_model.transformer.",
        );
        assert!(bare.contains_key("text_model.final_layer_norm.bias"));
        let sdxl = clip(keys, "conditioner.embedders.0.transformer.");
        assert!(sdxl.is_empty(), "position_ids is a buffer, not a weight");
    }

    #[test]
    fn open_clip_splits_in_proj_and_transposes_the_projection() {
        let p = "conditioner.embedders.1.model.";
        let keys: Vec<String> = [
            "transformer.resblocks.31.attn.in_proj_weight",
            "transformer.resblocks.31.attn.in_proj_bias",
            "transformer.resblocks.0.mlp.c_proj.weight",
            "transformer.resblocks.0.ln_2.bias",
            "text_projection",
            "positional_embedding",
            "ln_final.weight",
            "logit_scale",
        ]
        .iter()
        .map(|k| format!("{p}{k}"))
        .collect();
        let map = open_clip(keys.iter().map(String::as_str), p);
        assert_eq!(
            map["text_model.encoder.layers.31.self_attn.k_proj.weight"],
            Fetch::Third(keys[0].clone(), 1)
        );
        assert_eq!(
            map["text_model.encoder.layers.31.self_attn.v_proj.bias"],
            Fetch::Third(keys[1].clone(), 2)
        );
        assert_eq!(
            map["text_model.encoder.layers.0.mlp.fc2.weight"],
            Fetch::Same(keys[2].clone())
        );
        assert!(map.contains_key("text_model.encoder.layers.0.layer_norm2.bias"));
        assert_eq!(
            map["text_projection.weight"],
            Fetch::Transposed(keys[4].clone())
        );
        assert!(map.contains_key("text_model.embeddings.position_embedding.weight"));
        assert!(map.contains_key("text_model.final_layer_norm.weight"));
        assert_eq!(
            map.len(),
            11,
            "logit_scale is not part of the text model: {map:?}"
        );
    }
}
