//! Applying a set of LoRAs to a loaded model, in place: each patched layer's weight becomes
//! `base + Σ scale · (alpha / rank) · up · down`, computed in f32 as diffusers' `fuse_lora`
//! does, then packed like any weight. The base is re-read from the memory-mapped weight file
//! of that one tensor, so removing LoRAs restores the model bit for bit and switching between
//! sets touches only the layers either set changes: no model reload, and no second copy of
//! the weights in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::file::{LoraFile, LoraFormat, LoraModule};
use super::{kohya, ActiveLora, LoraReport};
use crate::error::{EngineError, Result};
use crate::layers::PatchTarget;

/// One component's patchable layers and the weights they were loaded from.
pub(crate) struct PatchableComponent {
    /// `unet`, `text_encoder` or `text_encoder_2`: the names LoRA files use.
    name: &'static str,
    source: VarBuilder<'static>,
    targets: Vec<PatchTarget>,
}

impl PatchableComponent {
    /// Loads a component with `load` (given `source`), recording its patchable layers.
    pub fn load<T>(
        name: &'static str,
        source: VarBuilder<'static>,
        load: impl FnOnce(VarBuilder<'static>) -> T,
    ) -> (T, Self) {
        let (value, targets) = crate::layers::registering(|| load(source.clone()));
        let component = Self {
            name,
            source,
            targets,
        };
        (value, component)
    }

    /// A layer's diffusers module path: text encoders are addressed with `text_model.` as in
    /// transformers' hub checkpoints, whichever spelling the file on disk used.
    fn module(&self, target: &PatchTarget) -> String {
        let top_level = ["text_model.", "text_projection"];
        match self.name.starts_with("text_encoder")
            && !top_level.iter().any(|p| target.name.starts_with(p))
        {
            true => format!("text_model.{}", target.name),
            false => target.name.clone(),
        }
    }

    /// The weight as loaded, re-read from its file (or seeded random backend).
    fn base_weight(&self, target: &PatchTarget) -> Result<Tensor> {
        Ok(self
            .source
            .get(target.shape.as_slice(), &format!("{}.weight", target.name))?)
    }
}

/// Where a layer lives: (component index, target index).
type LayerId = (usize, usize);

/// The model's patchable layers, their names in both LoRA namings, and what is applied now.
pub(crate) struct LoraLayers {
    components: Vec<PatchableComponent>,
    /// kohya name → layer.
    kohya: HashMap<String, LayerId>,
    /// `component.module` → layer.
    peft: HashMap<String, LayerId>,
    applied: Mutex<Applied>,
}

#[derive(Default)]
struct Applied {
    /// (file fingerprint, scale bits) of the set now applied.
    set: Vec<(u64, u32)>,
    /// The layers whose weights differ from the base now.
    patched: Vec<LayerId>,
}

impl LoraLayers {
    pub fn new(components: Vec<PatchableComponent>) -> Self {
        let layers_per_block = unet_layers_per_block(&components);
        let (mut kohya, mut peft) = (HashMap::new(), HashMap::new());
        for (c, component) in components.iter().enumerate() {
            for (t, target) in component.targets.iter().enumerate() {
                let module = component.module(target);
                for name in kohya::names_for(component.name, &module, layers_per_block) {
                    kohya.entry(name).or_insert((c, t));
                }
                // transformers 5 saves CLIP without the `text_model.` level; PEFT files made
                // with it name the layers that way.
                let short = module.strip_prefix("text_model.").unwrap_or(&module);
                for path in [module.as_str(), short] {
                    peft.entry(format!("{}.{path}", component.name))
                        .or_insert((c, t));
                }
            }
        }
        Self {
            components,
            kohya,
            peft,
            applied: Mutex::new(Applied::default()),
        }
    }

    /// How many layers a LoRA could patch.
    pub fn layer_count(&self) -> usize {
        self.components.iter().map(|c| c.targets.len()).sum()
    }

