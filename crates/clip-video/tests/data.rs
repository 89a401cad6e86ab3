//! Video data end to end: the generated `datasets/moving-shapes` set through every reader and
//! the clip loader, video files through ffmpeg (skipped, saying why, where it is not
//! installed), and the errors for bad data, each naming its file.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::Device;
use clip_core::preprocess::{EvalTransform, EvalTransformConfig, ImageTensorData};
use clip_video::data::{Ffmpeg, FrameSampler, VideoDataError, VideoSource, VideoTable, load_clip, stack_videos};
use rand::SeedableRng;
use rand::rngs::StdRng;

const DIRECTIONS: [&str; 4] = ["left", "right", "up", "down"];

fn dataset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/moving-shapes")
}

fn transform() -> EvalTransform {
    EvalTransformConfig::new().with_image_size(16).init()
}

/// A fresh temporary folder for one test, removed when the returned `TempDir` is dropped.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("clip-video-data-{name}-")).tempdir().unwrap()
}

/// Copies the first `frames` frames of generated clip `clip` into `dir`.
fn copy_frames(clip: &str, frames: usize, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for frame in 0..frames {
        let name = format!("{frame:02}.png");
        std::fs::copy(dataset().join("clips").join(clip).join(&name), dir.join(name)).unwrap();
    }
}

#[test]
fn caption_and_label_tables_group_and_split() {
    let all = VideoTable::read_captions(&dataset().join("captions.tsv")).unwrap();
    assert_eq!(all.videos.len(), 128);
    assert!(all.videos.iter().all(|v| v.captions.len() == 2 && v.label.is_none()));
    // Two rows per clip after the header: clip i starts on line 2 + 2i.
    assert_eq!(all.videos[5].line, 12);
    assert_eq!(all.videos[5].source, dataset().join("clips/0005"));

    let train = VideoTable::read_captions(&dataset().join("train_captions.tsv")).unwrap();
    let val = VideoTable::read_captions(&dataset().join("val_captions.tsv")).unwrap();
    assert_eq!((train.videos.len(), val.videos.len()), (96, 32));
    assert_eq!(val.videos[0].source, dataset().join("clips/0096"));
    assert_eq!(val.videos[0].captions, all.videos[96].captions);

    let labelled = VideoTable::read_labelled(&dataset().join("labels.tsv")).unwrap();
    assert_eq!(labelled.videos.len(), 128);
    assert_eq!(
        labelled.labels(),
        ["moving down", "moving left", "moving right", "moving up"]
    );
    for (video, captioned) in labelled.videos.iter().zip(&all.videos) {
        assert_eq!(video.source, captioned.source);
        let direction = video.label.as_deref().unwrap().strip_prefix("moving ").unwrap();
        assert!(captioned.captions.iter().all(|c| c.contains(direction)), "{video:?}");
    }
    for split in ["train", "val"] {
        let table = VideoTable::read_labelled(&dataset().join(format!("{split}_labels.tsv"))).unwrap();
        for direction in DIRECTIONS {
            let count = table
                .videos
                .iter()
                .filter(|v| v.label.as_deref() == Some(&format!("moving {direction}")))
                .count();
            assert_eq!(count, table.videos.len() / 4, "{split} {direction}");
        }
    }

    let (kept, held_out) = labelled.clone().split(0.25, 3);
    assert_eq!((kept.videos.len(), held_out.videos.len()), (96, 32));
    assert!(held_out.videos.iter().all(|v| !kept.videos.contains(v)));
    assert_eq!(labelled.split(0.25, 3), (kept, held_out));
}

#[test]
fn msrvtt_annotations_match_the_caption_table() {
    let msrvtt = VideoTable::read_msrvtt(&dataset().join("msrvtt.json"), &dataset().join("clips")).unwrap();
    let table = VideoTable::read_captions(&dataset().join("captions.tsv")).unwrap();
    assert_eq!(msrvtt.videos.len(), 128);
    for (a, b) in msrvtt.videos.iter().zip(&table.videos) {
        assert_eq!((&a.source, &a.captions, a.line), (&b.source, &b.captions, 0));
    }
}

