//! From a request to pixels: the loaded model ([`model`]), the sampling loop ([`generate`]),
//! seeded noise, image/tensor conversion, and the toolbox's canvases (outpainting, upscaling).

pub mod generate;
pub mod inpaint;
pub mod model;
pub mod noise;
pub mod outpaint;
pub mod pixels;
pub mod upscale;