    /// Makes `loras` the applied set (empty: the base model); see
    /// [`crate::StableDiffusion::set_loras`].
    pub fn apply(&self, loras: &[ActiveLora]) -> Result<LoraReport> {
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let set: Vec<(u64, u32)> = loras
            .iter()
            .map(|l| (l.file.fingerprint(), l.scale.to_bits()))
            .collect();
        if set == applied.set {
            return Ok(LoraReport::default());
        }
        // Every file is matched against the model before any weight changes, so a LoRA that
        // does not fit leaves the model as it was.
        let mut updates: BTreeMap<LayerId, Vec<(&LoraModule, f32)>> = BTreeMap::new();
        for lora in loras {
            check_scale(lora)?;
            for module in &lora.file.modules {
                let layer = self.resolve(&lora.file, module)?;
                updates.entry(layer).or_default().push((module, lora.scale));
            }
        }
        let mut report = LoraReport::default();
        // Mark the set as changed before touching weights: a failure half-way leaves the
        // next call to restore every layer it may have reached.
        let previous = std::mem::take(&mut applied.patched);
        applied.set.clear();
        applied.patched = previous
            .iter()
            .copied()
            .chain(updates.keys().copied())
            .collect();
        for &layer in &previous {
            if !updates.contains_key(&layer) {
                let (component, target) = self.layer(layer);
                target.set_weight(&component.base_weight(target)?)?;
                report.layers_restored += 1;
            }
        }
        for (&layer, modules) in &updates {
            let (component, target) = self.layer(layer);
            let base = component.base_weight(target)?;
            let mut weight = base
                .to_dtype(DType::F32)?
                .to_device(&candle_core::Device::Cpu)?;
            for (module, scale) in modules {
                weight = (weight + delta(module, *scale, &target.shape)?)?;
            }
            let weight = weight.to_device(base.device())?.to_dtype(base.dtype())?;
            target.set_weight(&weight)?;
            report.layers_patched += 1;
        }
        applied.patched = updates.keys().copied().collect();
        applied.set = set;
        report.weights_read = report.layers_patched + report.layers_restored;
        Ok(report)
    }

    fn layer(&self, (c, t): LayerId) -> (&PatchableComponent, &PatchTarget) {
        let component = &self.components[c];
        (component, &component.targets[t])
    }

    /// The layer a module of `file` patches, with its shapes checked.
    fn resolve(&self, file: &LoraFile, module: &LoraModule) -> Result<LayerId> {
        let bad = |reason: String| EngineError::Lora {
            path: file.path().to_path_buf(),
            reason,
        };
        let found = match file.format() {
            LoraFormat::Kohya => self.kohya.get(&module.key),
            LoraFormat::Peft => self.peft.get(&module.key),
        };
        let Some(&layer) = found else {
            return Err(bad(format!(
                "{} matches no layer of this model: the LoRA was made for another model \
                 family (SD 1.x, SD 2.x and SDXL LoRAs do not mix), or patches a layer this \
                 engine does not (e.g. embeddings or norms)",
                module.key
            )));
        };
        let (component, target) = self.layer(layer);
        let (out, ins, kernel) = match target.shape.as_slice() {
            [o, i] => (*o, *i, 1),
            [o, i, k, _] => (*o, *i, *k),
            _ => unreachable!("registered layers are linear or 2-D convolutions"),
        };
        let (d, u) = (module.down.dims(), module.up.dims());
        let rank = module.rank();
        let down_fits = d.len() == 2 && d[1] == ins && kernel == 1
            || d.len() == 4 && d[1] == ins && d[2..].iter().all(|&k| k == kernel);
        if !down_fits || u[0] != out {
            return Err(bad(format!(
                "{} does not fit {}.{} (weight {:?}): its down is {d:?} and its up {u:?} (rank \
                 {rank}); the LoRA was made for a model of another size or family",
                module.key, component.name, target.name, target.shape
            )));
        }
        Ok(layer)
    }
}

/// `scale · (alpha / rank) · up · down` in the layer's shape, f32, as PEFT's merge computes
/// it: the product first, then one multiplication by the scaling.
fn delta(module: &LoraModule, scale: f32, shape: &[usize]) -> Result<Tensor> {
    let rank = module.rank();
    let alpha = module.alpha.unwrap_or(rank as f32);
    let scaling = (alpha as f64 / rank as f64 * scale as f64) as f32;
    let up = module.up.reshape((module.up.dims()[0], rank))?;
    let down = module.down.reshape((rank, ()))?;
    let product = up.matmul(&down)?.reshape(shape)?;
    Ok((product * scaling as f64)?)
}

fn check_scale(lora: &ActiveLora) -> Result<()> {
    if !lora.scale.is_finite() || !super::SCALE_RANGE.contains(&lora.scale) {
        return Err(EngineError::Lora {
            path: lora.file.path().to_path_buf(),
            reason: format!(
                "scale {} is outside {}..{}",
                lora.scale,
                super::SCALE_RANGE.start(),
                super::SCALE_RANGE.end()
            ),
        });
    }
    Ok(())
}

/// The UNet's `layers_per_block`, from its down blocks' resnet numbers (SGM names depend on
/// it); 2, the value of every SD family, when there is no UNet.
fn unet_layers_per_block(components: &[PatchableComponent]) -> usize {
    components
        .iter()
        .filter(|c| c.name == "unet")
        .flat_map(|c| &c.targets)
        .filter_map(|t| {
            let rest = t.name.strip_prefix("down_blocks.0.resnets.")?;
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(2, |j| j + 1)
}
