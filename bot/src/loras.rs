//! LoRAs as users name them: `--lora FILE[:SCALE]` on the command line, `<lora:NAME:SCALE>`
//! in a bot prompt (looked up in the configured folder), and how a job's LoRAs are recorded
//! in its PNG the way AUTOMATIC1111 writes them (the tags in the prompt, a `Lora hashes`
//! field), so a web UI that reads the PNG finds the same files.
//!
//! The tags stay in the stored prompt: a button job (U, V, 🔄, Vary) reuses its parent's
//! prompt and so its LoRAs, and the worker reads them from there before each job.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use imagine_engine::lora::SCALE_RANGE;
use imagine_engine::{ActiveLora, LoraFile};
use sha2::{Digest, Sha256};

/// One LoRA a job asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraChoice {
    pub path: PathBuf,
    pub scale: f32,
}

impl LoraChoice {
    /// The name the web UIs give it: the file name without `.safetensors`.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `<lora:NAME:SCALE>`, as the web UIs write it into prompts.
    pub fn prompt_tag(&self) -> String {
        format!("<lora:{}:{}>", self.name(), self.scale)
    }
}

/// Parses `--lora FILE.safetensors[:SCALE]` (scale 1.0 when omitted, within ±4).
pub fn parse_lora_arg(s: &str) -> std::result::Result<LoraChoice, String> {
    let (path, scale) = match s.rsplit_once(':') {
        Some((path, scale)) if path.ends_with(".safetensors") => (path, parse_scale(scale)?),
        _ => (s, 1.0),
    };
    if !path.ends_with(".safetensors") {
        return Err(format!(
            "{s:?} is not FILE.safetensors[:SCALE] (for example style.safetensors:0.8)"
        ));
    }
    Ok(LoraChoice {
        path: PathBuf::from(path),
        scale,
    })
}

/// A LoRA scale: a finite number within ±4.
pub fn parse_scale(s: &str) -> std::result::Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && SCALE_RANGE.contains(&v) => Ok(v),
        _ => Err(format!(
            "LoRA scale {s:?} is not a number from {} to {}",
            SCALE_RANGE.start(),
            SCALE_RANGE.end()
        )),
    }
}

/// Opens every chosen file (checked against nothing yet: the model does that when the set is
/// applied).
/// The files of the previous call stay open, so a run of jobs with the same LoRAs reads them
/// once; a file replaced on disk (other size or modification time) is read again.
pub fn open_all(choices: &[LoraChoice]) -> Result<Vec<ActiveLora>> {
    let mut recent = RECENT_FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut kept = HashMap::new();
    let mut active = Vec::with_capacity(choices.len());
    for c in choices {
        let key = FileKey::of(&c.path)?;
        let file = match recent.get(&key).or_else(|| kept.get(&key)) {
            Some(file) => Arc::clone(file),
            None => Arc::new(LoraFile::open(&c.path)?),
        };
        kept.insert(key, Arc::clone(&file));
        active.push(ActiveLora::new(file, c.scale));
    }
    // Only this job's files stay: a LoRA can hold hundreds of megabytes.
    *recent = kept;
    Ok(active)
}

/// A file as it is now on disk: the same path with another size or modification time is
/// another file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileKey {
    fn of(path: &Path) -> Result<FileKey> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(FileKey {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

static RECENT_FILES: LazyLock<Mutex<HashMap<FileKey, Arc<LoraFile>>>> =
    LazyLock::new(Default::default);
static HASHES: LazyLock<Mutex<HashMap<FileKey, String>>> = LazyLock::new(Default::default);
/// Hashes remembered at most (a few hundred bytes each); past it the memo starts again.
const MAX_REMEMBERED_HASHES: usize = 1024;

/// [`short_hash`], computed once per file as it is on disk.
fn remembered_hash(path: &Path) -> Result<String> {
    let key = FileKey::of(path)?;
    if let Some(hash) = HASHES.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(hash.clone());
    }
    let hash = short_hash(path)?;
    let mut memo = HASHES.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() >= MAX_REMEMBERED_HASHES {
        memo.clear();
    }
    memo.insert(key, hash.clone());
    Ok(hash)
}

/// AUTOMATIC1111's short hash of a `.safetensors` LoRA: the first 12 hex digits of the
/// SHA-256 of the file after its header (the "addnet" hash Civitai lists as AutoV3), so
/// editing the metadata does not change it.
pub fn short_hash(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let header = u64::from_le_bytes(len);
    if header > 100 << 20 {
        bail!("{} is not a safetensors file", path.display());
    }
    std::io::copy(&mut file.by_ref().take(header), &mut std::io::sink())?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(hex[..12].to_string())
}

/// The prompt as the PNG records it: the user's text with each LoRA's tag that it does not
/// already carry appended.
pub fn prompt_with_tags(prompt: &str, choices: &[LoraChoice]) -> String {
    let mut text = prompt.to_string();
    for c in choices {
        let tag = c.prompt_tag();
        if !text.contains(&tag) {
            text.push_str(&format!(" {tag}"));
        }
    }
    text
}

/// `(name, short hash)` of each choice, for the PNG's `Lora hashes` field.
pub fn hashes(choices: &[LoraChoice]) -> Result<Vec<(String, String)>> {
    choices
        .iter()
        .map(|c| Ok((c.name(), remembered_hash(&c.path)?)))
        .collect()
}

/// The most LoRAs one prompt may name.
pub const MAX_TAGS: usize = 8;
/// Discord's limit on a message's length.
const MAX_REPLY_CHARS: usize = 2000;

/// The configured folder of LoRA files, named in prompts by file name without `.safetensors`.
#[derive(Debug, Clone)]
pub struct LoraFolder {
    dir: PathBuf,
}

impl LoraFolder {
    /// Checks that `dir` is a readable folder (at start, so a typo is found then).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::read_dir(dir).with_context(|| {
            format!(
                "the LoRA folder {} (IMAGINE_LORAS / loras) cannot be read",
                dir.display()
            )
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The names of the `.safetensors` files in the folder, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".safetensors").map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// The file a tag names, if the folder has it. Names with path separators or `..` never
    /// leave the folder.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        let plain = !name.is_empty()
            && !name.contains(['/', '\\'])
            && name != ".."
            && !name.starts_with('.');
        let path = self.dir.join(format!("{name}.safetensors"));
        (plain && path.is_file()).then_some(path)
    }
}

