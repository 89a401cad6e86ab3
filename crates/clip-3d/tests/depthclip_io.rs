//! Depth data on disk: 16-bit depth PNGs and colorized depth PNGs by round trip, RGB + depth
//! samples, the NYU test crop and the placement of a prediction back into the full frame.

use burn::tensor::Device;
use clip_3d::depthclip::io::{
    DepthIoError, DepthMap, IMAGENET_MEAN, IMAGENET_STD, NYU_DEPTH_SCALE, NYU_TEST_CROP, colormap, colorize_depth,
    nyu_test_input, quantize_depth, read_depth_png, read_sample, write_colorized_depth_png, write_depth_png,
};
use image::{Rgb, RgbImage};

/// A fresh scratch directory, removed when dropped.
fn temp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("depthclip-io-").tempdir().unwrap()
}

/// A 7 x 5 map of depths 0.5 m .. 4.6 m in 0.1237 m steps with one pixel without depth.
fn ramp() -> DepthMap {
    let mut map = DepthMap::new(7, 5, (0..35).map(|i| 0.5 + 0.1237 * i as f32).collect()).unwrap();
    map.set(3, 2, 0.0);
    map
}

#[test]
fn sixteen_bit_depth_png_round_trips_to_the_millimetre() {
    let dir = temp();
    let path = dir.path().join("depth.png");
    let depth = ramp();
    write_depth_png(&path, &depth, NYU_DEPTH_SCALE).unwrap();
    let decoded = image::open(&path).unwrap();
    let read = read_depth_png(&path, NYU_DEPTH_SCALE);
    assert_eq!(decoded.color(), image::ColorType::L16, "written as 16-bit grayscale");
    let read = read.unwrap();
    assert_eq!((read.width, read.height), (7, 5));
    for (got, want) in read.values.iter().zip(&depth.values) {
        assert!((got - want).abs() <= 0.0005 + 1e-6, "{got} vs {want}");
        assert_eq!(*got, (want * 1000.0).round() / 1000.0);
    }
    assert_eq!(read.get(3, 2), 0.0, "no depth stays no depth");
    // Written again, the same 16-bit values.
    assert_eq!(quantize_depth(&read, NYU_DEPTH_SCALE), quantize_depth(&depth, NYU_DEPTH_SCALE));
}

#[test]
fn quantization_saturates_and_zeroes_invalid_depths() {
    let map = DepthMap::new(4, 1, vec![70.0, -1.0, f32::NAN, 1.2344]).unwrap();
    assert_eq!(quantize_depth(&map, 1000.0), [65535, 0, 0, 1234]);
    assert_eq!(quantize_depth(&map, 256.0)[3], 316);
}

#[test]
fn eight_bit_depth_is_refused() {
    let dir = temp();
    let path = dir.path().join("gray8.png");
    image::GrayImage::from_pixel(3, 2, image::Luma([7])).save(&path).unwrap();
    let read = read_depth_png(&path, NYU_DEPTH_SCALE);
    match read {
        Err(DepthIoError::Format { message, .. }) => assert!(message.contains("16-bit"), "{message}"),
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn colorized_depth_maps_near_dark_far_bright_and_missing_black() {
    let dir = temp();
    let path = dir.path().join("color.png");
    let depth = ramp();
    write_colorized_depth_png(&path, &depth, None).unwrap();
    let read = image::open(&path).map(|i| i.to_rgb8());
    let read = read.unwrap();
    assert_eq!(read.dimensions(), (7, 5));
    assert_eq!(read, colorize_depth(&depth, None), "the PNG holds the colors exactly");
    assert_eq!(read.get_pixel(0, 0).0, colormap(0.0), "nearest pixel");
    assert_eq!(read.get_pixel(6, 4).0, colormap(1.0), "farthest pixel");
    assert_eq!(read.get_pixel(3, 2).0, [0, 0, 0], "no depth");
    let brightness = |c: [u8; 3]| c.iter().map(|&v| v as u32).sum::<u32>();
    assert!(brightness(colormap(0.0)) < brightness(colormap(0.5)) && brightness(colormap(0.5)) < brightness(colormap(1.0)));
    // A fixed range: 0.5 m is a quarter of the way from 0 to 2 m, beyond 2 m saturates.
    let fixed = colorize_depth(&depth, Some((0.0, 2.0)));
    assert_eq!(fixed.get_pixel(0, 0).0, colormap(0.25));
    assert_eq!(fixed.get_pixel(6, 4).0, colormap(1.0));
}

#[test]
fn samples_pair_an_image_with_its_depth() {
    let dir = temp();
    let (rgb_path, depth_path) = (dir.path().join("rgb.png"), dir.path().join("sample-depth.png"));
    RgbImage::from_fn(7, 5, |x, y| Rgb([x as u8 * 30, y as u8 * 50, 9])).save(&rgb_path).unwrap();
    write_depth_png(&depth_path, &ramp(), NYU_DEPTH_SCALE).unwrap();
    let sample = read_sample(&rgb_path, &depth_path, NYU_DEPTH_SCALE);
    RgbImage::new(6, 5).save(&rgb_path).unwrap();
    let mismatched = read_sample(&rgb_path, &depth_path, NYU_DEPTH_SCALE);
    let sample = sample.unwrap();
    assert_eq!(sample.rgb.get_pixel(2, 3).0, [60, 150, 9]);
    assert!((sample.depth.get(1, 0) - 0.624).abs() < 1e-6);
    assert!(mismatched.unwrap_err().to_string().contains("depth is 7x5"));
}

#[test]
fn nyu_crop_is_the_official_input_and_predictions_go_back_in_place() {
    let device = Device::flex();
    let image = RgbImage::from_fn(640, 480, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 255]));
    let input = nyu_test_input(&image, &device).unwrap();
    assert_eq!(input.dims(), [3, 416, 544]);
    let values: Vec<f32> = input.into_data().iter::<f32>().collect();
    let plane = 416 * 544;
    // Input pixel (0, 0) is image pixel (60, 56), normalized with the ImageNet statistics.
    let norm = |v: f32, c: usize| (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
    assert!((values[0] - norm(60.0, 0)).abs() < 1e-5);
    assert!((values[plane] - norm(56.0, 1)).abs() < 1e-5);
    assert!((values[2 * plane] - norm(255.0, 2)).abs() < 1e-5);
    assert!(nyu_test_input(&RgbImage::new(64, 48), &device).is_err());

    // A prediction of the crop, pasted back at (60, 56) in a zero 640 x 480 frame.
    let full = DepthMap::new(640, 480, (0..640 * 480).map(|i| 1.0 + i as f32).collect()).unwrap();
    let crop = full.crop(NYU_TEST_CROP);
    assert_eq!((crop.width, crop.height), (544, 416));
    assert_eq!(crop.get(0, 0), full.get(60, 56));
    let back = crop.place_in(640, 480, NYU_TEST_CROP.left, NYU_TEST_CROP.top);
    assert_eq!(back.get(60, 56), full.get(60, 56));
    assert_eq!(back.get(603, 471), full.get(603, 471));
    assert_eq!((back.get(59, 56), back.get(604, 471), back.get(60, 472)), (0.0, 0.0, 0.0));

    // Tensors and maps convert both ways.
    let batch = DepthMap::from_batch(crop.to_tensor(&device));
    assert_eq!(batch, [crop]);
}
