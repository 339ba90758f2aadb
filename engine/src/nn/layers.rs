//! The network layers the UNet and VAE are built from. On the CPU in f32 they run our kernels
//! ([`crate::kernels`]); on other devices or dtypes they fall back to candle's generic ops,
//! which compute the same functions.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::kernels::conv::PackedConv;
use crate::kernels::matmul::{self, Bf16, PackedA, PackedB, Precision, F32};
use crate::kernels::winograd::{self, WinogradWeights};
use crate::kernels::{attention::AttentionOp, conv, elementwise, norm::GroupNormOp};
use crate::model::ComputePrecision;

type Result<T> = candle_core::Result<T>;

thread_local! {
    static LOADING_PRECISION: std::cell::Cell<ComputePrecision> =
        const { std::cell::Cell::new(ComputePrecision::Fp32) };
}

/// Runs `load` with convolution and linear weights packed for `precision`: the layers read it
/// while loading (the VarBuilder API has no room for it), and keep it for their lifetime.
pub(crate) fn loading_with<T>(precision: ComputePrecision, load: impl FnOnce() -> T) -> T {
    struct Restore(ComputePrecision);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOADING_PRECISION.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(LOADING_PRECISION.with(|p| p.replace(precision)));
    load()
}

/// The precision weights loaded now are packed for, where our bf16 kernel can run it.
fn packing_precision() -> ComputePrecision {
    match LOADING_PRECISION.with(|p| p.get()) {
        ComputePrecision::Bf16 if Bf16::available() => ComputePrecision::Bf16,
        _ => ComputePrecision::Fp32,
    }
}

thread_local! {
    static REGISTRY: std::cell::RefCell<Option<Vec<PatchTarget>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `load` and returns, with its result, every [`Linear`] and [`Conv2d`] it loaded through
/// [`Linear::load`], [`Linear::load_no_bias`] or [`Conv2d::load`]: the layers a LoRA may patch
/// (see [`crate::lora`]), named by their VarBuilder prefix.
pub(crate) fn registering<T>(load: impl FnOnce() -> T) -> (T, Vec<PatchTarget>) {
    struct Restore(Option<Vec<PatchTarget>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            REGISTRY.with(|r| *r.borrow_mut() = self.0.take());
        }
    }
    let restore = Restore(REGISTRY.with(|r| r.borrow_mut().replace(Vec::new())));
    let value = load();
    let targets = REGISTRY.with(|r| r.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    (value, targets)
}

fn register(target: impl FnOnce() -> PatchTarget) {
    REGISTRY.with(|r| {
        if let Some(targets) = r.borrow_mut().as_mut() {
            targets.push(target());
        }
    });
}

/// A loaded layer whose weight can be replaced while the model is in use (LoRA patching): the
/// name it was loaded under, its weight's shape, and a handle on the weight the layer runs.
pub(crate) struct PatchTarget {
    /// The tensor prefix the layer was loaded from, e.g.
    /// `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`.
    pub name: String,
    /// `[out, in]` or `[out, in, k, k]`.
    pub shape: Vec<usize>,
    slot: WeightSlot,
    precision: ComputePrecision,
}

enum WeightSlot {
    Linear(Arc<RwLock<LinearWeight>>),
    /// With the layer's (stride, padding).
    Conv(Arc<RwLock<ConvWeight>>, (usize, usize)),
}

impl PatchTarget {
    /// Makes the layer run `weight` (the shape it was loaded with) from now on, packed as
    /// weights are at load; a bit-identical tensor gives bit-identical results.
    pub fn set_weight(&self, weight: &Tensor) -> Result<()> {
        if weight.dims() != self.shape.as_slice() {
            candle_core::bail!(
                "{}: new weight {:?} for a layer of shape {:?}",
                self.name,
                weight.dims(),
                self.shape
            );
        }
        match &self.slot {
            WeightSlot::Linear(slot) => {
                let packed = LinearWeight::pack(weight.clone(), self.precision)?;
                *slot.write().unwrap_or_else(PoisonError::into_inner) = packed;
            }
            WeightSlot::Conv(slot, geometry) => {
                let packed = ConvWeight::pack(weight.clone(), self.precision, *geometry)?;
                *slot.write().unwrap_or_else(PoisonError::into_inner) = packed;
            }
        }
        Ok(())
    }
}

/// Reads a weight slot; a panic elsewhere while a weight was being swapped leaves a whole
/// weight behind (the swap is one assignment), so a poisoned lock is still safe to read.
fn read<T>(slot: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    slot.read().unwrap_or_else(PoisonError::into_inner)
}

fn fast_path(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && crate::kernels::isa::isa() != crate::kernels::isa::Isa::Candle
}

/// Whether a weight should be packed for our GEMM at load time: on the CPU, in f32, where the
/// kernel runs. The packed copy replaces the tensor (same size), so memory does not grow.
fn packable(w: &Tensor) -> bool {
    fast_path(w) && matmul::available()
}

/// Runs `f` on the f32 data of a CPU tensor, read in place (weights come contiguous from
/// the loader), so packing a weight never holds a third copy of it besides the tensor and
/// the packed panels.
fn with_host_data<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let t = t.contiguous()?; // the same storage when already contiguous
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(crate::kernels::contiguous(cpu, layout)?)),
        _ => candle_core::bail!("only CPU weights are packed"),
    }
}

