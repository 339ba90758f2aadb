//! The diffusers / PEFT LoRA naming: `<component>.<diffusers module path>.lora_A.weight` and
//! `.lora_B.weight` (components `unet`, `text_encoder`, `text_encoder_2`), and the older names
//! diffusers still loads: attention processors (`attn1.processor.to_q_lora.down.weight`,
//! `self_attn.to_q_lora.down.weight`), `.lora.down.weight` and `.lora_linear_layer.`. Each is
//! mapped to `<component>.<module path>`, the name our layers are registered under.
//!
//! Alphas: a `.alpha` tensor per module (diffusers' converted kohya files), else the
//! `lora_adapter_metadata` diffusers writes into the header (`lora_alpha`, `alpha_pattern`),
//! else alpha = rank (a scale of 1), which is what diffusers assumes.

use std::collections::HashMap;

use super::file::Part;

/// Components a PEFT name may start with; a name with none of them is the UNet's (diffusers'
/// oldest files have no prefix).
const COMPONENTS: [&str; 3] = ["text_encoder_2", "text_encoder", "unet"];

/// `unet.a.b.lora_A.weight` → (`unet.a.b`, Down), with the older spellings mapped.
pub(crate) fn split_key(name: &str) -> Result<(String, Part), String> {
    const SUFFIXES: [(&str, Part); 7] = [
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora_linear_layer.down.weight", Part::Down),
        (".lora_linear_layer.up.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    let (module, part) = SUFFIXES
        .iter()
        .find_map(|(suffix, part)| Some((name.strip_suffix(suffix)?, *part)))
        .or_else(|| {
            // Attention processors: `...to_q_lora.down.weight`.
            let (module, part) = name
                .strip_suffix(".down.weight")
                .map(|m| (m, Part::Down))
                .or_else(|| name.strip_suffix(".up.weight").map(|m| (m, Part::Up)))?;
            module.ends_with("_lora").then_some((module, part))
        })
        .ok_or_else(|| {
            format!(
                "{name} is not a LoRA tensor name we read (kohya `lora_unet_*`/`lora_te_*`, or \
                 diffusers/PEFT `*.lora_A.weight`/`*.lora_B.weight`)"
            )
        })?;
    Ok((module_path(module), part))
}

/// `unet.x.attn1.processor.to_out_lora` → `unet.x.attn1.to_out.0`; prefixes the component.
fn module_path(module: &str) -> String {
    let (component, path) = COMPONENTS
        .iter()
        .find_map(|c| Some((*c, module.strip_prefix(c)?.strip_prefix('.')?)))
        .unwrap_or(("unet", module));
    let path = path.replace(".processor.", ".");
    let text = component.starts_with("text_encoder");
    let path = match path.rsplit_once('.') {
        Some((parent, last)) if last.ends_with("_lora") => {
            let layer = last.trim_end_matches("_lora");
            let layer = match (layer, text) {
                ("to_out", false) => "to_out.0",
                ("to_q", true) => "q_proj",
                ("to_k", true) => "k_proj",
                ("to_v", true) => "v_proj",
                ("to_out", true) => "out_proj",
                (other, _) => other,
            };
            format!("{parent}.{layer}")
        }
        _ => path,
    };
    format!("{component}.{path}")
}

/// The alphas diffusers recorded in the file's header, per component.
#[derive(Debug, Default)]
pub(crate) struct AdapterAlphas {
    components: HashMap<String, ComponentAlphas>,
}

/// One component's `lora_alpha` and `alpha_pattern` (module pattern → alpha).
#[derive(Debug, Default)]
struct ComponentAlphas {
    alpha: Option<f32>,
    patterns: Vec<(String, f32)>,
}

impl AdapterAlphas {
    /// Reads `lora_adapter_metadata` (JSON with keys `unet.lora_alpha`,
    /// `unet.alpha_pattern`, `text_encoder.lora_alpha`, ...), when the header has it.
    pub fn from_metadata(metadata: Option<&HashMap<String, String>>) -> Result<Self, String> {
        let Some(raw) = metadata.and_then(|m| m.get("lora_adapter_metadata")) else {
            return Ok(Self::default());
        };
        let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| format!("its lora_adapter_metadata is not a JSON object ({e})"))?;
        let mut components: HashMap<String, ComponentAlphas> = HashMap::new();
        for (key, value) in &json {
            let Some((component, field)) = key.rsplit_once('.') else {
                continue;
            };
            let entry = components.entry(component.to_string()).or_default();
            match field {
                "lora_alpha" => entry.alpha = Some(number(key, value)?),
                "alpha_pattern" => {
                    let patterns = value.as_object().ok_or(format!("{key} is not an object"))?;
                    for (pattern, alpha) in patterns {
                        entry.patterns.push((pattern.clone(), number(key, alpha)?));
                    }
                }
                "use_dora" if value.as_bool() == Some(true) => {
                    return Err("its metadata says use_dora: DoRA is not supported".into())
                }
                "use_rslora" if value.as_bool() == Some(true) => {
                    return Err(
                        "its metadata says use_rslora (alpha/√rank scaling), which is not \
                         supported"
                            .into(),
                    )
                }
                _ => {}
            }
        }
        Ok(Self { components })
    }

    /// The alpha for `component.module`: the longest matching `alpha_pattern` entry (PEFT
    /// matches a pattern against the end of the module path), else the component's
    /// `lora_alpha`; `None` (alpha = rank) without metadata.
    pub fn alpha_for(&self, key: &str) -> Option<f32> {
        let (component, module) = key.split_once('.')?;
        let ComponentAlphas { alpha, patterns } = self.components.get(component)?;
        patterns
            .iter()
            .filter(|(p, _)| module == p || module.ends_with(&format!(".{p}")))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| *a)
            .or(*alpha)
    }
}

