use crate::model::{parse_device, Classifier, ModelClassifier};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    #[arg(long, default_value = crate::model::DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Top `k` (class, probability) pairs, most likely first.
pub fn top_k(classes: &[String], probs: &[f32], k: usize) -> Vec<(String, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order.into_iter().take(k).map(|i| (classes[i].clone(), probs[i])).collect()
}

pub fn main(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let mut model = ModelClassifier::load(&args.model, &parse_device(&args.device)?)?;
    let mut failed = 0;
    for path in &args.images {
        // One unreadable file must not stop the others.
        let result = crate::preprocess::decode_file(path)
            .map_err(anyhow::Error::msg)
            .and_then(|img| model.classify(&[img]));
        match result {
            Ok(probs) => print_prediction(path, &top_k(model.class_names(), &probs[0], 3), args.json),
            Err(err) => {
                failed += 1;
                if args.json {
                    println!("{}", serde_json::json!({ "path": path, "error": format!("{err:#}") }));
                } else {
                    eprintln!("{}: error: {err:#}", path.display());
                }
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_prediction(path: &std::path::Path, top3: &[(String, f32)], json: bool) {
    let (class, confidence) = &top3[0];
    if json {
        let top: Vec<_> = top3.iter().map(|(c, p)| serde_json::json!({ "class": c, "p": p })).collect();
        println!("{}", serde_json::json!({ "path": path, "class": class, "confidence": confidence, "top3": top }));
    } else {
        let rest: Vec<String> = top3.iter().map(|(c, p)| format!("{c} {:.1}%", p * 100.0)).collect();
        println!("{}: {class} ({:.1}%)  top-3: {}", path.display(), confidence * 100.0, rest.join(", "));
    }
}