/// A 2-D convolution with square kernel, stride and padding, and a bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Behind a lock so a LoRA can replace it between jobs (see [`PatchTarget`]).
    weight: Arc<RwLock<ConvWeight>>,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

#[derive(Clone)]
enum ConvWeight {
    Tensor(Tensor),
    /// Packed for our GEMM, with the `(Cout, Cin, kh, kw)` shape.
    Packed(Arc<PackedA<F32>>, (usize, usize, usize, usize)),
    PackedBf16(Arc<PackedA<Bf16>>, (usize, usize, usize, usize)),
    /// In the Winograd domain (3x3, stride 1, padding 1: see [`winograd`]), instead of
    /// [`ConvWeight::Packed`]. f32 only: the transformed operands rounded to bf16 lose too
    /// much (up to 26/255 from diffusers on the tiny TAESD, against 2 for the direct bf16
    /// convolution).
    Winograd(Arc<WinogradWeights<F32>>, (usize, usize, usize, usize)),
}

impl std::fmt::Debug for ConvWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tensor(t) => write!(f, "Tensor({:?})", t.shape()),
            Self::Packed(_, dims) => write!(f, "Packed({dims:?})"),
            Self::PackedBf16(_, dims) => write!(f, "PackedBf16({dims:?})"),
            Self::Winograd(_, dims) => write!(f, "Winograd({dims:?})"),
        }
    }
}

impl ConvWeight {
    /// Packs a `[Cout, Cin, k, k]` weight for our GEMM where it runs, else keeps the tensor;
    /// in the Winograd domain where `geometry` (stride, padding) allows it.
    fn pack(
        weight: Tensor,
        precision: ComputePrecision,
        (stride, padding): (usize, usize),
    ) -> Result<Self> {
        if !packable(&weight) {
            return Ok(Self::Tensor(weight));
        }
        let dims = weight.dims4()?;
        let winograd = precision == ComputePrecision::Fp32
            && winograd::eligible(dims, stride, padding)
            && winograd_enabled();
        with_host_data(&weight, |data| match (precision, winograd) {
            (ComputePrecision::Fp32, false) => {
                Self::Packed(Arc::new(conv::pack_weights(data, dims.0)), dims)
            }
            (ComputePrecision::Bf16, false) => {
                Self::PackedBf16(Arc::new(conv::pack_weights(data, dims.0)), dims)
            }
            (_, true) => {
                Self::Winograd(Arc::new(WinogradWeights::pack(data, dims.0, dims.1)), dims)
            }
        })
    }
}

/// Whether eligible 3x3 convolutions run by Winograd's algorithm: yes, unless the hidden
/// setting `IMAGINE_WINOGRAD=0` asks for the direct convolution (for comparisons). Read once.
fn winograd_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("IMAGINE_WINOGRAD").map_or(true, |v| v != "0"))
}

/// `conv2d(x, bias) (+ extra)` with weights prepared at load.
fn packed_conv<P: Precision>(
    conv: &Conv2d,
    weights: conv::PackedConv<P>,
    x: &Tensor,
    extra: Option<&Tensor>,
) -> Result<Tensor> {
    let op = conv::PackedConv2dOp {
        weights,
        stride: conv.stride,
        padding: conv.padding,
    };
    match extra {
        Some(e) => x
            .contiguous()?
            .apply_op3_no_bwd(&conv.bias, &e.contiguous()?, &op),
        None => x.contiguous()?.apply_op2_no_bwd(&conv.bias, &op),
    }
}