fn number(key: &str, value: &serde_json::Value) -> Result<f32, String> {
    value
        .as_f64()
        .filter(|v| v.is_finite())
        .map(|v| v as f32)
        .ok_or_else(|| format!("{key} in lora_adapter_metadata is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_and_older_diffusers_names_map_to_module_paths() {
        let cases = [
            ("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", "unet.down_blocks.0.attentions.0.proj_in", Part::Down),
            ("text_encoder_2.text_model.encoder.layers.3.mlp.fc1.lora_B.weight", "text_encoder_2.text_model.encoder.layers.3.mlp.fc1", Part::Up),
            ("unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight", "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0", Part::Up),
            ("text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight", "text_encoder.text_model.encoder.layers.0.self_attn.k_proj", Part::Down),
            ("text_encoder.text_model.encoder.layers.0.mlp.fc2.lora_linear_layer.up.weight", "text_encoder.text_model.encoder.layers.0.mlp.fc2", Part::Up),
            ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight", "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", Part::Down),
            ("unet.up_blocks.1.resnets.0.conv1.alpha", "unet.up_blocks.1.resnets.0.conv1", Part::Alpha),
        ];
        for (name, module, part) in cases {
            assert_eq!(
                split_key(name).unwrap(),
                (module.to_string(), part),
                "{name}"
            );
        }
        assert!(split_key("unet.conv_in.weight")
            .unwrap_err()
            .contains("not a LoRA tensor"));
    }

    #[test]
    fn header_alphas_follow_peft_patterns() {
        let meta = HashMap::from([(
            "lora_adapter_metadata".to_string(),
            r#"{"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {"attn1.to_q": 2.0},
                "text_encoder.lora_alpha": 3}"#
                .to_string(),
        )]);
        let alphas = AdapterAlphas::from_metadata(Some(&meta)).unwrap();
        assert_eq!(
            alphas.alpha_for("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
            Some(2.0)
        );
        assert_eq!(
            alphas.alpha_for("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"),
            Some(8.0)
        );
        assert_eq!(
            alphas.alpha_for("text_encoder.text_model.encoder.layers.0.mlp.fc1"),
            Some(3.0)
        );
        assert_eq!(
            alphas.alpha_for("text_encoder_2.text_model.encoder.layers.0.mlp.fc1"),
            None
        );
        assert_eq!(
            AdapterAlphas::from_metadata(None)
                .unwrap()
                .alpha_for("unet.x"),
            None
        );
    }
}
