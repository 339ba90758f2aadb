//! Getting a model into memory: where its files are ([`source`]), what its configs say
//! ([`config`]), single-file checkpoints read in place ([`checkpoint`]), the CLIP tokenizer
//! (from a folder or built in), LoRA files patched into loaded weights ([`lora`]), seeded
//! random weights for benchmarking an architecture, and memory-mapped weights that leave the
//! process's memory once copied out ([`mapped`]).

pub mod checkpoint;
pub(crate) mod clip_vocab;
pub mod config;
pub mod lora;
pub mod mapped;
pub mod random_weights;
pub mod source;
pub mod tokenizer;
