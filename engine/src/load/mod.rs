//! Getting a model into memory: where its files are ([`source`]), what its configs say
//! ([`config`]), single-file checkpoints read in place ([`checkpoint`]), the CLIP tokenizer
//! (from a folder or built in), LoRA files patched into loaded weights ([`lora`]), and seeded
//! random weights for benchmarking an architecture.

pub mod checkpoint;
pub(crate) mod clip_vocab;
pub mod config;
pub mod lora;
pub mod random_weights;
pub mod source;
pub mod tokenizer;