#[test]
fn class_folders_are_labelled_by_name() {
    let tmp = scratch("classes");
    let root = tmp.path();
    copy_frames("0000", 2, &root.join("moving left/clip_b"));
    copy_frames("0004", 2, &root.join("moving left/clip_a"));
    copy_frames("0001", 2, &root.join("moving right/clip_c"));
    std::fs::write(root.join("moving right/clip_d.avi"), b"").unwrap();
    std::fs::write(root.join("moving right/notes.txt"), b"skipped").unwrap();
    std::fs::write(root.join("README.md"), b"skipped").unwrap();
    let table = VideoTable::read_labelled(root).unwrap();
    let found: Vec<_> = table
        .videos
        .iter()
        .map(|v| {
            (
                v.source.strip_prefix(root).unwrap().to_owned(),
                v.label.clone().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("moving left/clip_a", "moving left"),
        ("moving left/clip_b", "moving left"),
        ("moving right/clip_c", "moving right"),
        ("moving right/clip_d.avi", "moving right"),
    ]
    .map(|(path, label)| (PathBuf::from(path), label.to_string()));
    assert_eq!(found, expected);
    assert_eq!(table.labels(), ["moving left", "moving right"]);

    std::fs::create_dir(root.join("empty class")).unwrap();
    let err = VideoTable::read_labelled(root).unwrap_err();
    assert!(
        err.to_string().contains("empty class: the class folder holds no video"),
        "{err}"
    );
}

#[test]
fn clips_are_sampled_transformed_and_stacked() {
    let transform = transform();
    let clip_dir = dataset().join("clips/0003");
    let source = VideoSource::from_path(&clip_dir).unwrap();
    assert_eq!(source, VideoSource::Frames(clip_dir.clone()));
    assert_eq!(source.frame_count().unwrap(), 8);
    let mut rng = StdRng::seed_from_u64(0);

    // 12 frames of an 8-frame clip repeat some frames; each is the transformed frame file.
    let sampler = FrameSampler::default();
    let clip = load_clip(&source, &sampler, &transform, &mut rng).unwrap();
    assert_eq!(clip.len(), 12);
    for (frame, index) in clip.iter().zip(sampler.indices(8, &mut rng)) {
        assert_eq!(
            frame,
            &transform.load(&clip_dir.join(format!("{index:02}.png"))).unwrap()
        );
    }
    let four = load_clip(&source, &FrameSampler::eval(4), &transform, &mut rng).unwrap();
    assert_eq!(four.len(), 4);

    let table = VideoTable::read_captions(&dataset().join("val_captions.tsv")).unwrap();
    let train = FrameSampler::train(4);
    let videos: Vec<Vec<ImageTensorData>> = (0..3)
        .map(|i| table.load_clip(i, &train, &transform, &mut rng).unwrap())
        .collect();
    let batch = stack_videos(&videos, &Device::flex()).unwrap();
    assert_eq!(batch.dims(), [3, 4, 3, 16, 16]);
    let values = batch.into_data().try_to_vec::<f32>().unwrap();
    let frame = 3 * 16 * 16;
    let start = (2 * 4 + 1) * frame;
    assert_eq!(&values[start..start + frame], videos[2][1].values.as_slice());

    let err = stack_videos(&[videos[0].clone(), four[..3].to_vec()], &Device::flex()).unwrap_err();
    assert!(err.to_string().contains("video 1 has 3 frames, the first 4"), "{err}");
    assert!(stack_videos(&[], &Device::flex()).is_err());
    let err = load_clip(&source, &FrameSampler::eval(0), &transform, &mut rng).unwrap_err();
    assert!(err.to_string().contains("0 frames"), "{err}");
}

#[test]
fn bad_videos_are_named() {
    let tmp = scratch("bad-videos");
    let dir = tmp.path();
    let (transform, sampler) = (transform(), FrameSampler::eval(4));
    let mut rng = StdRng::seed_from_u64(0);

    // A table row naming a missing video: the table, its line and the video.
    std::fs::write(dir.join("t.tsv"), "video\tcaption\nmissing\ta clip\n").unwrap();
    let table = VideoTable::read_captions(&dir.join("t.tsv")).unwrap();
    let err = table.load_clip(0, &sampler, &transform, &mut rng).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, VideoDataError::Sample { line: 2, .. }), "{message}");
    assert!(
        message.contains("t.tsv:2: video ") && message.contains("missing: no such video"),
        "{message}"
    );

    // An empty frame folder.
    std::fs::create_dir(dir.join("empty")).unwrap();
    std::fs::write(dir.join("empty/notes.txt"), b"not a frame").unwrap();
    let err = load_clip(
        &VideoSource::from_path(&dir.join("empty")).unwrap(),
        &sampler,
        &transform,
        &mut rng,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("empty: the frame folder holds no frame images"),
        "{err}"
    );

    // A corrupt frame: the folder and the frame.
    copy_frames("0002", 3, &dir.join("corrupt"));
    std::fs::write(dir.join("corrupt/01.png"), b"not a png").unwrap();
    let err = load_clip(
        &VideoSource::from_path(&dir.join("corrupt")).unwrap(),
        &sampler,
        &transform,
        &mut rng,
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("corrupt: frame ") && message.contains("01.png: cannot decode"),
        "{message}"
    );
}

