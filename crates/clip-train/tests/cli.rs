//! End-to-end runs of the `clipforge` binary on the shipped digits dataset: a short training
//! run, resume after SIGKILL, bad configs and bad data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh, empty scratch folder, removed when the returned `TempDir` is dropped.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("clipforge-test-{name}-")).tempdir().unwrap()
}

/// A tiny, fast run: small batches, a few steps, no evaluation prompts beyond three.
const FAST: &[&str] = &["--set", "train.batch_size=16", "--set", "train.log_every=1", "--set", "train.warmup_steps=2"];

fn clipforge(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clipforge"));
    command.current_dir(workspace()).args(args);
    command
}

fn run(args: &[&str]) -> Output {
    clipforge(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The run's `summary.json`.
fn summary_of(output: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(output.join("summary.json")).unwrap()).unwrap()
}

/// Loss of each step, as the last line written for it in `metrics.jsonl`.
fn losses(output: &Path) -> std::collections::BTreeMap<u64, f64> {
    let text = std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn short_training_run_writes_summary_metrics_and_checkpoint() {
    let tmp = scratch("short");
    let out = tmp.path();
    let mut args = vec!["train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", "train.max_steps=6"];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = summary_of(out);
    assert_eq!(summary["steps"], 6);
    assert_eq!(summary["samples"], 96);
    assert_eq!(summary["chance_top1"], 0.1);
    let top1 = summary["zero_shot_top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    assert!(summary["samples_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(losses(out).len(), 6);
    assert!(out.join("checkpoints/step-00000006/model.bpk").is_file());
    assert!(out.join("checkpoints/step-00000006/optimizer.bpk").is_file());

    // The checkpoint feeds `eval` and `export`.
    let checkpoint = out.join("checkpoints/step-00000006");
    let output = run(&["eval", "configs/quickstart.toml", "--weights", checkpoint.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["zero_shot_top1"], summary["zero_shot_top1"], "eval reproduces the end-of-training numbers");
    let exported = out.join("export");
    let output = run(&[
        "export", "--model", "configs/models/tiny-digits.json", "--weights", checkpoint.to_str().unwrap(),
        "--format", "hf", "--output", exported.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(exported.join("model.safetensors").is_file() && exported.join("config.json").is_file());

    // Embeddings of texts and images, L2-normalized, in both file formats.
    let texts = out.join("texts.txt");
    std::fs::write(&texts, "handwritten 7\nthe digit 3\n").unwrap();
    let image = workspace().join("datasets/digits/images/0000.png");
    for (what, arg, file) in [("--texts", texts.clone(), "texts.safetensors"), ("--images", image, "images.npy")] {
        let target = out.join(file);
        let output = run(&[
            "embed", "--model", "configs/models/tiny-digits.json", "--weights", checkpoint.to_str().unwrap(),
            what, arg.to_str().unwrap(), "--output", target.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(target.is_file(), "{what}");
    }
    let tensors = clip_fixtures::read_tensors(&out.join("texts.safetensors")).unwrap();
    let embeddings = &tensors["embeddings"];
    assert_eq!(embeddings.shape, vec![2, 32]);
    let norm: f32 = embeddings.values[..32].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");

    // A second run into the same folder must not silently overwrite it.
    let output = run(&args);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--resume"), "{}", stderr(&output));
}

#[test]
fn run_killed_with_sigkill_resumes_to_the_same_losses() {
    let steps = ["--set", "train.max_steps=24", "--set", "train.checkpoint_every=8"];
    let reference_tmp = scratch("reference");
    let reference = reference_tmp.path();
    let mut args = vec!["train", "configs/quickstart.toml", "--output", reference.to_str().unwrap()];
    args.extend(FAST);
    args.extend(steps);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));

    let killed_tmp = scratch("killed");
    let killed = killed_tmp.path();
    args[3] = killed.to_str().unwrap();
    let mut child = clipforge(&args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !killed.join("checkpoints/step-00000008").is_dir() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("summary.json").exists(), "the run finished before it could be killed");

    let mut resume = args.clone();
    resume.push("--resume");
    let output = run(&resume);
    assert!(output.status.success(), "{}", stderr(&output));
    let (expected, got) = (losses(reference), losses(killed));
    assert_eq!(got.keys().max(), Some(&24));
    for (step, loss) in &expected {
        assert_eq!(got.get(step), Some(loss), "loss at step {step} after resume");
    }
}

#[test]
fn bad_configs_name_the_file_and_the_key() {
    let tmp = scratch("configs");
    let dir = tmp.path();
    let base = std::fs::read_to_string(workspace().join("configs/quickstart.toml")).unwrap();
    let cases: [(&str, String, &str); 5] = [
        ("unknown-key", base.replace("epochs = 30", "epochs = 30\nlearning_rate = 0.1"), "learning_rate"),
        ("wrong-type", base.replace("batch_size = 64", "batch_size = \"big\""), "batch_size"),
        ("negative-lr", base.replace("lr = 1e-3", "lr = -1e-3"), "train.lr"),
        ("zero-batch", base.replace("batch_size = 64", "batch_size = 0"), "train.batch_size"),
        ("missing-data", base.replace("datasets/digits/train.tsv", "datasets/nowhere/train.tsv"), "data.train"),
    ];
    for (name, text, key) in cases {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let output = run(&["check", path.to_str().unwrap()]);
        let message = stderr(&output);
        assert!(!output.status.success(), "{name}: accepted");
        assert!(message.contains(&format!("{name}.toml")) && message.contains(key), "{name}: {message}");
    }
    // CI's build has the wgpu backend compiled in but never the cuda one.
    for backend in ["wgpu", "cuda"] {
        if !(backend == "wgpu" && cfg!(feature = "wgpu") || backend == "cuda" && cfg!(feature = "cuda")) {
            let output = run(&["check", "configs/quickstart.toml", "--set", &format!("run.device={backend}")]);
            assert!(stderr(&output).contains(&format!("--features {backend}")), "{}", stderr(&output));
        }
    }
    let output = run(&["check", "configs/quickstart.toml", "--set", "train.epochs=0"]);
    assert!(stderr(&output).contains("train.epochs"), "{}", stderr(&output));
    // Task sections are the task's to parse and check; others' sections are refused.
    let task_cases = [
        (vec!["--set", "contrastive.temperature=0.07"], "[contrastive]: unknown field `temperature`"),
        (vec!["--set", "video.frames=8"], "[video] is read by train.objective clip4clip or actionclip, not by \"contrastive\""),
        (vec!["--set", "augment.flip=true"], "unknown key \"augment\""),
        (vec!["--set", "train.objective=segmentation"], "train.objective = \"segmentation\": use one of \"contrastive\""),
        (vec!["--set", "train.objective=lseg"], "[contrastive] is read by train.objective contrastive, not by \"lseg\""),
    ];
    for (set, expected) in task_cases {
        let mut args = vec!["check", "configs/quickstart.toml"];
        args.extend(set);
        let output = run(&args);
        assert!(!output.status.success() && stderr(&output).contains("quickstart.toml"), "{}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{expected}: {}", stderr(&output));
    }
    let output = run(&["check", "configs/lseg.toml", "--set", "segmentation.readout=concat"]);
    assert!(stderr(&output).contains("segmentation.readout = \"concat\""), "{}", stderr(&output));
    let output = run(&["check", "configs/lseg.toml", "--set", "segmentation.labels="]);
    assert!(stderr(&output).contains("train.objective = \"lseg\" needs segmentation.labels"), "{}", stderr(&output));
    let output = run(&["check", "configs/quickstart.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn corrupt_images_stop_the_run_or_are_skipped_and_counted() {
    let tmp = scratch("corrupt");
    let dir = tmp.path();
    let digits = workspace().join("datasets/digits");
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    let mut table = String::from("filepath\ttitle\tlabel\n");
    for line in std::fs::read_to_string(digits.join("train.tsv")).unwrap().lines().skip(1).take(31) {
        table.push_str(&format!("{}/{line}\n", digits.display()));
    }
    table.push_str("broken.png\thandwritten 1\tone\n");
    std::fs::write(dir.join("train.tsv"), &table).unwrap();
    let train = dir.join("train.tsv");
    let set_train = format!("data.train={}", train.display());
    let out = dir.join("run");
    let base = ["train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", &set_train,
        "--set", "train.batch_size=32", "--set", "train.max_steps=1"];

    let output = run(&base);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("train.tsv:33") && message.contains("broken.png"), "{message}");

    let mut skipping = base.to_vec();
    skipping.extend(["--set", "data.skip_bad_samples=true"]);
    let output = run(&skipping);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = summary_of(&out);
    assert_eq!(summary["skipped_samples"], 1);
    assert_eq!(summary["samples"], 31);
}

#[test]
fn diverging_loss_stops_with_a_clear_message() {
    let tmp = scratch("nan");
    let out = tmp.path();
    let output = run(&[
        "train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", "train.batch_size=16",
        "--set", "train.lr=1e38", "--set", "train.warmup_steps=0", "--set", "train.grad_clip_norm=0",
        "--set", "train.max_steps=20",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("loss is") && message.contains("train.lr"), "{message}");
    assert!(!out.join("summary.json").exists());
}

/// Reads `tag` from the run's event files with TensorBoard's own reader (the `tensorboard`
/// Python package, which `.ci/run` installs). Outside CI, a machine without it skips the check.
fn tensorboard_scalars(output: &Path, tag: &str) -> Option<Vec<(u64, f64)>> {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1]); acc.Reload()
print(json.dumps([[e.step, e.value] for e in acc.Scalars(sys.argv[2])]))
"#;
    let result = Command::new("python3").args(["-c", script]).arg(output.join("tensorboard")).arg(tag).output();
    match result {
        Ok(out) if out.status.success() => Some(serde_json::from_slice(&out.stdout).unwrap()),
        Ok(out) if std::env::var_os("CI").is_none() && stderr(&out).contains("No module named 'tensorboard'") => None,
        Ok(out) => panic!("reading TensorBoard events failed: {}", stderr(&out)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("python3 not available ({e}); TensorBoard check skipped");
            None
        }
        Err(e) => panic!("python3: {e}"),
    }
}

#[test]
fn tensorboard_reads_the_logged_losses() {
    let tmp = scratch("tensorboard");
    let out = tmp.path();
    let mut args = vec!["train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", "train.max_steps=5"];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let Some(scalars) = tensorboard_scalars(out, "train/loss") else {
        eprintln!("the tensorboard Python package is not installed: pip install tensorboard to run this check");
        return;
    };
    let expected = losses(out);
    assert_eq!(scalars.len(), expected.len());
    for (step, value) in scalars {
        assert!((value - expected[&step]).abs() < 1e-6, "step {step}: {value} vs {}", expected[&step]);
    }
    let top1 = tensorboard_scalars(out, "eval/zero_shot_top1").unwrap();
    assert_eq!(top1.len(), 1);
    // Training and evaluation scalars share one event file (a second writer in the same
    // second would truncate the first one's).
    let files = std::fs::read_dir(out.join("tensorboard")).unwrap().count();
    assert_eq!(files, 1, "event files in {}", out.join("tensorboard").display());
}

/// Trains a few contrastive steps and returns the final checkpoint, for runs that start from one.
fn trained_checkpoint(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = scratch(name);
    let out = tmp.path();
    let mut args = vec!["train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", "train.max_steps=3"];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let checkpoint = out.join("checkpoints/step-00000003");
    (tmp, checkpoint)
}

#[test]
fn supervised_objective_starts_at_zero_shot_and_reports_accuracy() {
    let (tmp, checkpoint) = trained_checkpoint("supervised");
    let out = tmp.path();
    let run_dir = out.join("supervised");
    let weights = format!("model.weights={}", checkpoint.display());
    let mut args = vec![
        "train", "configs/digits-finetune.toml", "--output", run_dir.to_str().unwrap(), "--set", &weights,
        "--set", "train.max_steps=12", "--set", "train.lr=1e-3",
    ];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = summary_of(&run_dir);
    let top1 = summary["eval"]["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1) && summary["eval"]["chance_top1"] == 0.1, "{summary}");

    // Step 0 (the classifier before any update) predicts what zero-shot classification of the
    // CLIP it starts from predicts, on the same held-out digits, classes and templates.
    let before = eval_report(&["eval", "configs/digits-finetune.toml", "--set", &weights]);
    let zero_shot = eval_report(&["eval", "configs/quickstart.toml", "--weights", checkpoint.to_str().unwrap()]);
    assert_eq!(before["samples"], zero_shot["samples"]);
    assert_eq!(before["top1"], zero_shot["zero_shot_top1"], "{before} vs {zero_shot}");
    assert_eq!(before["top5"], zero_shot["zero_shot_top5"], "{before} vs {zero_shot}");

    // The fine-tuned image tower (with the text tower the run started from) serves the commands
    // that take a CLIP: its embeddings are the trained tower's, not the starting one's.
    let tuned = run_dir.join("checkpoints/step-00000012");
    let start = embed_image(&checkpoint, &run_dir.join("start.safetensors"));
    assert_ne!(embed_image(&tuned, &run_dir.join("tuned.safetensors")), start);
    let image = workspace().join("datasets/digits/images/0000.png");
    let output = run(&["zero-shot", "--weights", tuned.to_str().unwrap(), "--labels", "zero,one", image.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().all(|l| l.contains("\"accuracy\"")), "{metrics}");
    let losses = losses(&run_dir);
    assert!(losses[&12] < losses[&1], "cross-entropy went from {} to {}", losses[&1], losses[&12]);
}

/// `clipforge embed` of the first digit with the CLIP of `weights`, written to `file`.
fn embed_image(weights: &Path, file: &Path) -> Vec<f32> {
    let image = workspace().join("datasets/digits/images/0000.png");
    let output = run(&["embed", "--weights", weights.to_str().unwrap(), "--images", image.to_str().unwrap(), "--output",
        file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let tensors = clip_fixtures::read_tensors(file).unwrap();
    assert_eq!(tensors["embeddings"].shape, vec![1, 32]);
    tensors["embeddings"].values.clone()
}

#[test]
fn distillation_objective_caches_the_teacher_and_learns_its_embeddings() {
    let (tmp, teacher) = trained_checkpoint("distill");
    let out = tmp.path();
    let run_dir = out.join("distill");
    let weights = format!("distill.teacher_weights={}", teacher.display());
    let mut args = vec![
        "train", "configs/digits-distill.toml", "--output", run_dir.to_str().unwrap(), "--set", &weights,
        "--set", "train.max_steps=15",
    ];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(run_dir.join("teacher_embeddings.safetensors").is_file());
    let losses = losses(&run_dir);
    assert!(losses[&15] < losses[&1], "L1 distance went from {} to {}", losses[&1], losses[&15]);
    let summary = summary_of(&run_dir);
    assert!(summary["eval"]["teacher_cosine"].as_f64().unwrap() > 0.0, "{summary}");
    // The student's checkpoint embeds images like any CLIP.
    embed_image(&run_dir.join("checkpoints/step-00000015"), &run_dir.join("student.safetensors"));

    // The cache is reused by a second run.
    let second = out.join("distill-again");
    let cache = format!("distill.cache={}", run_dir.join("teacher_embeddings.safetensors").display());
    let mut again = vec!["train", "configs/digits-distill.toml", "--output", second.to_str().unwrap(), "--set", &weights,
        "--set", &cache, "--set", "train.max_steps=1"];
    again.extend(FAST);
    let output = run(&again);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("teacher embeddings from"), "{}", stderr(&output));
}

#[test]
fn image_folder_with_a_random_validation_split() {
    let tmp = scratch("folder");
    let dir = tmp.path();
    let digits = workspace().join("datasets/digits");
    let table = std::fs::read_to_string(digits.join("train.tsv")).unwrap();
    for line in table.lines().skip(1).take(60) {
        let fields: Vec<&str> = line.split('\t').collect();
        let class_dir = dir.join("images").join(fields[2]);
        std::fs::create_dir_all(&class_dir).unwrap();
        std::fs::copy(digits.join(fields[0]), class_dir.join(Path::new(fields[0]).file_name().unwrap())).unwrap();
    }
    let out = dir.join("run");
    let config = dir.join("folder.toml");
    let quickstart = std::fs::read_to_string(workspace().join("configs/quickstart.toml")).unwrap();
    let without_val: Vec<&str> = quickstart.lines().filter(|l| !l.starts_with("val =")).collect();
    std::fs::write(&config, without_val.join("\n")).unwrap();
    let train = format!("data.train={}", dir.join("images").display());
    let output = run(&[
        "train", config.to_str().unwrap(), "--output", out.to_str().unwrap(), "--set", &train,
        "--set", "data.val_fraction=0.25", "--set", "train.batch_size=15", "--set", "train.max_steps=3",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = summary_of(&out);
    assert_eq!(summary["eval"]["samples"], 15, "a quarter of 60 images held out");
    assert_eq!(summary["samples"], 45);
}

#[test]
fn siglip_loss_trains_a_model_with_a_logit_bias() {
    let out_tmp = scratch("siglip");
    let out = out_tmp.path();
    let mut args = vec![
        "train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", "contrastive.loss=siglip",
        "--set", "model.name=configs/models/tiny-digits-siglip.json", "--set", "train.max_steps=10",
    ];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let losses = losses(out);
    assert!(losses[&10] < losses[&1], "sigmoid loss went from {} to {}", losses[&1], losses[&10]);

    // A model without a bias is refused with the reason.
    let again_tmp = scratch("siglip-no-bias");
    let again = again_tmp.path();
    let output = run(&["train", "configs/quickstart.toml", "--output", again.to_str().unwrap(), "--set", "contrastive.loss=siglip"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("init_logit_bias"), "{}", stderr(&output));
    // The key's old place names the new one.
    let output = run(&["check", "configs/quickstart.toml", "--set", "train.loss=siglip"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("train.loss has moved: write it as [contrastive] loss"), "{}", stderr(&output));
}

#[test]
fn frozen_tower_is_left_untouched_by_fine_tuning() {
    let (tmp, start) = trained_checkpoint("freeze");
    let out = tmp.path();
    let config = out.join("lit.toml");
    let quickstart = std::fs::read_to_string(workspace().join("configs/quickstart.toml")).unwrap();
    let weights = format!("name = \"configs/models/tiny-digits.json\"\nweights = \"{}\"", start.display());
    let lit = quickstart
        .replace("name = \"configs/models/tiny-digits.json\"", &weights)
        .replace("[train]", "[train]\nfreeze = [\"visual\"]");
    std::fs::write(&config, lit).unwrap();
    let tuned = out.join("lit");
    let mut args = vec!["train", config.to_str().unwrap(), "--output", tuned.to_str().unwrap(), "--set", "train.max_steps=3"];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));

    let device = burn::tensor::Device::flex();
    let model_config = workspace().join("configs/models/tiny-digits.json");
    let load = |dir: &Path| {
        let (model, config) = clip_task::clip_model::load_model(model_config.to_str().unwrap(), Some(dir), &device).unwrap();
        clip_core::weights::export(&model, &clip_core::weights::CheckpointFormat::OpenClip.layout(&config).unwrap()).unwrap()
    };
    let (before, after) = (load(&start), load(&tuned.join("checkpoints/step-00000003")));
    for (key, tensor) in &before {
        if key.starts_with("visual.") {
            assert_eq!(&after[key], tensor, "{key} changed although frozen");
        }
    }
    assert_ne!(after["ln_final.weight"], before["ln_final.weight"], "the text tower should train");
}

/// A ResNet image tower (`configs/models/tiny-digits-rn.json`) goes through the same commands
/// as a ViT: train, eval, zero-shot, embed, export, and fine-tuning with a frozen tower.
#[test]
fn resnet_tower_trains_evaluates_and_exports_like_a_vit() {
    let tmp = scratch("resnet");
    let out = tmp.path();
    let model = "configs/models/tiny-digits-rn.json";
    let name = format!("model.name={model}");
    let run_dir = out.join("run");
    let mut args = vec!["train", "configs/quickstart.toml", "--output", run_dir.to_str().unwrap(), "--set", &name,
        "--set", "train.max_steps=6"];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let losses = losses(&run_dir);
    assert!(losses[&6] < losses[&1], "the loss went from {} to {}", losses[&1], losses[&6]);
    let checkpoint = run_dir.join("checkpoints/step-00000006");

    let output = run(&["eval", "configs/quickstart.toml", "--set", &name, "--weights", checkpoint.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["zero_shot_top1"], summary_of(&run_dir)["zero_shot_top1"], "eval reproduces the run's numbers");

    let image = workspace().join("datasets/digits/images/0000.png");
    let output = run(&["zero-shot", "--model", model, "--weights", checkpoint.to_str().unwrap(), "--labels", "zero, one",
        image.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let embeddings = out.join("images.safetensors");
    let output = run(&["embed", "--model", model, "--weights", checkpoint.to_str().unwrap(), "--images",
        image.to_str().unwrap(), "--output", embeddings.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(clip_fixtures::read_tensors(&embeddings).unwrap()["embeddings"].shape, vec![1, 32]);

    // The open_clip export carries the BatchNorm statistics the six training steps accumulated.
    let exported = out.join("open_clip.safetensors");
    let output = run(&["export", "--model", model, "--weights", checkpoint.to_str().unwrap(), "--format", "open_clip",
        "--output", exported.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let tensors = clip_fixtures::read_tensors(&exported).unwrap();
    assert_eq!(tensors["visual.layer1.0.bn1.num_batches_tracked"].values, [6.0]);
    assert!(tensors["visual.bn1.running_mean"].values.iter().any(|&v| v != 0.0));
    let output = run(&["export", "--model", model, "--weights", checkpoint.to_str().unwrap(), "--format", "hf",
        "--output", out.join("hf").to_str().unwrap()]);
    assert!(!output.status.success() && stderr(&output).contains("open_clip"), "{}", stderr(&output));

    // Fine-tuning with the image tower frozen leaves its weights and statistics untouched.
    // Everything but the stem's second and third convolutions: their BatchNorms go on training.
    let frozen = ["visual.conv1", "visual.bn1", "visual.layer1", "visual.layer2", "visual.layer3", "visual.layer4",
        "visual.attnpool"];
    let config = out.join("frozen.toml");
    let quickstart = std::fs::read_to_string(workspace().join("configs/quickstart.toml")).unwrap();
    let model_section = format!("name = \"{model}\"\nweights = \"{}\"", exported.display());
    let freeze = format!("[train]\nfreeze = {frozen:?}");
    let text = quickstart.replace("name = \"configs/models/tiny-digits.json\"", &model_section).replace("[train]", &freeze);
    std::fs::write(&config, text).unwrap();
    let tuned = out.join("frozen");
    let mut args = vec!["train", config.to_str().unwrap(), "--output", tuned.to_str().unwrap(), "--set", "train.max_steps=3"];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let device = burn::tensor::Device::flex();
    let (tuned_model, config) =
        clip_task::clip_model::load_model(workspace().join(model).to_str().unwrap(), Some(&tuned.join("checkpoints/step-00000003")), &device).unwrap();
    let layout = clip_core::weights::CheckpointFormat::OpenClip.layout(&config).unwrap();
    let after = clip_core::weights::export(&tuned_model, &layout).unwrap();
    for (key, tensor) in &tensors {
        if frozen.iter().any(|prefix| key.starts_with(&format!("{prefix}."))) {
            assert_eq!(&after[key], tensor, "{key} changed although frozen");
        }
    }
    assert_ne!(after["visual.bn2.running_mean"], tensors["visual.bn2.running_mean"], "unfrozen BatchNorm trains");
    assert_ne!(after["ln_final.weight"], tensors["ln_final.weight"], "the text tower should train");
}

#[test]
fn zero_shot_command_ranks_the_labels() {
    let (_out, checkpoint) = trained_checkpoint("zero-shot");
    let image = workspace().join("datasets/digits/images/0000.png");
    let output = run(&[
        "zero-shot", "--model", "configs/models/tiny-digits.json", "--weights", checkpoint.to_str().unwrap(),
        "--labels", "zero, one, two", "--top", "3", image.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let percents: Vec<f64> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().trim_end_matches('%').parse().unwrap())
        .collect();
    assert_eq!(percents.len(), 3, "{stdout}");
    assert!(percents.windows(2).all(|w| w[0] >= w[1]), "ranked best first: {stdout}");
    assert!((percents.iter().sum::<f64>() - 100.0).abs() < 0.1, "probabilities over all labels: {stdout}");
    let output = run(&["zero-shot", "--weights", checkpoint.to_str().unwrap(), "--labels", " , ", image.to_str().unwrap(),
        "--model", "configs/models/tiny-digits.json"]);
    assert!(!output.status.success() && stderr(&output).contains("--labels"), "{}", stderr(&output));
    let output = run(&["zero-shot", "--weights", checkpoint.to_str().unwrap(), "--labels", "zero", image.to_str().unwrap(),
        "--model", "configs/models/tiny-digits.json", "--device", "tpu"]);
    assert!(!output.status.success() && stderr(&output).contains("--device: \"tpu\": unknown backend"), "{}", stderr(&output));
}

#[test]
fn accumulated_batches_reproduce_the_large_batch_gradient() {
    let (tmp, start) = trained_checkpoint("accumulate");
    let out = tmp.path();
    // Without random crops (area 1 of an 8x8 digit is the whole digit) the two runs see the
    // same pixels; the supervised loss is a mean, so two accumulated halves equal one batch.
    let config = out.join("finetune.toml");
    let finetune = std::fs::read_to_string(workspace().join("configs/digits-finetune.toml")).unwrap();
    std::fs::write(&config, finetune.replace("[data]", "[data]\ncrop_scale = [1.0, 1.0]")).unwrap();
    let weights = format!("model.weights={}", start.display());
    let losses_of = |name: &str, batch: &str, accumulate: &str| {
        let dir = out.join(name);
        let output = run(&[
            "train", config.to_str().unwrap(), "--output", dir.to_str().unwrap(), "--set", &weights,
            "--set", "train.max_steps=4", "--set", "train.log_every=1", "--set", "train.lr=1e-3",
            "--set", &format!("train.batch_size={batch}"), "--set", &format!("train.accumulate_batches={accumulate}"),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        losses(&dir)
    };
    let large = losses_of("large", "16", "1");
    let accumulated = losses_of("accumulated", "8", "2");
    assert_eq!(large.len(), 4);
    for (step, loss) in &large {
        let other = accumulated[step];
        assert!((loss - other).abs() <= 1e-5 * loss.abs().max(1.0), "step {step}: {loss} vs {other}");
    }
}

#[test]
fn accum_freq_trains_contrastive_micro_batches_as_one_batch() {
    let tmp = scratch("accum-freq");
    let out = tmp.path();
    // Whole digits (no random crop area), so both runs see the same pixels in the same order.
    let quickstart = std::fs::read_to_string(workspace().join("configs/quickstart.toml")).unwrap();
    let whole = out.join("whole.toml");
    std::fs::write(&whole, quickstart.replace("[data]", "[data]\ncrop_scale = [1.0, 1.0]")).unwrap();
    let losses_of = |name: &str, batch: &str, accum_freq: &str| {
        let dir = out.join(name);
        let output = run(&[
            "train", whole.to_str().unwrap(), "--output", dir.to_str().unwrap(),
            "--set", "train.max_steps=4", "--set", "train.log_every=1", "--set", "train.warmup_steps=2",
            "--set", &format!("train.batch_size={batch}"), "--set", &format!("train.accum_freq={accum_freq}"),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        losses(&dir)
    };
    let large = losses_of("large", "16", "1");
    let cached = losses_of("cached", "4", "4");
    assert_eq!(large.len(), 4);
    for (step, loss) in &large {
        let other = cached[step];
        assert!((loss - other).abs() <= 1e-5 * loss.abs().max(1.0), "step {step}: {loss} vs {other}");
    }
    // Averaging per-batch gradients instead is a different objective (4 problems of 4).
    let averaged = {
        let dir = out.join("averaged");
        let output = run(&[
            "train", whole.to_str().unwrap(), "--output", dir.to_str().unwrap(),
            "--set", "train.max_steps=1", "--set", "train.batch_size=4", "--set", "train.accumulate_batches=4",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        losses(&dir)[&1]
    };
    assert!((averaged - large[&1]).abs() > 1e-3, "{averaged} vs {}", large[&1]);

    let output = run(&["check", "configs/quickstart.toml", "--set", "train.accum_freq=2", "--set", "train.accumulate_batches=2"]);
    assert!(!output.status.success() && stderr(&output).contains("train.accum_freq = 2 and train.accumulate_batches = 2 are exclusive"), "{}", stderr(&output));
    let output = run(&["check", "configs/quickstart.toml", "--set", "train.accum_freq=0"]);
    assert!(!output.status.success() && stderr(&output).contains("train.accum_freq must be at least 1"), "{}", stderr(&output));
    // An objective that is not a loss over the batch's features is refused before training.
    let supervised = out.join("supervised.toml");
    std::fs::write(&supervised, quickstart.replace("[contrastive]\nloss = \"infonce\"\n", "")).unwrap();
    let output = run(&[
        "train", supervised.to_str().unwrap(), "--output", out.join("supervised").to_str().unwrap(),
        "--set", "train.objective=supervised", "--set", "train.accum_freq=2", "--set", "train.max_steps=1",
    ]);
    let message = stderr(&output);
    assert!(!output.status.success() && message.contains("train.accum_freq = 2") && message.contains("train.accumulate_batches"), "{message}");
}

#[test]
fn quickstart_trains_from_shards_as_from_the_table_and_resumes() {
    let tmp = scratch("shards");
    let dir = tmp.path();
    let shards = dir.join("shards");
    let output = run(&["shards", "datasets/digits/train.tsv", "--output", shards.to_str().unwrap(), "--samples-per-shard", "200", "--label-column", "label"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let pattern = format!("{}/{{000000..000007}}.tar", shards.display());
    assert!(String::from_utf8_lossy(&output.stdout).contains(&pattern), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(shards.join("000007.tar").is_file() && !shards.join("000008.tar").exists() && shards.join("sizes.json").is_file());

    // In file order with one data worker, shards and table give the same batches, so the same losses.
    let losses_from = |name: &str, train: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut args = vec!["train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", train,
            "--set", "train.max_steps=5", "--set", "data.workers=1"];
        args.extend(FAST);
        args.extend(extra);
        let output = run(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        (out.clone(), losses(&out))
    };
    let from_shards = format!("data.train={pattern}");
    let (_, table) = losses_from("table", "data.train=datasets/digits/train.tsv", &["--set", "data.shuffle=false"]);
    let (out, streamed) = losses_from("streamed", &from_shards, &["--set", "data.shuffle=false"]);
    assert_eq!(table.len(), 5);
    assert_eq!(table, streamed, "the same samples in the same order give the same losses");
    let summary = summary_of(&out);
    assert_eq!(summary["samples"], 80);
    assert!(summary["zero_shot_top1"].as_f64().is_some(), "data.val is evaluated");
    // Shuffled (seeded shard order, shuffle buffer) is another order.
    let (shuffled_out, shuffled) = losses_from("shuffled", &from_shards, &["--set", "train.checkpoint_every=3", "--set", "data.workers=2"]);
    assert_ne!(shuffled[&1], table[&1]);

    // Resume: the run as if killed after the step-3 checkpoint continues to the same losses.
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoints")).unwrap();
    let step3 = shuffled_out.join("checkpoints/step-00000003");
    let copy = resumed.join("checkpoints/step-00000003");
    std::fs::create_dir_all(&copy).unwrap();
    for file in std::fs::read_dir(&step3).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, copy.join(file.file_name().unwrap())).unwrap();
    }
    let mut args = vec!["train", "configs/quickstart.toml", "--output", resumed.to_str().unwrap(), "--set", &from_shards,
        "--set", "train.max_steps=5", "--set", "data.workers=2", "--set", "train.checkpoint_every=3", "--resume"];
    args.extend(FAST);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let again = losses(&resumed);
    assert_eq!(again.keys().copied().collect::<Vec<_>>(), [4, 5]);
    for (step, loss) in &again {
        assert_eq!(shuffled[step], *loss, "loss at step {step} after resume");
    }

    // Config errors name the key and the shard.
    let output = run(&["check", "configs/quickstart.toml", "--set", &format!("data.train={}/{{000000..000009}}.tar", shards.display())]);
    assert!(!output.status.success() && stderr(&output).contains("000008.tar does not exist"), "{}", stderr(&output));
    let output = run(&["check", "configs/quickstart.toml", "--set", &from_shards, "--set", "data.resampled=true"]);
    assert!(!output.status.success() && stderr(&output).contains("data.train_num_samples"), "{}", stderr(&output));
    let output = run(&["check", "configs/quickstart.toml", "--set", "data.resampled=true"]);
    assert!(!output.status.success() && stderr(&output).contains("data.resampled applies to tar shards"), "{}", stderr(&output));
}

#[test]
fn open_clip_training_options_take_effect_and_bad_values_are_refused() {
    let tmp = scratch("options");
    let dir = tmp.path();
    // A class folder of 40 validation digits for the periodic zero-shot evaluation.
    let folder = dir.join("classes");
    let digits = workspace().join("datasets/digits");
    for line in std::fs::read_to_string(digits.join("val.tsv")).unwrap().lines().skip(1).take(40) {
        let fields: Vec<&str> = line.split('\t').collect();
        std::fs::create_dir_all(folder.join(fields[2])).unwrap();
        let image = Path::new(fields[0]);
        std::fs::copy(digits.join(image), folder.join(fields[2]).join(image.file_name().unwrap())).unwrap();
    }
    let train = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut args = vec!["train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", "train.max_steps=4"];
        args.extend(FAST);
        args.extend(extra);
        let output = run(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        out
    };
    // `clipforge shards` takes class folders too: captions from the template, labels kept in KEY.json.
    let folder_shards = dir.join("folder-shards");
    let output = run(&["shards", folder.to_str().unwrap(), "--output", folder_shards.to_str().unwrap(), "--samples-per-shard", "16"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("wrote 40 samples in 3 shards"), "{}", String::from_utf8_lossy(&output.stdout));
    let sizes: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(folder_shards.join("sizes.json")).unwrap()).unwrap();
    assert_eq!(sizes, serde_json::json!({"000000.tar": 16, "000001.tar": 16, "000002.tar": 8}));
    let output = run(&["shards", "datasets/nowhere.tsv", "--output", folder_shards.to_str().unwrap()]);
    assert!(!output.status.success() && stderr(&output).contains("nowhere.tsv"), "{}", stderr(&output));
    let zero_shot_data = format!("eval.zero_shot_data={}", folder.display());
    let out = train("zero-shot", &["--set", "eval.zero_shot_every=2", "--set", &zero_shot_data, "--set", "train.log_every=3"]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let evaluated: Vec<u64> = lines.iter().filter(|l| l.get("zero_shot_top1").is_some()).map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(evaluated, [2, 4]);
    // The step-4 figure is what `clipforge eval` reports for the final checkpoint on that folder.
    let checkpoint = out.join("checkpoints/step-00000004");
    let set_val = format!("data.val={}", folder.display());
    let output = run(&["eval", "configs/quickstart.toml", "--checkpoint", checkpoint.to_str().unwrap(), "--set", &set_val]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["samples"], 40);
    assert_eq!(lines.last().unwrap()["zero_shot_top1"], report["zero_shot_top1"]);
    if let Some(scalars) = tensorboard_scalars(&out, "zero_shot/top1") {
        assert_eq!(scalars.iter().map(|(step, _)| *step).collect::<Vec<_>>(), [2, 4]);
    }

    // Patch dropout changes the training forward pass (not the model): another first loss.
    let plain = losses(&train("plain", &[]));
    let dropped = losses(&train("patch-dropout", &["--set", "contrastive.patch_dropout=0.5"]));
    assert_ne!(plain[&1], dropped[&1]);
    // Locking the image tower or decaying its rates per layer changes the steps after the first.
    let locked = losses(&train("locked", &["--set", "train.lock_image=true", "--set", "train.lock_image_unlocked_groups=1"]));
    let decayed = losses(&train("decayed", &["--set", "train.layer_decay=0.5"]));
    assert_eq!((locked[&1], decayed[&1]), (plain[&1], plain[&1]));
    assert!(locked[&4] != plain[&4] && decayed[&4] != plain[&4] && locked[&4] != decayed[&4]);

    let refused = [
        (vec!["--set", "contrastive.patch_dropout=1.0"], "contrastive.patch_dropout = 1 must be in [0, 1)"),
        (vec!["--set", "train.lock_image_unlocked_groups=2"], "train.lock_image_unlocked_groups needs train.lock_image = true"),
        (vec!["--set", "train.layer_decay=0"], "train.layer_decay = 0 must be in (0, 1]"),
        (vec!["--set", "eval.zero_shot_every=5"], "eval.zero_shot_every needs eval.zero_shot_data"),
    ];
    for (set, expected) in refused {
        let mut args = vec!["check", "configs/quickstart.toml"];
        args.extend(set);
        let output = run(&args);
        assert!(!output.status.success() && stderr(&output).contains(expected), "{expected}: {}", stderr(&output));
    }
}

#[test]
fn half_precision_runs_and_unknown_precisions_are_refused() {
    // bf16 keeps 8 significant bits: a bf16 value is a multiple of a power of two near it.
    let is_bf16 = |x: f64| (x / 2f64.powi(x.log2().floor() as i32 - 7)).fract() == 0.0;
    for (precision, bf16_loss) in [("pure-bf16", true), ("bf16", false)] {
        let tmp = scratch(precision);
        let out = tmp.path();
        let setting = format!("run.precision={precision}");
        let mut args = vec!["train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", &setting, "--set", "train.max_steps=3"];
        args.extend(FAST);
        let output = run(&args);
        assert!(output.status.success(), "{precision}: {}", stderr(&output));
        let summary = summary_of(out);
        assert_eq!(summary["steps"], 3);
        // Pure bf16 computes the loss in bf16; mixed precision computes it in f32 from bf16
        // features (f32 master weights: the final checkpoint loads into an f32 model).
        let losses = losses(out);
        assert!(losses.values().all(|l| l.is_finite() && is_bf16(*l) == bf16_loss), "{precision}: {losses:?}");
    }
    let output = run(&["check", "configs/quickstart.toml", "--set", "run.precision=fp8"]);
    assert!(!output.status.success() && stderr(&output).contains("run.precision"), "{}", stderr(&output));
}

#[test]
fn simulated_data_parallel_ranks_train_as_one_device() {
    // The quickstart on one device, and on three ranks simulated on the CPU (16 samples split
    // 6, 5, 5), the loss global or local: the same losses, step after step.
    let runs = [("dp-one", vec![]), ("dp-ranks", vec!["--set", r#"run.devices=["flex", "flex", "flex"]"#]),
        ("dp-local", vec!["--set", r#"run.devices=["flex", "flex", "flex"]"#, "--set", "train.local_loss=true"])];
    let mut all = Vec::new();
    for (name, extra) in &runs {
        let tmp = scratch(name);
        let out = tmp.path();
        let mut args = vec!["train", "configs/quickstart.toml", "--output", out.to_str().unwrap(), "--set", "train.max_steps=4"];
        args.extend(FAST);
        args.extend(extra);
        let output = run(&args);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        all.push(losses(out));
    }
    for (losses, (name, _)) in all.iter().zip(&runs).skip(1) {
        assert_eq!(losses.len(), 4, "{name}");
        for ((step, a), b) in all[0].iter().zip(losses.values()) {
            assert!((a - b).abs() <= 1e-4 * a.abs(), "{name}, step {step}: {b} vs one device's {a}");
        }
    }
    let refused = [
        (vec!["--set", r#"run.devices=["flex", "flex"]"#, "--set", "train.accum_freq=2"], "train.accum_freq = 2 with 2 run.devices"),
        (vec!["--set", r#"run.devices=["flex", "cuda:1"]"#], "run.devices[1] = \"cuda:1\""),
        (vec!["--set", "run.devices=[\"flex:2\"]"], "run.devices[0] = \"flex:2\": the flex backend has one device"),
    ];
    for (set, expected) in refused {
        let mut args = vec!["check", "configs/quickstart.toml"];
        args.extend(set);
        let output = run(&args);
        assert!(!output.status.success() && stderr(&output).contains(expected), "{expected}: {}", stderr(&output));
    }
}

/// The reference photographs (`$CLIP_FIXTURES/preprocess/*.png`).
fn photographs() -> Vec<PathBuf> {
    let root = std::env::var_os("CLIP_FIXTURES").map(PathBuf::from).unwrap_or_else(|| workspace().join("../shared/fixtures"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("preprocess"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no photographs in the fixtures");
    found
}

/// Mean loss of the first and the last `n` steps.
fn loss_drop(output: &Path, n: usize) -> (f64, f64) {
    let values: Vec<f64> = losses(output).into_values().collect();
    assert!(values.len() >= 2 * n, "only {} steps logged", values.len());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    (mean(&values[..n]), mean(&values[values.len() - n..]))
}

/// Runs `clipforge segment` on the photographs and checks both PNGs of each.
fn segment_photographs(model: &Path, out: &Path, extra: &[&str]) {
    let photos = photographs();
    let mut args = vec!["segment".to_string(), model.to_str().unwrap().into(), "--output".into(), out.to_str().unwrap().into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(photos.iter().map(|p| p.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    for photo in &photos {
        let stem = photo.file_stem().unwrap().to_str().unwrap();
        let original = image::image_dimensions(photo).unwrap();
        for kind in ["labels", "overlay"] {
            let file = out.join(format!("{stem}.{kind}.png"));
            assert_eq!(image::image_dimensions(&file).unwrap(), original, "{}", file.display());
        }
    }
    assert!(out.join("legend.json").is_file());
}

#[test]
fn lseg_learns_the_shapes_and_segments_photographs() {
    let tmp = scratch("lseg");
    let out = tmp.path();
    let output = run(&[
        "train", "configs/lseg.toml", "--output", out.to_str().unwrap(), "--set", "train.batch_size=16",
        "--set", "train.max_steps=64", "--set", "train.log_every=1", "--set", "train.warmup_steps=4",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (first, last) = loss_drop(out, 4);
    assert!(last < first, "loss went from {first} to {last}");
    // Held-out mIoU clearly above labelling every pixel background (the chance level, 0.20 on
    // the shipped validation masks; 64 steps reach 0.35).
    let eval = &summary_of(out)["eval"];
    let (miou, chance) = (eval["mean_iou"].as_f64().unwrap(), eval["chance_mean_iou"].as_f64().unwrap());
    assert!(miou > chance + 0.08, "mIoU {miou:.3} is not above the chance level {chance:.3} by 0.08: {eval}");
    // The trained run segments photographs with labels it never saw.
    segment_photographs(out, &out.join("segmented"), &["--labels", "person,cat,sky,rocket,cup"]);
}

#[test]
fn groupvit_learns_from_captions_and_segments_photographs() {
    let tmp = scratch("groupvit");
    let out = tmp.path();
    // The color-labelled shapes set, trained from scratch for its config's 300 steps.
    let output = run(&["train", "configs/groupvit-colors.toml", "--output", out.to_str().unwrap(), "--set", "train.log_every=5"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (first, last) = loss_drop(out, 6);
    assert!(last < first, "loss went from {first} to {last}");
    // Held-out mIoU at least twice the chance level (every pixel labelled background: 0.11 on
    // the shipped validation masks), from captions alone: no mask is seen in training.
    let eval = &summary_of(out)["eval"];
    let (miou, chance) = (eval["mean_iou"].as_f64().unwrap(), eval["chance_mean_iou"].as_f64().unwrap());
    assert!(miou >= 2.0 * chance, "mIoU {miou:.3} is below twice the chance level {chance:.3}: {eval}");
    // The trained run segments photographs with labels of its choosing, and a config alone
    // (random weights, labels from segmentation.labels) runs the same path.
    segment_photographs(out, &out.join("segmented"), &["--labels", "red,blue,yellow,background"]);
    segment_photographs(Path::new("configs/groupvit.toml"), &out.join("random"), &[]);
}

#[test]
fn bad_masks_name_the_file() {
    let tmp = scratch("bad-masks");
    let dir = tmp.path();
    let shapes = workspace().join("datasets/shapes");
    let table = std::fs::read_to_string(shapes.join("train.tsv")).unwrap();
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.take(8).collect();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    for row in &rows {
        for path in row.split('\t').take(2) {
            std::fs::copy(shapes.join(path), dir.join(path)).unwrap();
        }
    }
    let first_mask = rows[0].split('\t').nth(1).unwrap();
    image::GrayImage::new(5, 5).save(dir.join(first_mask)).unwrap();
    std::fs::write(dir.join("train.tsv"), format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    let train = format!("data.train={}", dir.join("train.tsv").display());
    let val = format!("data.val={}", dir.join("train.tsv").display());
    let output = run(&[
        "train", "configs/lseg.toml", "--output", dir.join("run").to_str().unwrap(), "--set", &train,
        "--set", &val, "--set", "train.batch_size=8", "--set", "train.max_steps=1",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(first_mask) && message.contains("5"), "{message}");
}

#[test]
fn clip4clip_learns_video_text_retrieval() {
    let tmp = scratch("clip4clip");
    let out = tmp.path();
    let output = run(&[
        "train", "configs/clip4clip.toml", "--output", out.to_str().unwrap(), "--set", "train.batch_size=8",
        "--set", "train.max_steps=16", "--set", "train.log_every=1", "--set", "train.warmup_steps=2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (first, last) = loss_drop(out, 4);
    assert!(last < first, "loss went from {first} to {last}");
    let eval = &summary_of(out)["eval"];
    assert_eq!(eval["clips"], 32);
    // Held-out text-to-video R@1 at least twice a random ranking's (1 in 32).
    let (r1, chance) = (eval["t2v_r1"].as_f64().unwrap(), eval["chance_r1"].as_f64().unwrap());
    assert!(r1 >= 2.0 * chance, "text-to-video R@1 {r1:.2}% against chance {chance:.2}%: {eval}");
    for direction in ["text_to_video", "video_to_text"] {
        for report in [&eval[direction], &eval["dual_softmax"][direction]] {
            let (r1, r10) = (report["r1"].as_f64().unwrap(), report["r10"].as_f64().unwrap());
            assert!((0.0..=100.0).contains(&r1) && r1 <= r10, "{report}");
            assert!((1.0..=32.0).contains(&report["median_rank"].as_f64().unwrap()), "{report}");
        }
    }
    // The model written in the official layout and evaluated from a config that names it (no
    // run) ranks every clip as the run did.
    let official = out.join("official.safetensors");
    let output = run(&["export-official", out.to_str().unwrap(), "--output", official.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let set = format!("video.official_checkpoint={}", official.display());
    let output = run(&["eval", "configs/clip4clip.toml", "--set", &set]);
    assert!(output.status.success(), "{}", stderr(&output));
    let again: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(again["text_to_video"], eval["text_to_video"], "{again}");
    assert_eq!(again["video_to_text"], eval["video_to_text"], "{again}");
    let output = run(&["eval", "configs/clip4clip.toml", "--set", &set, "--set", "video.similarity=meanP"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("SeqTransf"), "{}", stderr(&output));
    // Longer clips than the run trained would read the zero rows the export padded: refused.
    let output = run(&["eval", "configs/clip4clip.toml", "--set", &set, "--set", "video.frames=12"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("video.frames = 12") && stderr(&output).contains("for 8 frames"), "{}", stderr(&output));
}

#[test]
fn actionclip_reports_zero_shot_and_fine_tuned_accuracy() {
    let tmp = scratch("actionclip");
    let out = tmp.path();
    let output = run(&[
        "train", "configs/actionclip.toml", "--output", out.to_str().unwrap(), "--set", "train.batch_size=8",
        "--set", "train.max_steps=16", "--set", "train.log_every=1", "--set", "train.warmup_steps=2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (first, last) = loss_drop(out, 4);
    assert!(last < first, "loss went from {first} to {last}");
    let summary = summary_of(out);
    assert_eq!(summary["chance_top1"], 0.25);
    for key in ["zero_shot_top1", "zero_shot_top5"] {
        assert!((0.0..=1.0).contains(&summary[key].as_f64().unwrap()), "{summary}");
    }
    // The fine-tuned accuracy is reported on the held-out clips (its quality is asserted by
    // `actionclip_reads_the_order_of_frames`, on a larger generated set: from scratch, these 96
    // training clips are memorized rather than their motion learned).
    let top1 = summary["eval"]["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1) && summary["eval"]["clips"] == 32, "{summary}");
    // Exported in the official layout and evaluated from a config naming it: the same accuracy.
    let official = out.join("official.safetensors");
    let output = run(&["export-official", out.to_str().unwrap(), "--output", official.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let set = format!("video.official_checkpoint={}", official.display());
    let output = run(&["eval", "configs/actionclip.toml", "--set", &set]);
    assert!(output.status.success(), "{}", stderr(&output));
    let again: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(again["top1"], summary["eval"]["top1"], "{again}");
    assert_eq!(again["top5"], summary["eval"]["top5"], "{again}");
}

/// ActionCLIP learns the direction of motion, which only the order of the frames tells: on a
/// generated moving-shapes set (512 training clips, 128 held out, labels "moving left / right /
/// up / down"; each direction passes through the same positions as its opposite, in reverse),
/// the `Transf` fusion (frame positions and a temporal transformer: CLIP4Clip's seqTransf)
/// recognizes held-out clips far above chance, and `meanP`, which averages the frames and so
/// cannot tell a clip from its reverse, does not get near it.
#[test]
fn actionclip_reads_the_order_of_frames() {
    let tmp = scratch("video-order");
    let dir = tmp.path();
    let data = dir.join("moving-shapes");
    clip_video::data::MovingShapesConfig::new().with_train(512).with_val(128).with_plain(true).generate(&data).unwrap();
    let train = format!("data.train={}", data.join("train_labels.tsv").display());
    let val = format!("data.val={}", data.join("val_labels.tsv").display());
    let mut top1 = BTreeMap::new();
    for fusion in ["transf", "meanP"] {
        let out = dir.join(fusion);
        let set_fusion = format!("video.fusion={fusion}");
        let output = run(&[
            "train", "configs/actionclip.toml", "--output", out.to_str().unwrap(), "--set", &train, "--set", &val,
            "--set", "model.name=configs/models/tiny-digits-rn.json", "--set", &set_fusion,
            "--set", "train.batch_size=32", "--set", "train.epochs=100", "--set", "train.max_steps=300",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let eval = summary_of(&out)["eval"].clone();
        assert_eq!(eval["clips"], 128, "{eval}");
        assert_eq!(eval["chance_top1"], 0.25, "{eval}");
        top1.insert(fusion, eval["top1"].as_f64().unwrap());
    }
    let (transf, mean) = (top1["transf"], top1["meanP"]);
    eprintln!("held-out top-1: transf {transf:.3}, meanP {mean:.3} (chance 0.25)");
    assert!(transf >= 0.25 + 0.4, "Transf fusion: held-out top-1 {transf:.3} is not above chance (0.25) by 0.4");
    assert!(transf >= mean + 0.3, "Transf fusion {transf:.3} does not beat meanP {mean:.3} by 0.3");
}

#[test]
fn missing_clips_name_the_table_line_or_are_skipped() {
    let tmp = scratch("bad-clips");
    let dir = tmp.path();
    let clips = workspace().join("datasets/moving-shapes");
    let rows: Vec<String> = (0..8).map(|i| format!("{}/clips/{i:04}\tmoving left", clips.display())).collect();
    let table = format!("video\tlabel\n{}\n{}/clips/9999\tmoving up\n", rows.join("\n"), clips.display());
    std::fs::write(dir.join("t.tsv"), table).unwrap();
    let train = format!("data.train={}", dir.join("t.tsv").display());
    let (stop, skip) = (dir.join("stop"), dir.join("skip"));
    let base = ["train", "configs/actionclip.toml", "--set", &train, "--set", "train.batch_size=9", "--set", "train.max_steps=1"];
    let mut args = base.to_vec();
    args.extend(["--output", stop.to_str().unwrap()]);
    let output = run(&args);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("t.tsv:10") && message.contains("9999"), "{message}");
    let mut args = base.to_vec();
    args.extend(["--output", skip.to_str().unwrap(), "--set", "data.skip_bad_samples=true"]);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(summary_of(&skip)["skipped_samples"], 1);
}

/// Trains `config` briefly on the generated detection set and checks that the loss fell and
/// the validation AP50 is above chance.
fn train_detector(config: &str, out: &Path, steps: &str) -> serde_json::Value {
    let output = run(&[
        "train", config, "--output", out.to_str().unwrap(), "--set", &format!("train.max_steps={steps}"),
        "--set", "train.log_every=1", "--set", "train.warmup_steps=2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (first, last) = loss_drop(out, 4);
    assert!(last < first, "loss went from {first} to {last}");
    let eval = summary_of(out)["eval"].clone();
    for key in ["ap", "ap50", "ap_base"] {
        let value = eval[key].as_f64().unwrap_or_else(|| panic!("no {key} in {eval}"));
        assert!((0.0..=1.0).contains(&value), "{key} = {value}");
    }
    // Held-out AP50 clearly above the chance level: the dataset's boxes placed without looking
    // at the image (about 0.001 on the shipped set).
    let (ap50, chance) = (eval["ap50"].as_f64().unwrap(), eval["chance_ap50"].as_f64().unwrap());
    assert!(ap50 > chance + 0.02, "AP50 {ap50:.4} is not above the chance level {chance:.4} by 0.02: {eval}");
    assert!(eval["per_category"]["star"].is_number(), "the novel category is evaluated: {eval}");
    eval
}

/// Runs `clipforge detect` on the fixture photographs and checks the drawn images.
fn detect_photographs(model: &Path, out: &Path, labels: &str) {
    let photos = photographs();
    let mut args = vec!["detect".to_string(), model.to_str().unwrap().into(), "--output".into(), out.to_str().unwrap().into()];
    args.extend(["--labels".to_string(), labels.to_string(), "--threshold".into(), "0".into()]);
    args.extend(photos.iter().map(|p| p.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    for photo in &photos {
        let stem = photo.file_stem().unwrap().to_str().unwrap();
        let drawn = image::open(out.join(format!("{stem}.detections.png"))).unwrap().to_rgb8();
        let original = image::open(photo).unwrap().to_rgb8();
        assert_eq!(drawn.dimensions(), original.dimensions());
        assert_ne!(drawn, original, "boxes are drawn on {}", photo.display());
    }
    let detections: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("detections.json")).unwrap()).unwrap();
    let names: Vec<&str> = labels.split(',').collect();
    assert!(!detections.is_empty());
    assert!(detections.iter().all(|d| names.contains(&d["label"].as_str().unwrap())));
}

/// The JSON report `clipforge eval ...` prints.
fn eval_report(args: &[&str]) -> serde_json::Value {
    let output = run(args);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn vild_learns_the_shapes_and_detects_in_photographs() {
    let tmp = scratch("vild");
    let out = tmp.path();
    let reported = train_detector("configs/vild.toml", out, "60");
    // The saved model holds everything inference needs (CLIP's text tower included): the
    // run's checkpoint, evaluated anew, gives the AP the run reported.
    let again = eval_report(&["eval", out.to_str().unwrap()]);
    for key in ["ap", "ap50", "ap_novel"] {
        let (a, b) = (reported[key].as_f64().unwrap(), again[key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-9, "{key}: the run reported {a}, its checkpoint gives {b}");
    }
    let cache = out.join("vild_crop_embeddings.safetensors");
    assert!(cache.is_file(), "ViLD-image caches the crop embeddings");
    detect_photographs(out, &out.join("detected"), "person,cat,rocket,cup");

    // The box head can train and evaluate on the precomputed proposals instead of the RPN's;
    // the crop embeddings come from the cache given.
    let fixed = out.join("file-proposals");
    let cached = format!("detection.distill_cache={}", cache.display());
    let output = run(&[
        "train", "configs/vild.toml", "--output", fixed.to_str().unwrap(), "--set", "detection.file_proposals=true",
        "--set", &cached, "--set", "train.max_steps=2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("proposals from"), "the cache is reused: {}", stderr(&output));
    assert!(summary_of(&fixed)["eval"]["ap"].is_number());
}

#[test]
fn glip_grounds_the_shapes_and_pseudo_labels_captions() {
    let tmp = scratch("glip");
    let out = tmp.path();
    train_detector("configs/glip.toml", out, "30");
    detect_photographs(out, &out.join("detected"), "person,cat,rocket,cup");

    // The trained GLIP labels the captions of the validation images, and GLIP trains on them.
    let pseudo = out.join("pseudo.json");
    let output = run(&[
        "pseudo-label", out.to_str().unwrap(), "--data", "datasets/det-shapes/val.json", "--images", "datasets/det-shapes/images",
        "--threshold", "0.05",
        "--output", pseudo.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let labelled: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&pseudo).unwrap()).unwrap();
    let captions: std::collections::HashMap<u64, String> = labelled["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_u64().unwrap(), i["caption"].as_str().unwrap().to_string()))
        .collect();
    let annotations = labelled["annotations"].as_array().unwrap();
    assert!(!annotations.is_empty(), "no pseudo-label above 0.05");
    for annotation in annotations {
        let caption = &captions[&annotation["image_id"].as_u64().unwrap()];
        let span = &annotation["tokens_positive"][0];
        let phrase = &caption[span[0].as_u64().unwrap() as usize..span[1].as_u64().unwrap() as usize];
        let category = labelled["categories"].as_array().unwrap().iter().find(|c| c["id"] == annotation["category_id"]).unwrap();
        assert_eq!(phrase, category["name"].as_str().unwrap(), "{annotation}");
    }
    let retrained = out.join("from-pseudo");
    let train = format!("data.train={}", pseudo.display());
    let output = run(&[
        "train", "configs/glip.toml", "--output", retrained.to_str().unwrap(), "--set", &train,
        "--set", "detection.train_images=datasets/det-shapes/images", "--set", "detection.captions=true",
        "--set", "train.max_steps=2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn malformed_annotations_name_the_file_and_the_annotation() {
    let tmp = scratch("bad-boxes");
    let dir = tmp.path();
    let text = std::fs::read_to_string(workspace().join("datasets/det-shapes/train.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let annotation = &mut json["annotations"][3];
    annotation["bbox"] = serde_json::json!([4.0, 4.0, -2.0]);
    let id = annotation["id"].as_u64().unwrap();
    let file = dir.join("train.json");
    std::fs::write(&file, json.to_string()).unwrap();
    let train = format!("data.train={}", file.display());
    let output = run(&[
        "train", "configs/vild.toml", "--output", dir.join("run").to_str().unwrap(), "--set", &train,
        "--set", "detection.train_images=datasets/det-shapes/images", "--set", "train.max_steps=1",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("train.json") && message.contains(&id.to_string()), "{message}");
}

/// Writes `count` 64 x 64 scenes (an RGB gradient and a 16-bit depth PNG of `depth` metres
/// everywhere, in millimetres) and their `image<TAB>depth` table; returns the table.
fn depth_scenes(dir: &Path, count: usize, depth: f32) -> PathBuf {
    let mut table = String::from("image\tdepth\n");
    for i in 0..count {
        let rgb = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, (i * 40) as u8]));
        rgb.save(dir.join(format!("rgb_{i}.png"))).unwrap();
        let millimetres = (depth * 1000.0) as u16;
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(64, 64, image::Luma([millimetres]))
            .save(dir.join(format!("depth_{i}.png")))
            .unwrap();
        table.push_str(&format!("rgb_{i}.png\tdepth_{i}.png\n"));
    }
    std::fs::write(dir.join("scenes.tsv"), table).unwrap();
    dir.join("scenes.tsv")
}

#[test]
fn depthclip_evaluates_writes_depth_maps_and_fine_tunes() {
    let tmp = scratch("depthclip");
    let dir = tmp.path();
    let table = depth_scenes(dir, 4, 2.0);
    let data = [format!("data.train={}", table.display()), format!("data.val={}", table.display())];
    let sets = [
        "--set", "model.name=configs/models/tiny-depth-rn.json", "--set", &data[0], "--set", &data[1],
        "--set", "depthclip.protocol=whole",
    ];
    let mut args = vec!["eval", "configs/depthclip.toml"];
    args.extend(sets);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["images"], 4, "{report}");
    // Every pixel at the mean bin depth against a flat 2 m scene: |mean - 2| / 2.
    let config = clip_train::config::RunConfig::load(&workspace().join("configs/depthclip.toml"), &data).unwrap();
    let bins: Vec<f64> = config.sections["depthclip"]["bins"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
    let mean = bins.iter().sum::<f64>() / bins.len() as f64;
    let constant = report["constant_abs_rel"].as_f64().unwrap();
    assert!((constant - (mean - 2.0).abs() / 2.0).abs() < 1e-4, "{report}");
    // Predictions are expected bin depths: inside the bins' range.
    let abs_rel = report["abs_rel"].as_f64().unwrap();
    let (lo, hi) = (bins.iter().cloned().fold(f64::MAX, f64::min), bins.iter().cloned().fold(0.0, f64::max));
    assert!(abs_rel <= ((2.0 - lo).abs().max((hi - 2.0).abs()) / 2.0) + 1e-4, "{report}");

    let out = dir.join("maps");
    let image = dir.join("rgb_0.png");
    let mut args = vec!["depth", "configs/depthclip.toml", image.to_str().unwrap(), "--output", out.to_str().unwrap()];
    args.extend(sets);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let map = image::open(out.join("rgb_0.depth.png")).unwrap();
    assert!(matches!(map, image::DynamicImage::ImageLuma16(_)) && (map.width(), map.height()) == (64, 64));
    assert_eq!(image::image_dimensions(out.join("rgb_0.depth-color.png")).unwrap(), (64, 64));

    let run_dir = dir.join("run");
    let mut args = vec!["train", "configs/depthclip.toml", "--output", run_dir.to_str().unwrap(), "--set", "train.batch_size=2", "--set", "train.max_steps=3", "--set", "train.log_every=1"];
    args.extend(sets);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(losses(&run_dir).values().all(|l| l.is_finite()));
    assert_eq!(summary_of(&run_dir)["eval"]["images"], 4);
}

#[test]
fn pointclip_classifies_held_out_clouds_zero_shot_and_few_shot() {
    let tmp = scratch("pointclip");
    let out = tmp.path();
    let started = Instant::now();
    // The stand-in pretraining of the tiny CLIP on single depth views of the 192 training clouds
    // (36 steps, as configs/pointclip.toml), then PointCLIP with it frozen.
    let output = run(&[
        "train", "configs/pointclip.toml", "--output", out.to_str().unwrap(), "--set", "train.max_steps=36",
        "--set", "train.log_every=1", "--set", "train.warmup_steps=4",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (first, last) = loss_drop(out, 4);
    assert!(last < first, "loss went from {first} to {last}");
    let summary = summary_of(out);
    let eval = &summary["eval"];
    assert_eq!(eval["clouds"], 96, "{eval}");
    let chance = summary["chance_top1"].as_f64().unwrap();
    assert!((chance - 1.0 / 6.0).abs() < 1e-9, "{summary}");
    // Zero-shot over all six views of the 96 held-out clouds, clearly above chance (0.167; the
    // seeds tried reach 0.48 to 0.64).
    let zero_shot = summary["zero_shot_top1"].as_f64().unwrap();
    assert!(zero_shot > chance + 0.15, "zero-shot top-1 {zero_shot:.3} is not above chance {chance:.3} by 0.15: {eval}");
    // The 16-shot inter-view adapter on the frozen CLIP improves on it (0.59 to 0.80).
    let few_shot = eval["few_shot_top1"].as_f64().unwrap();
    assert!(few_shot >= zero_shot, "few-shot top-1 {few_shot:.3} is below zero-shot {zero_shot:.3}: {eval}");
    eprintln!("pointclip: zero-shot {zero_shot:.3}, few-shot {few_shot:.3}, chance {chance:.3}, {:?}", started.elapsed());

    // `eval` on the run reproduces both (the adapter's training is seeded).
    let output = run(&["eval", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let again: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(again["zero_shot_top1"], eval["zero_shot_top1"], "{again}");
    assert_eq!(again["few_shot_top1"], eval["few_shot_top1"], "{again}");

    // Bad keys of [pointclip] are refused, named.
    for (set, named) in [("pointclip.shot=4", "shot"), ("pointclip.points=0", "pointclip.points")] {
        let output = run(&["train", "configs/pointclip.toml", "--output", out.join("bad").to_str().unwrap(), "--set", set]);
        assert!(!output.status.success(), "{set} was accepted");
        assert!(stderr(&output).contains(named), "{set}: {}", stderr(&output));
    }

    // The run's projection writes each cloud's six depth views as images of the configured size.
    let cloud = workspace().join("datasets/pointclouds").join(
        std::fs::read_to_string(workspace().join("datasets/pointclouds/val.tsv")).unwrap().lines().nth(1).unwrap().split('\t').next().unwrap(),
    );
    let views = out.join("views");
    let output = run(&["render-views", out.to_str().unwrap(), cloud.to_str().unwrap(), "--output", views.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stem = cloud.file_stem().unwrap().to_str().unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let resolution = config["pointclip"]["resolution"].as_u64().unwrap() as u32;
    for view in 0..6 {
        let size = image::image_dimensions(views.join(format!("{stem}_0_{view}.png"))).unwrap();
        assert_eq!(size, (resolution, resolution), "view {view}");
    }
}

/// The CLIPasso toy config, sped up for the test suite: one validation digit per class, 4 and
/// 16 strokes, `iterations` steps.
fn clipasso_config(dir: &Path, iterations: usize) -> PathBuf {
    let text = std::fs::read_to_string(workspace().join("configs/clipasso-digits.toml")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for line in &mut lines {
        for (key, value) in [("strokes", "16".to_string()), ("stroke_counts", "[4, 16]".into()), ("per_class", "1".into()),
            ("iterations", iterations.to_string()), ("frame_every", "10".into())]
        {
            if line.starts_with(&format!("{key} = ")) {
                *line = format!("{key} = {value}");
            }
        }
    }
    let path = dir.join("clipasso.toml");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// The `summary.json` that `sketch` wrote to `dir` after sketching one held-out digit per class
/// at 4 and 16 strokes, checked: recognition well above chance, and more strokes no worse.
fn recognized_sketches(dir: &Path) -> serde_json::Value {
    let summary = summary_of(dir);
    let chance = summary["chance_top1"].as_f64().unwrap();
    let top1 = summary["recognition_top1"].as_f64().unwrap();
    let by = |strokes: &str| summary["recognition_by_strokes"][strokes].as_f64().unwrap();
    assert_eq!(chance, 0.1);
    assert_eq!(summary["images"], 10);
    assert_eq!(top1, by("16"), "{summary}");
    // Well above chance: at least four of the ten sketches recognized where luck gets one.
    assert!(top1 >= chance + 0.3, "16-stroke sketches recognized at {top1}, chance {chance}: {summary}");
    // More strokes draw more of the digit: 16 may lose at most one image of ten to 4 strokes
    // (the test's ten images make every image a step of 0.1).
    assert!(by("16") >= by("4") - 0.1 - 1e-9, "{summary}");
    for stem in ["svg", "png", "gif"] {
        let count = std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == stem)).count();
        let expected = if stem == "gif" { 10 } else { 20 };
        assert_eq!(count, expected, "{stem} files");
    }
    summary
}

#[test]
fn clipasso_sketches_held_out_digits_that_clip_recognizes() {
    let started = Instant::now();
    let tmp = scratch("clipasso");
    let out = tmp.path();
    let config = clipasso_config(out, 40);
    let config = config.to_str().unwrap();
    let run_dir = out.join("run");
    let in_run_dir = format!("run.output={}", run_dir.display());
    let in_run_dir = in_run_dir.as_str();

    // `sketch --config` first trains the config's tiny ResNet CLIP in its run.output (a hundred
    // steps, zero-shot top-1 about 0.95), then draws one held-out digit per class and scores them.
    let sketches = out.join("sketches");
    let output = run(&["sketch", "--config", config, "--set", in_run_dir, "--output", sketches.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("training the run"), "{}", stderr(&output));
    let trained = summary_of(&run_dir)["zero_shot_top1"].as_f64().unwrap();
    assert!(trained > 0.6, "the CLIP learned too little to judge sketches: zero-shot top-1 {trained}");
    let summary = recognized_sketches(&sketches);
    let sketched_at = started.elapsed();

    // The run folder itself (`sketch RUN`) holds the same CLIP: the same sketches, scored alike.
    let again = out.join("again");
    let output = run(&["sketch", run_dir.to_str().unwrap(), "--output", again.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let repeated = recognized_sketches(&again);
    assert_eq!(summary["recognition_by_strokes"], repeated["recognition_by_strokes"], "{summary} vs {repeated}");

    // With images, `sketch` draws them with the strokes asked for; `--config` finds its run
    // finished and trains nothing.
    let image = workspace().join("datasets/digits/images/0804.png");
    let image = image.to_str().unwrap();
    let drawn = out.join("drawn");
    let output = run(&["sketch", "--config", config, "--set", in_run_dir, image, "--strokes", "5", "--iterations", "3",
        "--output", drawn.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("training the run"), "{}", stderr(&output));
    let svg = std::fs::read_to_string(drawn.join("0804.svg")).unwrap();
    assert_eq!(svg.matches("<path d=\"M").count(), 5, "{svg}");
    assert!(image::open(drawn.join("0804.gif")).is_ok() && image::open(drawn.join("0804.png")).is_ok());

    // A ViT CLIP (random weights) starts its strokes from the attention relevancy.
    let vit = out.join("vit.toml");
    let text = std::fs::read_to_string(config).unwrap()
        .replace("configs/models/tiny-digits-rn.json", "configs/models/tiny-digits.json")
        .replace("semantic_weight = 1.0", "semantic_weight = 1.0\nlayer_weights = [0.0, 0.0, 0.0, 0.0, 0.0]\ntext_target = \"the digit seven\"");
    std::fs::write(&vit, text).unwrap();
    let output = run(&["sketch", vit.to_str().unwrap(), image, "--strokes", "3", "--iterations", "2", "--output", drawn.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(drawn.join("0804.svg")).unwrap().matches("<path d=\"M").count(), 3);

    // Bad values name their key (and the file); a missing config, and a run.output that holds
    // a run of another configuration, are refused.
    let cases: [(&[&str], &[&str]); 6] = [
        (&[config, "--set", "sketch.ink=red"], &["sketch.ink"]),
        (&[config, "--set", "sketch.width=0"], &["sketch.width"]),
        (&[config, "--set", "sketch.wdth=2"], &["wdth"]),
        (&["--config", config, "--set", "sketch.wdth=2"], &["wdth", config]),
        (&["--config", "configs/no-such-config.toml"], &["configs/no-such-config.toml", "no such configuration file"]),
        (&["--config", config, "--set", in_run_dir, "--set", "train.lr=1e-3"], &["train.lr", "another configuration"]),
    ];
    for (args, named) in cases {
        let mut line = vec!["sketch"];
        line.extend_from_slice(args);
        line.extend([image, "--output", drawn.to_str().unwrap()]);
        let output = run(&line);
        assert!(!output.status.success(), "{args:?} was accepted");
        for name in named {
            assert!(stderr(&output).contains(name), "{args:?}: {}", stderr(&output));
        }
    }
    eprintln!("clipasso: trained and sketched by {sketched_at:?}, all done by {:?}: {summary}", started.elapsed());
}

#[test]
fn audioclip_classifies_held_out_voices_zero_shot() {
    let tmp = scratch("audioclip");
    let out = tmp.path();
    let started = Instant::now();
    // AudioCLIP from scratch on the spoken digits (configs/audioclip.toml, shortened): a tiny
    // ResNet CLIP and a small ESResNeXt-FBSP, the tri-modal loss; then the clips of held-out
    // voices classified zero-shot against the ten digit words.
    let output = run(&["train", "configs/audioclip.toml", "--output", out.to_str().unwrap(), "--set", "train.log_every=1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = summary_of(out);
    let eval = &summary["eval"];
    assert_eq!(eval["clips"], 60, "{eval}");
    let chance = summary["chance_top1"].as_f64().unwrap();
    assert!((chance - 0.1).abs() < 1e-9, "{summary}");
    let zero_shot = summary["zero_shot_top1"].as_f64().unwrap();
    assert!(zero_shot > chance + 0.2, "zero-shot top-1 {zero_shot:.3} is not above chance {chance:.3} by 0.2: {eval}");
    let top5 = summary["zero_shot_top5"].as_f64().unwrap();
    assert!(top5 >= zero_shot, "{eval}");
    eprintln!("audioclip: zero-shot top-1 {zero_shot:.3} (top-5 {top5:.3}), chance {chance:.3}, {:?}", started.elapsed());

    // The run classifies an audio file: the ten labels ranked.
    let clip = workspace().join("datasets/spoken-digits/audio/val_7_00.wav");
    let labels = "zero,one,two,three,four,five,six,seven,eight,nine";
    let output = run(&["classify-audio", out.to_str().unwrap(), "--labels", labels, "--top", "10", clip.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(printed.lines().filter(|l| l.contains('%')).count(), 10, "{printed}");
    // `zero-shot` with the run's checkpoint ranks audio files as the task's command does.
    let checkpoint = std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let output = run(&["zero-shot", "--weights", checkpoint.to_str().unwrap(), "--labels", labels, "--top", "10", clip.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), printed, "zero-shot and classify-audio disagree");
    // A file that is not an image, given a model that reads only images, is an error naming it.
    let output = run(&["zero-shot", "--weights", "/nonexistent-weights", "--labels", labels, clip.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("val_7_00.wav") && stderr(&output).contains("not an image"), "{}", stderr(&output));

    // A corrupt clip stops training naming the file; bad keys of [audioclip] are refused, named.
    let bad = out.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("broken.wav"), b"RIFF....WAVEnot really").unwrap();
    std::fs::write(bad.join("train.tsv"), "audio\tcaption\tlabel\nbroken.wav\tseven\tseven\n").unwrap();
    let config: String = std::fs::read_to_string(workspace().join("configs/audioclip.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("val = "))
        .map(|l| if l.starts_with("train = ") { format!("train = {:?}\n", bad.join("train.tsv").display().to_string()) } else { format!("{l}\n") })
        .collect();
    std::fs::write(bad.join("run.toml"), config).unwrap();
    let output = run(&["train", bad.join("run.toml").to_str().unwrap(), "--output", bad.join("run").to_str().unwrap(), "--set", "train.batch_size=1"]);
    assert!(!output.status.success(), "a corrupt clip was accepted");
    assert!(stderr(&output).contains("broken.wav"), "{}", stderr(&output));
    for (set, named) in [("audioclip.second=2", "second"), ("audioclip.seconds=0", "audioclip.seconds"), ("audioclip.format=mp4", "mp4")] {
        let output = run(&["train", "configs/audioclip.toml", "--output", bad.join("run").to_str().unwrap(), "--set", set]);
        assert!(!output.status.success(), "{set} was accepted");
        assert!(stderr(&output).contains(named), "{set}: {}", stderr(&output));
    }
}