/// A prompt's `<lora:NAME:SCALE>` tags and its text without them (what CLIP reads).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLoras {
    pub text: String,
    pub tags: Vec<(String, f32)>,
}

/// Finds `<lora:NAME>` and `<lora:NAME:SCALE>` tags as the web UIs write them (scale 1 when
/// omitted); an `Err` is the user's private reply.
pub fn extract_tags(prompt: &str) -> std::result::Result<PromptLoras, String> {
    let mut text = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        text.push_str(&rest[..start]);
        let inner = &rest[start + "<lora:".len()..];
        let end = inner.find('>').ok_or_else(|| {
            "A `<lora:` tag is not closed: write it as <lora:NAME:SCALE>, e.g. <lora:ink:0.8>."
                .to_string()
        })?;
        let body = &inner[..end];
        let (name, scale) = match body.split_once(':') {
            Some((name, scale)) => (
                name.trim(),
                parse_scale(scale).map_err(|e| format!("{e}."))?,
            ),
            None => (body.trim(), 1.0),
        };
        if name.is_empty() {
            return Err("A `<lora:>` tag names no LoRA: write <lora:NAME:SCALE>.".into());
        }
        tags.push((name.to_string(), scale));
        text.push(' ');
        rest = &inner[end + 1..];
    }
    text.push_str(rest);
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "That prompt names {} LoRAs; at most {MAX_TAGS} can be used at once.",
            tags.len()
        ));
    }
    Ok(PromptLoras {
        text: text.split_whitespace().collect::<Vec<_>>().join(" "),
        tags,
    })
}

/// The files a prompt's tags name in `folder`; an `Err` is the user's private reply (no
/// folder configured, or names it lacks, listing the ones it has within Discord's 2,000
/// characters).
pub fn resolve(
    folder: Option<&LoraFolder>,
    tags: &[(String, f32)],
) -> std::result::Result<Vec<LoraChoice>, String> {
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let Some(folder) = folder else {
        return Err("This bot has no LoRAs: remove the <lora:...> tags from your prompt.".into());
    };
    let mut choices = Vec::with_capacity(tags.len());
    for (name, scale) in tags {
        match folder.find(name) {
            Some(path) => choices.push(LoraChoice {
                path,
                scale: *scale,
            }),
            None => return Err(unknown_reply(name, &folder.names())),
        }
    }
    Ok(choices)
}

/// Checks a new job's prompt: every tag parses and names a file of the folder. An `Err` is
/// the user's private reply.
pub fn check_prompt(folder: Option<&Path>, prompt: &str) -> std::result::Result<(), String> {
    let tags = extract_tags(prompt)?.tags;
    let folder = folder.map(|dir| LoraFolder {
        dir: dir.to_path_buf(),
    });
    resolve(folder.as_ref(), &tags).map(drop)
}

/// What a job runs with: its prompt without tags, and the LoRA files they name.
#[derive(Debug, Clone)]
pub struct JobLoras {
    pub text: String,
    pub choices: Vec<LoraChoice>,
}

/// Reads a stored job's tags again when it runs (a file may have gone since it was queued).
pub fn for_job(folder: Option<&Path>, prompt: &str) -> Result<JobLoras> {
    let fail = |reason: String| anyhow::anyhow!(reason);
    let parsed = extract_tags(prompt).map_err(fail)?;
    let folder = folder.map(|dir| LoraFolder {
        dir: dir.to_path_buf(),
    });
    let choices = resolve(folder.as_ref(), &parsed.tags).map_err(fail)?;
    Ok(JobLoras {
        text: parsed.text,
        choices,
    })
}