#[test]
fn bad_tables_are_named() {
    let tmp = scratch("bad-tables");
    let dir = tmp.path();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap();
        dir.join(name)
    };
    let err = VideoTable::read_captions(&write("a.tsv", "video\tlabel\nx\tmoving up\n")).unwrap_err();
    assert!(err.to_string().contains("a.tsv:1: no column \"caption\""), "{err}");
    let err = VideoTable::read_labelled(&write("b.csv", "video,label\nx,up\ny,\n")).unwrap_err();
    assert!(err.to_string().contains("b.csv:3: empty label"), "{err}");
    let err = VideoTable::read_captions(&write("c.tsv", "video\tcaption\n")).unwrap_err();
    assert!(err.to_string().contains("c.tsv: no videos"), "{err}");
    let err = VideoTable::read_labelled(&dir.join("absent.csv")).unwrap_err();
    assert!(err.to_string().contains("absent.csv"), "{err}");

    // MSR-VTT: an unknown video id, a video without files, a video without sentences.
    copy_frames("0000", 1, &dir.join("videos/video0"));
    std::fs::write(dir.join("videos/video1.mp4"), b"").unwrap();
    let videos = r#""videos": [{"video_id": "video0"}, {"video_id": "video1"}]"#;
    let json = write(
        "m.json",
        &format!(
            r#"{{{videos}, "sentences": [{{"video_id": "video0", "caption": "a"}},
            {{"video_id": "video9", "caption": "b"}}]}}"#
        ),
    );
    let err = VideoTable::read_msrvtt(&json, &dir.join("videos")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("m.json: sentences[1]: video_id \"video9\" is not among"),
        "{message}"
    );
    let json = write(
        "m.json",
        &format!(r#"{{{videos}, "sentences": [{{"video_id": "video0", "caption": "a"}}]}}"#),
    );
    let err = VideoTable::read_msrvtt(&json, &dir.join("videos")).unwrap_err();
    assert!(
        err.to_string().contains("videos[1]: video \"video1\" has no sentences"),
        "{err}"
    );
    let json = write(
        "m.json",
        r#"{"videos": [{"video_id": "video2"}], "sentences": [{"video_id": "video2", "caption": "a"}]}"#,
    );
    let err = VideoTable::read_msrvtt(&json, &dir.join("videos")).unwrap_err();
    assert!(
        err.to_string().contains("videos[0]: video \"video2\" has neither"),
        "{err}"
    );
    assert!(err.to_string().contains("video2.mp4"), "{err}");
    let json = write("m.json", r#"{"videos": []}"#);
    let err = VideoTable::read_msrvtt(&json, &dir.join("videos")).unwrap_err();
    assert!(err.to_string().contains("m.json: not MSR-VTT annotations"), "{err}");

    let json = write(
        "m.json",
        &format!(
            r#"{{{videos}, "sentences": [{{"video_id": "video1", "caption": "b"}},
            {{"video_id": "video0", "caption": "a"}}]}}"#
        ),
    );
    let table = VideoTable::read_msrvtt(&json, &dir.join("videos")).unwrap();
    assert_eq!(table.videos[0].source, dir.join("videos/video0"));
    assert_eq!(table.videos[1].source, dir.join("videos/video1.mp4"));
    assert_eq!(table.videos[1].captions, ["b"]);
}

