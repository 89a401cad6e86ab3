//! Audio decoding and the dataset layouts on tiny files written here: WAV decoding, mixdown,
//! resampling, crop and pad, int16 scaling, the errors of empty and corrupt files, ESC-50,
//! UrbanSound8K and generic tables with their folds.

use std::path::Path;

use clip_audio::audio::{AudioOptions, Crop, INT16_SCALE, crop_or_pad, decode_file, load_audio, resample};
use clip_audio::data::{AudioTable, DatasetFormat};
use clip_task::Splittable;

/// A fresh scratch directory, removed when dropped.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("clip-audio-{name}-")).tempdir().unwrap()
}

/// Writes a 16-bit WAV of `channels` interleaved channels.
fn write_wav(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let spec = hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();
}

fn sine(rate: u32, seconds: f64, hz: f64, amplitude: f64) -> Vec<i16> {
    let n = (rate as f64 * seconds) as usize;
    (0..n).map(|i| (amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin()) as i16).collect()
}

#[test]
fn wav_is_decoded_mixed_down_and_scaled_to_int16_units() {
    let tmp = scratch("decode");
    let dir = tmp.path();
    let path = dir.join("stereo.wav");
    // Left 1000, right -3000: the mono mixdown is their mean, -1000.
    let samples: Vec<i16> = (0..800).flat_map(|_| [1000i16, -3000]).collect();
    write_wav(&path, 8000, 2, &samples);
    let decoded = decode_file(&path).unwrap();
    assert_eq!((decoded.sample_rate, decoded.channels, decoded.samples.len()), (8000, 2, 800));
    assert!(decoded.samples.iter().all(|&s| (s - (-1000.0 / 32768.0)).abs() < 1e-6), "{:?}", &decoded.samples[..4]);
    // At the file's own rate nothing is resampled: the clip is the samples in int16 units.
    let clip = load_audio(&path, &AudioOptions { sample_rate: 8000, samples: 800 }, Crop::Center).unwrap();
    assert!(clip.iter().all(|&s| (s + 1000.0).abs() < 1e-3));
    assert_eq!(INT16_SCALE, 32768.0);
}

#[test]
fn resampling_keeps_length_and_frequency() {
    let (from, to) = (8000u32, 44100u32);
    let input: Vec<f32> = sine(from, 0.5, 440.0, 16000.0).iter().map(|&s| s as f32 / 32768.0).collect();
    let output = resample(&input, from, to, Path::new("sine")).unwrap();
    assert_eq!(output.len(), (input.len() as f64 * to as f64 / from as f64).round() as usize);
    // A 440 Hz tone crosses zero about 2 * 440 * 0.5 = 440 times, whatever the rate.
    let crossings = output[1000..output.len() - 1000].windows(2).filter(|w| w[0].signum() != w[1].signum()).count();
    let expected = (2.0 * 440.0 * (output.len() - 2000) as f64 / to as f64).round() as usize;
    assert!(crossings.abs_diff(expected) <= 2, "{crossings} zero crossings, expected about {expected}");
    let peak = output[1000..output.len() - 1000].iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!((peak - 16000.0 / 32768.0).abs() < 0.02, "peak {peak}");
}