impl Conv2d {
    pub fn load(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb.get((cout, cin, kernel, kernel), "weight")?;
        let bias = match vb.get(cout, "bias") {
            Ok(b) => b,
            Err(_) if !vb.contains_tensor("bias") => {
                Tensor::zeros(cout, weight.dtype(), weight.device())?
            }
            Err(e) => return Err(e),
        };
        let precision = packing_precision();
        let geometry = (stride, padding);
        let weight = Arc::new(RwLock::new(ConvWeight::pack(weight, precision, geometry)?));
        register(|| PatchTarget {
            name: vb.prefix(),
            shape: vec![cout, cin, kernel, kernel],
            slot: WeightSlot::Conv(weight.clone(), geometry),
            precision,
        });
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// `conv(x) + extra`, with `extra` `[B, Cout]` (per image and channel) or the output's
    /// shape (a residual); fused into the convolution on our fast path.
    pub fn forward_add(&self, x: &Tensor, extra: &Tensor) -> Result<Tensor> {
        if fast_path(x) && fast_path(extra) {
            match &*read(&self.weight) {
                ConvWeight::Packed(w, kernel) => {
                    return packed_conv(self, PackedConv::Direct(w, *kernel), x, Some(extra))
                }
                ConvWeight::PackedBf16(w, kernel) => {
                    return packed_conv(self, PackedConv::Direct(w, *kernel), x, Some(extra))
                }
                ConvWeight::Winograd(w, _) => {
                    return packed_conv(self, PackedConv::Winograd(w), x, Some(extra))
                }
                ConvWeight::Tensor(_) => {}
            }
        }
        let y = self.forward(x)?;
        match extra.rank() {
            2 => y.broadcast_add(&extra.unsqueeze(2)?.unsqueeze(3)?),
            _ => y + extra,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &*read(&self.weight) {
            ConvWeight::Packed(w, kernel) if fast_path(x) => {
                packed_conv(self, PackedConv::Direct(w, *kernel), x, None)
            }
            ConvWeight::PackedBf16(w, kernel) if fast_path(x) => {
                packed_conv(self, PackedConv::Direct(w, *kernel), x, None)
            }
            ConvWeight::Winograd(w, _) if fast_path(x) => {
                packed_conv(self, PackedConv::Winograd(w), x, None)
            }
            ConvWeight::Packed(..) | ConvWeight::PackedBf16(..) | ConvWeight::Winograd(..) => {
                candle_core::bail!(
                    "conv2d: weights packed for f32 CPU, input is {:?} on {:?}",
                    x.dtype(),
                    x.device()
                )
            }
            ConvWeight::Tensor(w) if fast_path(x) => x.contiguous()?.apply_op3_no_bwd(
                w,
                &self.bias,
                &conv::Conv2dOp {
                    stride: self.stride,
                    padding: self.padding,
                },
            ),
            ConvWeight::Tensor(w) => x
                .conv2d(w, self.padding, self.stride, 1, 1)?
                .broadcast_add(&self.bias.reshape((1, (), 1, 1))?),
        }
    }
}

/// `x · wᵀ + b` over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Behind a lock so a LoRA can replace it between jobs (see [`PatchTarget`]).
    weight: Arc<RwLock<LinearWeight>>,
    bias: Tensor,
}

#[derive(Clone)]
enum LinearWeight {
    Tensor(Tensor),
    Packed(Arc<PackedB<F32>>),
    PackedBf16(Arc<PackedB<Bf16>>),
}

impl std::fmt::Debug for LinearWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tensor(t) => write!(f, "Tensor({:?})", t.shape()),
            Self::Packed(p) => write!(f, "Packed([{}, {}])", p.n(), p.k()),
            Self::PackedBf16(p) => write!(f, "PackedBf16([{}, {}])", p.n(), p.k()),
        }
    }
}

impl LinearWeight {
    /// Packs an `[out, in]` weight for our GEMM where it runs, else keeps the tensor.
    fn pack(weight: Tensor, precision: ComputePrecision) -> Result<Self> {
        if !packable(&weight) {
            return Ok(Self::Tensor(weight));
        }
        let (outs, ins) = weight.dims2()?;
        with_host_data(&weight, |data| match precision {
            ComputePrecision::Fp32 => {
                Self::Packed(Arc::new(elementwise::pack_linear(data, outs, ins)))
            }
            ComputePrecision::Bf16 => {
                Self::PackedBf16(Arc::new(elementwise::pack_linear(data, outs, ins)))
            }
        })
    }
}

