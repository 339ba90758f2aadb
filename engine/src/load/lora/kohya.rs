//! The kohya / web-UI LoRA naming: `lora_unet_<module>` and `lora_te_<module>` (SDXL:
//! `lora_te1_`, `lora_te2_`), with `.`s of the module path written as `_`. SD 1.x/2.x files
//! spell UNet modules as diffusers does (`down_blocks_0_attentions_0_...`); SDXL files use the
//! original (SGM/LDM) UNet's block names (`input_blocks_4_1_...`). Rather than split `_`-joined
//! names (ambiguous: `to_q`, `ff_net_0_proj`), we spell every real layer of the model the kohya
//! way and look the file's names up, as diffusers' `_convert_non_diffusers_lora_to_diffusers`
//! and `_maybe_map_sgm_blocks_to_diffusers` do in the other direction.

use super::file::Part;

const PREFIXES: [&str; 4] = ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"];

/// Whether a tensor name is kohya's.
pub(crate) fn is_kohya(name: &str) -> bool {
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `lora_unet_x.lora_down.weight` → (`lora_unet_x`, Down).
pub(crate) fn split_key(name: &str) -> Result<(String, Part), String> {
    let (module, rest) = name
        .split_once('.')
        .ok_or_else(|| format!("{name} is not a kohya LoRA tensor name (no part suffix)"))?;
    let part = match rest {
        "lora_down.weight" => Part::Down,
        "lora_up.weight" => Part::Up,
        "alpha" => Part::Alpha,
        _ => {
            return Err(format!(
                "{name}: `.{rest}` is not a part of a kohya LoRA (lora_down.weight, \
                 lora_up.weight, alpha)"
            ))
        }
    };
    Ok((module.to_string(), part))
}

/// The kohya names a layer of `component` may have in files, from its diffusers module path.
/// `layers_per_block` is the UNet's (SGM block numbers depend on it).
pub(crate) fn names_for(component: &str, module: &str, layers_per_block: usize) -> Vec<String> {
    let flat = |prefix: &str, path: &str| format!("{prefix}{}", path.replace('.', "_"));
    match component {
        "unet" => {
            let mut names = vec![flat("lora_unet_", module)];
            names.extend(
                sgm_names(module, layers_per_block)
                    .into_iter()
                    .map(|sgm| flat("lora_unet_", &sgm)),
            );
            names
        }
        "text_encoder" => vec![flat("lora_te_", module), flat("lora_te1_", module)],
        "text_encoder_2" => vec![flat("lora_te2_", module)],
        _ => Vec::new(),
    }
}

/// The original (SGM/LDM) UNet's names for a diffusers UNet module: `input_blocks.N.{0 resnet,
/// 1 attention}`, `middle_block.{0,1,2}`, `output_blocks.N.{0 resnet, 1 attention, last
/// upsampler}`, with the resnets' inner names (`in_layers.2`, `emb_layers.1`, ...).
pub(crate) fn sgm_names(module: &str, layers_per_block: usize) -> Vec<String> {
    let per_block = layers_per_block + 1;
    let parts: Vec<&str> = module.split('.').collect();
    let index = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
    let rest = |from: usize| parts.get(from..).map(|p| p.join(".")).unwrap_or_default();
    let join = |block: String, rest: String| match rest.is_empty() {
        true => block,
        false => format!("{block}.{rest}"),
    };
    match (parts.first().copied(), parts.get(2).copied()) {
        (Some("conv_in"), _) => vec!["input_blocks.0.0".into()],
        (Some("conv_out"), _) => vec!["out.2".into()],
        (Some("time_embedding"), _) => time_names(&rest(1), "time_embed").into_iter().collect(),
        (Some("add_embedding"), _) => time_names(&rest(1), "label_emb.0").into_iter().collect(),
        (Some("down_blocks"), Some(kind)) => {
            let (Some(i), Some(j)) = (index(1), index(3)) else {
                return Vec::new();
            };
            match kind {
                "resnets" => vec![join(
                    format!("input_blocks.{}.0", 1 + i * per_block + j),
                    resnet_inner(&rest(4)),
                )],
                "attentions" => vec![join(
                    format!("input_blocks.{}.1", 1 + i * per_block + j),
                    rest(4),
                )],
                "downsamplers" => vec![format!("input_blocks.{}.0.op", (i + 1) * per_block)],
                _ => Vec::new(),
            }
        }
        (Some("mid_block"), _) => {
            let (kind, j) = (parts.get(1).copied(), index(2));
            let block = match (kind, j) {
                (Some("resnets"), Some(0)) => "middle_block.0",
                (Some("attentions"), Some(0)) => "middle_block.1",
                (Some("resnets"), Some(1)) => "middle_block.2",
                _ => return Vec::new(),
            };
            let inner = match kind {
                Some("resnets") => resnet_inner(&rest(3)),
                _ => rest(3),
            };
            vec![join(block.into(), inner)]
        }
        (Some("up_blocks"), Some(kind)) => {
            let (Some(i), Some(j)) = (index(1), index(3)) else {
                return Vec::new();
            };
            let block = i * per_block + j;
            match kind {
                "resnets" => vec![join(
                    format!("output_blocks.{block}.0"),
                    resnet_inner(&rest(4)),
                )],
                "attentions" => vec![join(format!("output_blocks.{block}.1"), rest(4))],
                // The upsampler follows the block's last resnet, and its attention if it has
                // one: both positions are listed (no attention has a child named `conv`).
                "upsamplers" => {
                    let last = i * per_block + layers_per_block;
                    vec![
                        format!("output_blocks.{last}.1.conv"),
                        format!("output_blocks.{last}.2.conv"),
                    ]
                }
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

fn time_names(linear: &str, block: &str) -> Option<String> {
    match linear {
        "linear_1" => Some(format!("{block}.0")),
        "linear_2" => Some(format!("{block}.2")),
        _ => None,
    }
}

/// A diffusers `ResnetBlock2D`'s layer under its original name.
fn resnet_inner(inner: &str) -> String {
    match inner {
        "conv1" => "in_layers.2",
        "conv2" => "out_layers.3",
        "time_emb_proj" => "emb_layers.1",
        "conv_shortcut" => "skip_connection",
        other => other,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_names_are_the_diffusers_path_with_underscores() {
        let names = names_for(
            "unet",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
            2,
        );
        assert_eq!(
            names[0],
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
        );
        assert_eq!(
            names_for("text_encoder", "text_model.encoder.layers.11.mlp.fc2", 2),
            [
                "lora_te_text_model_encoder_layers_11_mlp_fc2",
                "lora_te1_text_model_encoder_layers_11_mlp_fc2"
            ]
        );
    }

    /// Names as kohya's SDXL LoRAs spell them (SDXL: 2 layers per block, 3 down blocks).
    #[test]
    fn sdxl_names_follow_the_original_unet_blocks() {
        let sgm = |m: &str| sgm_names(m, 2);
        assert_eq!(
            sgm("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
            ["input_blocks.4.1.transformer_blocks.1.attn2.to_k"]
        );
        assert_eq!(
            sgm("down_blocks.2.resnets.1.conv1"),
            ["input_blocks.8.0.in_layers.2"]
        );
        assert_eq!(
            sgm("down_blocks.0.downsamplers.0.conv"),
            ["input_blocks.3.0.op"]
        );
        assert_eq!(
            sgm("mid_block.attentions.0.proj_in"),
            ["middle_block.1.proj_in"]
        );
        assert_eq!(
            sgm("mid_block.resnets.1.time_emb_proj"),
            ["middle_block.2.emb_layers.1"]
        );
        assert_eq!(
            sgm("up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2"),
            ["output_blocks.2.1.transformer_blocks.9.ff.net.2"]
        );
        assert_eq!(
            sgm("up_blocks.1.resnets.0.conv_shortcut"),
            ["output_blocks.3.0.skip_connection"]
        );
        assert_eq!(
            sgm("up_blocks.1.upsamplers.0.conv"),
            ["output_blocks.5.1.conv", "output_blocks.5.2.conv"]
        );
        assert_eq!(sgm("add_embedding.linear_2"), ["label_emb.0.2"]);
        assert_eq!(sgm("time_embedding.linear_1"), ["time_embed.0"]);
        assert_eq!(sgm("conv_in"), ["input_blocks.0.0"]);
        assert_eq!(
            names_for(
                "unet",
                "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
                2
            )[1],
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k"
        );
    }

    #[test]
    fn parts_other_than_down_up_and_alpha_are_refused() {
        assert_eq!(
            split_key("lora_unet_x_to_q.lora_up.weight").unwrap(),
            ("lora_unet_x_to_q".to_string(), Part::Up)
        );
        let err = split_key("lora_unet_x_to_q.scale").unwrap_err();
        assert!(err.contains("not a part of a kohya LoRA"), "{err}");
    }
}