fn unknown_reply(name: &str, available: &[String]) -> String {
    let name: String = name.chars().take(100).collect();
    if available.is_empty() {
        return format!("There is no LoRA named `{name}`: this bot has none yet.");
    }
    let mut reply = format!("There is no LoRA named `{name}`. Available: ");
    for (i, known) in available.iter().enumerate() {
        let item = format!("{}`{known}`", if i == 0 { "" } else { ", " });
        let more = format!(" and {} more.", available.len() - i);
        if reply.len() + item.len() + more.len() + 1 > MAX_REPLY_CHARS {
            reply.push_str(&more);
            return reply;
        }
        reply.push_str(&item);
    }
    reply.push('.');
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_arguments_are_parsed_strictly() {
        let ok = |s: &str| parse_lora_arg(s).unwrap();
        assert_eq!(ok("a/style.safetensors").scale, 1.0);
        assert_eq!(ok("a/style.safetensors:0.5").scale, 0.5);
        assert_eq!(
            ok("C:/x/style.safetensors:-1").path,
            PathBuf::from("C:/x/style.safetensors")
        );
        assert_eq!(ok("style.safetensors:0.5").prompt_tag(), "<lora:style:0.5>");
        for bad in [
            "style.ckpt",
            "style.safetensors:",
            "style.safetensors:4.5",
            "style.safetensors:NaN",
            "style.safetensors:x",
        ] {
            assert!(parse_lora_arg(bad).is_err(), "{bad}");
        }
    }

    /// A run of jobs with one LoRA opens and hashes it once; the same path rewritten with
    /// other weights is read again (and hashes differently).
    #[test]
    fn a_lora_is_read_once_per_version_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("style.safetensors");
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/models/loras/tiny-sd15-kohya.safetensors");
        std::fs::copy(&source, &path).unwrap();
        let choice = vec![ok_choice(path.to_str().unwrap(), 0.5)];
        let first = open_all(&choice).unwrap();
        let again = open_all(&choice).unwrap();
        assert!(Arc::ptr_eq(&first[0].file, &again[0].file));
        let hash = hashes(&choice).unwrap()[0].1.clone();
        assert_eq!(hash, short_hash(&path).unwrap());

        let other = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/models/loras/tiny-sd15-peft.safetensors");
        std::fs::copy(&other, &path).unwrap();
        let reread = open_all(&choice).unwrap();
        assert!(!Arc::ptr_eq(&first[0].file, &reread[0].file));
        assert_eq!(reread[0].file.format(), imagine_engine::LoraFormat::Peft);
        assert_ne!(hashes(&choice).unwrap()[0].1, hash);
    }

    #[test]
    fn the_prompt_gets_each_missing_tag_once() {
        let c = vec![
            ok_choice("a.safetensors", 0.5),
            ok_choice("b.safetensors", 1.0),
        ];
        assert_eq!(
            prompt_with_tags("a cat <lora:a:0.5>", &c),
            "a cat <lora:a:0.5> <lora:b:1>"
        );
    }

    #[test]
    fn tags_are_taken_out_of_the_prompt_as_the_web_uis_write_them() {
        let p = extract_tags("a cat <lora:ink:0.8>, in snow <lora:film>").unwrap();
        assert_eq!(p.text, "a cat , in snow");
        assert_eq!(
            p.tags,
            [("ink".to_string(), 0.8), ("film".to_string(), 1.0)]
        );
        assert_eq!(extract_tags("a cat").unwrap().tags, []);
        for bad in [
            "a <lora:ink:9>",
            "a <lora:ink",
            "a <lora::1>",
            "<lora:ink:x>",
        ] {
            assert!(extract_tags(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_names_list_what_exists_within_discords_limit() {
        let many: Vec<String> = (0..500).map(|i| format!("style-number-{i}")).collect();
        let reply = unknown_reply("nope", &many);
        assert!(reply.len() <= MAX_REPLY_CHARS && reply.contains("`style-number-0`"));
        assert!(reply.ends_with("more."), "{reply}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ink.safetensors"), b"").unwrap();
        let folder = LoraFolder::open(dir.path()).unwrap();
        let err = resolve(Some(&folder), &[("../ink".into(), 1.0)]).unwrap_err();
        assert!(err.contains("Available: `ink`."), "{err}");
        assert_eq!(
            resolve(Some(&folder), &[("ink".into(), 0.5)]).unwrap()[0].path,
            dir.path().join("ink.safetensors")
        );
    }

    fn ok_choice(path: &str, scale: f32) -> LoraChoice {
        LoraChoice {
            path: path.into(),
            scale,
        }
    }
}