impl Linear {
    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let weight = Arc::new(RwLock::new(LinearWeight::pack(
            weight,
            packing_precision(),
        )?));
        Ok(Self { weight, bias })
    }

    /// [`Linear::new`], registered as a [`PatchTarget`] named by `vb`'s prefix.
    fn new_patchable(vb: &VarBuilder, weight: Tensor, bias: Tensor) -> Result<Self> {
        let shape = weight.dims().to_vec();
        let layer = Self::new(weight, bias)?;
        register(|| PatchTarget {
            name: vb.prefix(),
            shape,
            slot: WeightSlot::Linear(layer.weight.clone()),
            precision: packing_precision(),
        });
        Ok(layer)
    }

    /// The precision this layer's products run in (attention over its outputs follows it).
    pub fn precision(&self) -> ComputePrecision {
        match *read(&self.weight) {
            LinearWeight::PackedBf16(_) => ComputePrecision::Bf16,
            _ => ComputePrecision::Fp32,
        }
    }

    pub fn load(vb: VarBuilder, ins: usize, outs: usize) -> Result<Self> {
        let (weight, bias) = (vb.get((outs, ins), "weight")?, vb.get(outs, "bias")?);
        Self::new_patchable(&vb, weight, bias)
    }

    pub fn load_no_bias(vb: VarBuilder, ins: usize, outs: usize) -> Result<Self> {
        let weight = vb.get((outs, ins), "weight")?;
        let bias = Tensor::zeros(outs, weight.dtype(), weight.device())?;
        Self::new_patchable(&vb, weight, bias)
    }

    /// From a 1x1 convolution's `[out, in, 1, 1]` weight or a plain `[out, in]` one (old VAE
    /// checkpoints store attention projections as convolutions).
    pub fn load_flexible(vb: VarBuilder, ins: usize, outs: usize) -> Result<Self> {
        let weight = match vb.get((outs, ins), "weight") {
            Ok(w) => w,
            Err(_) => vb.get((outs, ins, 1, 1), "weight")?.reshape((outs, ins))?,
        };
        Self::new(weight, vb.get(outs, "bias")?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &*read(&self.weight) {
            LinearWeight::Packed(w) if fast_path(x) => x
                .contiguous()?
                .apply_op2_no_bwd(&self.bias, &elementwise::PackedLinearOp { weight: &**w }),
            LinearWeight::PackedBf16(w) if fast_path(x) => x
                .contiguous()?
                .apply_op2_no_bwd(&self.bias, &elementwise::PackedLinearOp { weight: &**w }),
            LinearWeight::Packed(_) | LinearWeight::PackedBf16(_) => candle_core::bail!(
                "linear: weights packed for f32 CPU, input is {:?} on {:?}",
                x.dtype(),
                x.device()
            ),
            LinearWeight::Tensor(w) if fast_path(x) => {
                x.contiguous()?
                    .apply_op3_no_bwd(w, &self.bias, &elementwise::LinearOp)
            }
            LinearWeight::Tensor(w) => {
                candle_nn::Linear::new(w.clone(), Some(self.bias.clone())).forward(x)
            }
        }
    }
}

/// Group normalisation, optionally with SiLU applied to its output.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn load(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!(
                "group norm: {channels} channels are not divisible into {groups} groups"
            );
        }
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// `silu(group_norm(x))` in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if fast_path(x) {
            return x.contiguous()?.apply_op3_no_bwd(
                &self.weight,
                &self.bias,
                &GroupNormOp {
                    groups: self.groups,
                    eps: self.eps,
                    silu,
                },
            );
        }
        let channels = self.weight.dim(0)?;
        let y = candle_nn::GroupNorm::new(
            self.weight.clone(),
            self.bias.clone(),
            channels,
            self.groups,
            self.eps,
        )?
        .forward(x)?;
        if silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        }
    }
}

/// Layer normalisation over the last dimension (candle's fused op is already parallel).
pub fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<candle_nn::LayerNorm> {
    candle_nn::layer_norm(dim, eps, vb)
}

/// Multi-head attention over `[B, S, heads·D]` tensors, output in the same layout; its two
/// products run in `precision` on our fast path (the softmax is always f32).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    precision: ComputePrecision,
) -> Result<Tensor> {
    if fast_path(q) {
        return q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &AttentionOp {
                heads,
                scale: scale as f32,
                bf16: precision == ComputePrecision::Bf16,
            },
        );
    }
    let (b, s, _) = q.dims3()?;
    let rows = attention_chunk_rows(b * heads, s, k.dim(1)?);
    generic_attention(q, k, v, heads, scale, rows)
}