#[test]
fn clips_are_cropped_and_padded() {
    let samples: Vec<f32> = (0..10).map(|i| i as f32).collect();
    assert_eq!(crop_or_pad(&samples, 4, Crop::Center), vec![3.0, 4.0, 5.0, 6.0]);
    assert_eq!(crop_or_pad(&samples, 4, Crop::At(0.0)), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(crop_or_pad(&samples, 4, Crop::At(0.999)), vec![5.0, 6.0, 7.0, 8.0]);
    // Padding repeats the edge samples (official RandomPadding), centred in evaluation.
    assert_eq!(crop_or_pad(&samples[..3], 7, Crop::Center), vec![0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0]);
}

#[test]
fn empty_and_corrupt_files_are_errors_naming_them() {
    let tmp = scratch("bad");
    let dir = tmp.path();
    let empty = dir.join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let corrupt = dir.join("corrupt.wav");
    std::fs::write(&corrupt, b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunkjunk not audio at all").unwrap();
    let noise = dir.join("noise.mp3");
    std::fs::write(&noise, (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    let header_only = dir.join("header_only.wav");
    write_wav(&header_only, 8000, 1, &[]);
    let missing = dir.join("missing.flac");
    let options = AudioOptions::new(8000, 0.1);
    for path in [&empty, &corrupt, &noise, &header_only, &missing] {
        let error = load_audio(path, &options, Crop::Center).expect_err("a bad file must not load");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        println!("{message}");
    }
}

#[test]
fn generic_tables_read_paths_captions_images_labels_and_folds() {
    let tmp = scratch("table");
    let dir = tmp.path();
    std::fs::write(
        dir.join("train.tsv"),
        "audio\tcaption\timage\tlabel\tfold\nclips/a.wav\ta dog barks\timages/a.png\tdog\t1\n\nclips/b.wav\train\timages/b.png\train\t2\n",
    )
    .unwrap();
    let table = AudioTable::read(&dir.join("train.tsv")).unwrap();
    assert_eq!(table.rows.len(), 2);
    assert_eq!(table.rows[0].audio, dir.join("clips/a.wav"));
    assert_eq!(table.rows[0].image, Some(dir.join("images/a.png")));
    assert_eq!((table.rows[1].caption.as_str(), table.rows[1].label.as_deref(), table.rows[1].fold), ("rain", Some("rain"), Some(2)));
    assert!(table.has_images());
    assert_eq!(table.labels(), vec!["dog".to_string(), "rain".to_string()]);
    let (train, val) = table.clone().split_fold(2).unwrap();
    assert_eq!((train.rows.len(), val.rows[0].label.as_deref()), (1, Some("rain")));
    assert!(table.clone().split_fold(3).is_err());
    let (kept, held) = table.split_off(0.5, 0);
    assert_eq!((kept.rows(), held.rows()), (1, 1));

    // A missing column and a missing field are errors naming the file (and line).
    std::fs::write(dir.join("bad.csv"), "file,caption\nx.wav,hello\n").unwrap();
    let error = AudioTable::read(&dir.join("bad.csv")).unwrap_err().to_string();
    assert!(error.contains("bad.csv") && error.contains("audio"), "{error}");
    std::fs::write(dir.join("gap.tsv"), "audio\tcaption\nx.wav\t\n").unwrap();
    let error = AudioTable::read(&dir.join("gap.tsv")).unwrap_err().to_string();
    assert!(error.contains("gap.tsv:2") && error.contains("caption"), "{error}");
}

#[test]
fn esc50_and_urbansound8k_layouts_are_read_with_their_folds() {
    let esc_dir = scratch("esc50");
    let esc = esc_dir.path();
    std::fs::create_dir_all(esc.join("meta")).unwrap();
    std::fs::write(
        esc.join("meta/esc50.csv"),
        "filename,fold,target,category,esc10,src_file,take\n1-100032-A-0.wav,1,0,dog,True,100032,A\n2-1-A-1.wav,2,42,car_horn,False,1,A\n",
    )
    .unwrap();
    let table = AudioTable::read_format(esc, DatasetFormat::Esc50).unwrap();
    assert_eq!(table.rows[1].audio, esc.join("audio/2-1-A-1.wav"));
    assert_eq!((table.rows[1].label.as_deref(), table.rows[1].fold), (Some("car horn"), Some(2)));
    let (train, val) = table.split_fold(1).unwrap();
    assert_eq!((train.rows.len(), val.rows[0].caption.as_str()), (1, "dog"));
    std::fs::write(esc.join("meta/esc50.csv"), "filename,fold,target,category\nx.wav,6,0,dog\n").unwrap();
    let error = AudioTable::esc50(esc).unwrap_err().to_string();
    assert!(error.contains("esc50.csv:2") && error.contains("1..=5"), "{error}");

    let us8k_dir = scratch("us8k");
    let us8k = us8k_dir.path();
    std::fs::create_dir_all(us8k.join("metadata")).unwrap();
    std::fs::write(
        us8k.join("metadata/UrbanSound8K.csv"),
        "slice_file_name,fsID,start,end,salience,fold,classID,class\n100032-3-0-0.wav,100032,0.0,0.317,1,5,3,dog_bark\n",
    )
    .unwrap();
    let table = AudioTable::read_format(us8k, DatasetFormat::Urbansound8k).unwrap();
    assert_eq!(table.rows[0].audio, us8k.join("audio/fold5/100032-3-0-0.wav"));
    assert_eq!((table.rows[0].label.as_deref(), table.rows[0].fold), (Some("dog bark"), Some(5)));
}
