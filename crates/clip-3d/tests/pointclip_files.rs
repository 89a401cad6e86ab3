//! Point clouds from files through the projection: the projection fixture's clouds written as
//! `.npy`, binary and ASCII PLY and ModelNet40 `.txt`, read back exactly, give the official depth
//! maps; the views are written as PNGs.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use clip_3d::pointclip::io::{PointCloud, read_point_cloud};
use clip_3d::pointclip::model::clouds_tensor;
use clip_3d::pointclip::png::save_views;
use clip_3d::pointclip::projection::ProjectionConfig;
use clip_fixtures::{self as fixtures, abs_diff};

/// A fresh scratch directory, removed when dropped.
fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("pointclip-files-").tempdir().unwrap()
}

fn write_npy(path: &Path, points: &[[f32; 3]]) {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, 3), }}", points.len());
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(points.iter().flatten().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

fn write_ply(path: &Path, points: &[[f32; 3]], binary: bool) {
    let format = if binary { "binary_little_endian" } else { "ascii" };
    let mut bytes = format!(
        "ply\nformat {format} 1.0\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\nend_header\n",
        points.len()
    )
    .into_bytes();
    for p in points {
        if binary {
            bytes.extend(p.iter().flat_map(|v| v.to_le_bytes()));
        } else {
            // `{:?}` prints the shortest text that reads back to the same f32.
            bytes.extend(format!("{:?} {:?} {:?}\n", p[0], p[1], p[2]).into_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn write_txt(path: &Path, points: &[[f32; 3]]) {
    let text: String = points.iter().map(|p| format!("{:?},{:?},{:?},0.0,0.0,1.0\n", p[0], p[1], p[2])).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn clouds_read_from_files_project_as_the_official_code() {
    let root = fixtures::root();
    let fixture = fixtures::method_fixtures(&root)
        .unwrap()
        .into_iter()
        .find(|f| f.format == "pointclip-projection")
        .expect("a pointclip-projection fixture");
    let inputs = fixture.tensors("inputs").unwrap();
    let expected = fixture.tensors("expected").unwrap();
    let raw = &inputs["points"];
    let (clouds, count) = (raw.shape[0], raw.shape[1]);
    let original: Vec<Vec<[f32; 3]>> =
        raw.values.chunks(count * 3).map(|c| c.chunks(3).map(|p| [p[0], p[1], p[2]]).collect()).collect();

    let tmp = temp_dir();
    let dir = tmp.path();
    let mut read = Vec::new();
    for (i, cloud) in original.iter().enumerate() {
        // Each cloud in a different format.
        let path = match i % 4 {
            0 => {
                let path = dir.join(format!("cloud{i}.npy"));
                write_npy(&path, cloud);
                path
            }
            1 => {
                let path = dir.join(format!("cloud{i}.ply"));
                write_ply(&path, cloud, true);
                path
            }
            2 => {
                let path = dir.join(format!("cloud{i}.ply"));
                write_ply(&path, cloud, false);
                path
            }
            _ => {
                let path = dir.join(format!("cloud{i}.txt"));
                write_txt(&path, cloud);
                path
            }
        };
        let cloud_read: PointCloud = read_point_cloud(&path, 0, 0).unwrap();
        assert_eq!(&cloud_read.points, cloud, "{}", path.display());
        read.push(cloud_read.points);
    }
    // The other formats of cloud 0 read back the same too.
    for (name, write) in [
        ("all.ply", &(|p: &Path, c: &[[f32; 3]]| write_ply(p, c, true)) as &dyn Fn(&Path, &[[f32; 3]])),
        ("all-ascii.ply", &|p: &Path, c: &[[f32; 3]]| write_ply(p, c, false)),
        ("all.txt", &|p: &Path, c: &[[f32; 3]]| write_txt(p, c)),
    ] {
        let path = dir.join(name);
        write(&path, &original[0]);
        assert_eq!(read_point_cloud(&path, 0, 0).unwrap().points, original[0], "{name}");
    }

    let device = Device::flex();
    let points: Tensor<3> = clouds_tensor(&read, &device).unwrap();
    let config = ProjectionConfig::few_shot();
    let depth = config.depth_maps(points);
    let values: Vec<f32> = depth.clone().into_data().iter::<f32>().collect();
    let (max, _) = abs_diff(&values, &expected["fs_depth"].values);
    assert!(max < 1e-4, "few-shot depth maps from files differ by {max:e}");
    let files = save_views(depth, config.num_views(), &dir.join("views"), "cloud").unwrap();
    assert_eq!(files.len(), clouds * config.num_views());
    let image = image::open(&files[0]).unwrap().to_luma8();
    assert_eq!((image.width(), image.height()), (224, 224));
    assert!(image.pixels().any(|p| p.0[0] == 255), "the farthest point is white");
}