/// candle's attention, `rows` queries at a time (the result does not depend on `rows`).
fn generic_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    rows: usize,
) -> Result<Tensor> {
    let split = |t: &Tensor| -> Result<Tensor> {
        let (b, s, w) = t.dims3()?;
        t.reshape((b, s, heads, w / heads))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (b, s, w) = q.dims3()?;
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let mut outs = Vec::with_capacity(s.div_ceil(rows));
    for start in (0..s).step_by(rows) {
        let q = qh.narrow(2, start, rows.min(s - start))?;
        outs.push(attention_rows(&q, &kh, &vh, scale)?);
    }
    Tensor::cat(&outs, 2)?.transpose(1, 2)?.reshape((b, s, w))
}

/// The most bytes one chunk of f32 attention scores may take on the generic path: a score
/// matrix for every query at once would need 8.6 GB for SD 1.5 at 1024 px.
const ATTENTION_CHUNK_BYTES: usize = 256 << 20;

/// How many query rows a chunk of generic attention takes, so that its `[BH, rows, keys]` f32
/// scores stay under [`ATTENTION_CHUNK_BYTES`].
fn attention_chunk_rows(batch_heads: usize, queries: usize, keys: usize) -> usize {
    let per_row = batch_heads * keys * 4;
    (ATTENTION_CHUNK_BYTES / per_row.max(1)).clamp(1, queries.max(1))
}

/// softmax(q kᵀ · scale) v for `[BH, rows, D]` queries: the products in the tensors' dtype,
/// the softmax in f32 (as diffusers' fused attention does in fp16).
fn attention_rows(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = if q.dtype() == DType::F32 {
        (q.matmul(&k.t()?)? * scale)?
    } else {
        // Scaled first, so that half-precision scores stay far from their overflow.
        (q * scale)?.matmul(&k.t()?)?.to_dtype(DType::F32)?
    };
    candle_nn::ops::softmax_last_dim(&scores)?
        .to_dtype(v.dtype())?
        .matmul(v)
}

/// diffusers' GEGLU activation: `x[..., :n] * gelu(x[..., n:])`.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) {
        return x.contiguous()?.apply_op1_no_bwd(&elementwise::GegluOp);
    }
    let halves = x.chunk(2, D::Minus1)?;
    &halves[0] * halves[1].gelu_erf()?
}

/// `[B, C, H, W]` to `[B, H·W, C]`, contiguous.
pub fn to_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let flat = x.reshape((b, c, h * w))?;
    if fast_path(x) {
        return flat
            .contiguous()?
            .apply_op1_no_bwd(&elementwise::TransposeOp);
    }
    flat.transpose(1, 2)?.contiguous()
}

/// `[B, H·W, C]` back to `[B, C, H, W]`, contiguous.
pub fn from_tokens(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    let t = if fast_path(x) {
        x.contiguous()?
            .apply_op1_no_bwd(&elementwise::TransposeOp)?
    } else {
        x.transpose(1, 2)?.contiguous()?
    };
    t.reshape((b, c, h, w))
}

/// Nearest-neighbour upsampling to `size`, 2x when `size` is `None`.
pub fn upsample_nearest(x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    match size {
        None if fast_path(x) => x.contiguous()?.apply_op1_no_bwd(&elementwise::Upsample2xOp),
        None => x.upsample_nearest2d(2 * h, 2 * w),
        Some((th, tw)) => x.upsample_nearest2d(th, tw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_attention_gives_the_same_result_in_chunks() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 37, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 11, 16), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 11, 16), &dev).unwrap();
        let whole = generic_attention(&q, &k, &v, 4, 0.5, 37).unwrap();
        for rows in [1, 5, 36] {
            let chunked = generic_attention(&q, &k, &v, 4, 0.5, rows).unwrap();
            let diff = (&whole - &chunked)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6, "{rows} rows");
        }
        assert_eq!(whole.dims(), &[2, 37, 16]);
    }

    #[test]
    fn attention_chunks_bound_the_score_memory() {
        // SD 1.5 at 1024 px with guidance: 2 x 8 heads over 16384 tokens.
        let rows = attention_chunk_rows(16, 16384, 16384);
        assert!(rows * 16 * 16384 * 4 <= ATTENTION_CHUNK_BYTES && rows >= 64);
        // Small problems run in one chunk.
        assert_eq!(attention_chunk_rows(16, 4096 / 16, 77), 4096 / 16);
    }
}