/// Whether the `ffmpeg` and `ffprobe` programs run; prints why a test is skipped when not, and
/// fails under `CI`.
fn ffmpeg_available(test: &str) -> bool {
    let tools = Ffmpeg::from_env();
    let runs = |program: &Path| {
        Command::new(program)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let available = runs(&tools.ffmpeg) && runs(&tools.ffprobe);
    // CI installs ffmpeg (`.ci/run`): there, a missing one is a failure, never a silent skip.
    assert!(
        available || std::env::var_os("CI").is_none(),
        "{test}: CI is set but {} or {} does not run (apt install ffmpeg)",
        tools.ffmpeg.display(),
        tools.ffprobe.display()
    );
    if !available {
        println!(
            "skipping {test}: {} or {} is not installed (apt install ffmpeg)",
            tools.ffmpeg.display(),
            tools.ffprobe.display()
        );
    }
    available
}

/// Encodes the frames of generated clip `clip` into `video` with the given codec arguments.
fn encode(clip: &str, video: &Path, codec: &[&str]) {
    let status = Command::new(Ffmpeg::from_env().ffmpeg)
        .args(["-v", "error", "-nostdin", "-y", "-framerate", "8", "-i"])
        .arg(dataset().join("clips").join(clip).join("%02d.png"))
        .args(codec)
        .arg(video)
        .status()
        .unwrap();
    assert!(status.success(), "encoding {}", video.display());
}

#[test]
fn video_files_decode_like_their_frames() {
    if !ffmpeg_available("video_files_decode_like_their_frames") {
        return;
    }
    let tmp = scratch("ffmpeg");
    let dir = tmp.path();
    let transform = transform();
    let mut rng = StdRng::seed_from_u64(0);
    // Lossless FFV1 in Matroska: the sampled frames equal those of the frame folder.
    let video = dir.join("0006.mkv");
    encode("0006", &video, &["-c:v", "ffv1", "-pix_fmt", "bgr0"]);
    let source = VideoSource::from_path(&video).unwrap();
    assert_eq!(source, VideoSource::File(video.clone()));
    assert_eq!(source.frame_count().unwrap(), 8);
    let frames = VideoSource::Frames(dataset().join("clips/0006"));
    for sampler in [FrameSampler::eval(5), FrameSampler::eval(12)] {
        let decoded = load_clip(&source, &sampler, &transform, &mut rng).unwrap();
        assert_eq!(decoded, load_clip(&frames, &sampler, &transform, &mut rng).unwrap());
    }
    let train = FrameSampler::train(3);
    let decoded = load_clip(&source, &train, &transform, &mut StdRng::seed_from_u64(9)).unwrap();
    assert_eq!(
        decoded,
        load_clip(&frames, &train, &transform, &mut StdRng::seed_from_u64(9)).unwrap()
    );

    // A lossy MPEG-4 file: counted and sampled.
    let video = dir.join("0007.mp4");
    encode("0007", &video, &["-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p"]);
    let source = VideoSource::from_path(&video).unwrap();
    assert_eq!(source.frame_count().unwrap(), 8);
    let clip = load_clip(&source, &FrameSampler::default(), &transform, &mut rng).unwrap();
    assert_eq!(clip.len(), 12);
    assert!(clip.iter().all(|f| f.shape == [3, 16, 16]));

    // A corrupt video file is named.
    std::fs::write(dir.join("corrupt.mp4"), b"not a video").unwrap();
    let err = VideoSource::File(dir.join("corrupt.mp4")).frame_count().unwrap_err();
    assert!(
        err.to_string().contains("video ") && err.to_string().contains("corrupt.mp4: "),
        "{err}"
    );
}

#[test]
fn missing_ffmpeg_is_reported_with_the_video() {
    let tools = Ffmpeg {
        ffmpeg: "/nonexistent/ffmpeg".into(),
        ffprobe: "/nonexistent/ffprobe".into(),
    };
    let video = dataset().join("clips/0000.mp4");
    let err = tools.frame_count(&video).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, VideoDataError::FfmpegMissing { .. }), "{message}");
    assert!(
        message.contains("/nonexistent/ffprobe") && message.contains("0000.mp4"),
        "{message}"
    );
    assert!(
        message.contains("apt install ffmpeg") && message.contains("CLIPFORGE_FFMPEG"),
        "{message}"
    );
    let err = tools.frames(&video, &[0, 3]).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ffmpeg"), "{err}");
}

/// Set in the copy of this test binary that [`ffmpeg_is_found_through_the_environment`] runs.
const CHILD: &str = "CLIP_VIDEO_TEST_CHILD";

/// Runs itself again (a fresh process, so no environment is changed under other tests) with
/// `CLIPFORGE_FFMPEG` naming a program that does not exist; that copy loads a video file.
#[test]
fn ffmpeg_is_found_through_the_environment() {
    let video = dataset().join("clips/0001.mp4");
    if std::env::var_os(CHILD).is_some() {
        let source = VideoSource::File(video.clone());
        let err = load_clip(
            &source,
            &FrameSampler::default(),
            &transform(),
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap_err();
        // ffprobe is looked for beside the named ffmpeg.
        assert!(
            matches!(&err, VideoDataError::FfmpegMissing { program, video: v }
            if program == Path::new("/nonexistent/bin/ffprobe") && v == &video),
            "{err}"
        );
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["ffmpeg_is_found_through_the_environment", "--exact", "--nocapture"])
        .env(CHILD, "1")
        .env("CLIPFORGE_FFMPEG", "/nonexistent/bin/ffmpeg")
        .env_remove("CLIPFORGE_FFPROBE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}
