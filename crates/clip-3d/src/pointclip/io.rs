//! Point-cloud files: PLY (ASCII, binary little- and big-endian), OFF meshes sampled to points,
//! ModelNet40's resampled `.txt` (`x,y,z,nx,ny,nz` per line) and NumPy `.npy` (`f4`/`f8`,
//! `[N, >=3]`); plus the data pipeline's normalization to the unit sphere.
//!
//! The official PointCLIP reads ModelNet40's `modelnet40_ply_hdf5_2048` files, whose clouds are
//! already centred and scaled into the unit sphere, and feeds the first 1024 points of each
//! (`item.impath[:1024]`). Raw files get the same treatment from [`normalize_unit_sphere`]
//! (PointNet++'s `pc_normalize`, which produced those files' normalization) and
//! [`PointCloud::first`].
//!
//! Errors name the file and, for text, the line (1-based).

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A failure to read a point-cloud file.
#[derive(Debug, thiserror::Error)]
pub enum PointCloudError {
    /// The file could not be read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A line of a text file (or the header of a binary one) is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file is malformed as a whole (a truncated binary body, a bad `.npy` header, no
    /// points, ...).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Shorthand for results of this module.
pub type Result<T> = std::result::Result<T, PointCloudError>;

fn invalid(path: &Path, message: impl Into<String>) -> PointCloudError {
    PointCloudError::Invalid { path: path.to_path_buf(), message: message.into() }
}

fn at_line(path: &Path, line: usize, message: impl Into<String>) -> PointCloudError {
    PointCloudError::Line { path: path.to_path_buf(), line, message: message.into() }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| PointCloudError::Io { path: path.to_path_buf(), error })
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|e| invalid(path, format!("not UTF-8 text: {e}")))
}

/// A point cloud: xyz and, where the file has them, normals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PointCloud {
    /// Coordinates.
    pub points: Vec<[f32; 3]>,
    /// Per-point normals (ModelNet40 `.txt`, PLY `nx ny nz`), same length as `points`.
    pub normals: Option<Vec<[f32; 3]>>,
}

impl PointCloud {
    /// A cloud without normals.
    pub fn new(points: Vec<[f32; 3]>) -> Self {
        Self { points, normals: None }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the cloud has no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The first `count` points (the official `pointcloud[:1024]`); `None` when the cloud has
    /// fewer.
    pub fn first(&self, count: usize) -> Option<PointCloud> {
        (self.points.len() >= count).then(|| PointCloud {
            points: self.points[..count].to_vec(),
            normals: self.normals.as_ref().map(|n| n[..count].to_vec()),
        })
    }

    /// The cloud normalized to the unit sphere (see [`normalize_unit_sphere`]).
    pub fn normalized(mut self) -> Self {
        normalize_unit_sphere(&mut self.points);
        self
    }
}

/// PointNet++'s `pc_normalize`, the normalization of the ModelNet40 data PointCLIP reads: the
/// centroid (mean point) moved to the origin, then every point divided by the largest distance
/// from it, so the cloud fits the unit sphere and touches it. A cloud of coincident points is
/// only centred.
pub fn normalize_unit_sphere(points: &mut [[f32; 3]]) {
    if points.is_empty() {
        return;
    }
    let mut centroid = [0.0f64; 3];
    for p in points.iter() {
        for (c, &x) in centroid.iter_mut().zip(p) {
            *c += f64::from(x);
        }
    }
    let count = points.len() as f64;
    let centroid = centroid.map(|c| c / count);
    let mut radius = 0.0f64;
    for p in points.iter_mut() {
        for (x, c) in p.iter_mut().zip(centroid) {
            *x = (f64::from(*x) - c) as f32;
        }
        radius = radius.max(p.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt());
    }
    if radius > 0.0 {
        for p in points.iter_mut() {
            for x in p.iter_mut() {
                *x = (f64::from(*x) / radius) as f32;
            }
        }
    }
}

/// Reads a cloud by extension: `.ply`, `.txt` (ModelNet40), `.npy`, or `.off` (a mesh, sampled
/// to `off_samples` points with `seed`, see [`sample_surface`]).
pub fn read_point_cloud(path: &Path, off_samples: usize, seed: u64) -> Result<PointCloud> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("ply") => read_ply(path),
        Some("txt") => read_modelnet_txt(path),
        Some("npy") => read_npy(path),
        Some("off") => {
            let mesh = read_off(path)?;
            sample_surface(&mesh, off_samples, seed).map(PointCloud::new).map_err(|e| invalid(path, e))
        }
        _ => Err(invalid(path, "unknown point-cloud extension (expected .ply, .off, .txt or .npy)")),
    }
}

// ---------------------------------------------------------------------------------------------
// ModelNet40 .txt

/// ModelNet40's resampled clouds (`modelnet40_normal_resampled/<class>/<name>.txt`): one point
/// per line, `x,y,z,nx,ny,nz` (commas and/or whitespace). Lines with 3 values give points
/// without normals; blank lines are skipped; every line must have the same count (3 or more,
/// the first 3 xyz, the next 3 normals).
pub fn read_modelnet_txt(path: &Path) -> Result<PointCloud> {
    let text = read_text(path)?;
    let mut points = Vec::new();
    let mut normals = Vec::new();
    let mut columns = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let values = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|field| !field.is_empty())
            .map(|field| field.parse::<f32>().map_err(|_| at_line(path, number, format!("'{field}' is not a number"))))
            .collect::<Result<Vec<f32>>>()?;
        if values.len() < 3 {
            return Err(at_line(path, number, format!("{} values, expected x,y,z[,nx,ny,nz]", values.len())));
        }
        match columns {
            None => columns = Some(values.len()),
            Some(expected) if expected != values.len() => {
                return Err(at_line(path, number, format!("{} values where the first line has {expected}", values.len())));
            }
            _ => {}
        }
        check_finite(path, number, &values)?;
        points.push([values[0], values[1], values[2]]);
        if values.len() >= 6 {
            normals.push([values[3], values[4], values[5]]);
        }
    }
    if points.is_empty() {
        return Err(invalid(path, "no points"));
    }
    let normals = (normals.len() == points.len()).then_some(normals);
    Ok(PointCloud { points, normals })
}

fn check_finite(path: &Path, line: usize, values: &[f32]) -> Result<()> {
    match values.iter().find(|v| !v.is_finite()) {
        Some(v) => Err(at_line(path, line, format!("non-finite value {v}"))),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// PLY

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Scalar {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "char" | "int8" => Self::I8,
            "uchar" | "uint8" => Self::U8,
            "short" | "int16" => Self::I16,
            "ushort" | "uint16" => Self::U16,
            "int" | "int32" => Self::I32,
            "uint" | "uint32" => Self::U32,
            "float" | "float32" => Self::F32,
            "double" | "float64" => Self::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    fn read(self, bytes: &[u8], little: bool) -> f64 {
        macro_rules! num {
            ($t:ty) => {{
                let array = bytes[..std::mem::size_of::<$t>()].try_into().unwrap();
                if little { <$t>::from_le_bytes(array) as f64 } else { <$t>::from_be_bytes(array) as f64 }
            }};
        }
        match self {
            Self::I8 => f64::from(bytes[0] as i8),
            Self::U8 => f64::from(bytes[0]),
            Self::I16 => num!(i16),
            Self::U16 => num!(u16),
            Self::I32 => num!(i32),
            Self::U32 => num!(u32),
            Self::F32 => num!(f32),
            Self::F64 => num!(f64),
        }
    }
}

#[derive(Debug, Clone)]
enum Property {
    Scalar(String, Scalar),
    List(Scalar, Scalar),
}

#[derive(Debug, Clone)]
struct Element {
    name: String,
    count: usize,
    properties: Vec<Property>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PlyFormat {
    Ascii,
    BinaryLittle,
    BinaryBig,
}

/// Reads the `vertex` element's `x`, `y`, `z` (and `nx`, `ny`, `nz` where present) of a PLY file,
/// ASCII or binary (little- or big-endian). Elements before `vertex` are parsed and skipped.
pub fn read_ply(path: &Path) -> Result<PointCloud> {
    let bytes = read_bytes(path)?;
    let mut offset = 0;
    let mut line_number = 0;
    // The header's next line, advancing `offset` past its newline.
    let next_line = |offset: &mut usize, line_number: &mut usize| -> Option<String> {
        if *offset >= bytes.len() {
            return None;
        }
        let end = bytes[*offset..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| *offset + p);
        let line = String::from_utf8_lossy(&bytes[*offset..end]).trim_end_matches('\r').to_string();
        *offset = (end + 1).min(bytes.len());
        *line_number += 1;
        Some(line)
    };
    if next_line(&mut offset, &mut line_number).as_deref().map(str::trim) != Some("ply") {
        return Err(at_line(path, 1, "not a PLY file (the first line is not 'ply')"));
    }
    let mut format = None;
    let mut elements: Vec<Element> = Vec::new();
    loop {
        let Some(line) = next_line(&mut offset, &mut line_number) else {
            return Err(invalid(path, "the header has no 'end_header'"));
        };
        let number = line_number;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["end_header"] => break,
            [] | ["comment", ..] | ["obj_info", ..] => {}
            ["format", kind, _version] => {
                format = Some(match *kind {
                    "ascii" => PlyFormat::Ascii,
                    "binary_little_endian" => PlyFormat::BinaryLittle,
                    "binary_big_endian" => PlyFormat::BinaryBig,
                    other => return Err(at_line(path, number, format!("unknown PLY format '{other}'"))),
                });
            }
            ["element", name, count] => {
                let count = count.parse().map_err(|_| at_line(path, number, format!("element count '{count}' is not a number")))?;
                elements.push(Element { name: name.to_string(), count, properties: vec![] });
            }
            ["property", "list", count_type, item_type, _name] => {
                let element = elements.last_mut().ok_or_else(|| at_line(path, number, "a property before any element"))?;
                let count = Scalar::parse(count_type).ok_or_else(|| at_line(path, number, format!("unknown type '{count_type}'")))?;
                let item = Scalar::parse(item_type).ok_or_else(|| at_line(path, number, format!("unknown type '{item_type}'")))?;
                element.properties.push(Property::List(count, item));
            }
            ["property", kind, name] => {
                let element = elements.last_mut().ok_or_else(|| at_line(path, number, "a property before any element"))?;
                let kind = Scalar::parse(kind).ok_or_else(|| at_line(path, number, format!("unknown type '{kind}'")))?;
                element.properties.push(Property::Scalar(name.to_string(), kind));
            }
            _ => return Err(at_line(path, number, format!("malformed header line '{line}'"))),
        }
    }
    let format = format.ok_or_else(|| invalid(path, "the header has no 'format' line"))?;
    let vertex_index = elements
        .iter()
        .position(|e| e.name == "vertex")
        .ok_or_else(|| invalid(path, "no 'vertex' element"))?;
    let vertex = &elements[vertex_index];
    let column = |name: &str| {
        vertex.properties.iter().position(|p| matches!(p, Property::Scalar(n, _) if n == name))
    };
    let (Some(x), Some(y), Some(z)) = (column("x"), column("y"), column("z")) else {
        return Err(invalid(path, "the vertex element lacks one of the properties x, y, z"));
    };
    let normal_columns = match (column("nx"), column("ny"), column("nz")) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
        _ => None,
    };
    let header_lines = line_number;
    let rows = match format {
        PlyFormat::Ascii => ply_ascii_rows(path, &bytes[offset..], header_lines, &elements[..=vertex_index])?,
        PlyFormat::BinaryLittle | PlyFormat::BinaryBig => {
            ply_binary_rows(path, &bytes[offset..], format == PlyFormat::BinaryLittle, &elements[..=vertex_index])?
        }
    };
    let pick = |row: &[f64], cols: [usize; 3]| cols.map(|c| row[c] as f32);
    let points: Vec<[f32; 3]> = rows.iter().map(|row| pick(row, [x, y, z])).collect();
    if points.is_empty() {
        return Err(invalid(path, "no points"));
    }
    let normals = normal_columns.map(|cols| rows.iter().map(|row| pick(row, cols)).collect());
    Ok(PointCloud { points, normals })
}

/// The scalar values of every row of the last element of `elements` (the vertices), skipping
/// the elements before it, from an ASCII body following `header_lines` header lines (for line numbers).
fn ply_ascii_rows(path: &Path, body: &[u8], header_lines: usize, elements: &[Element]) -> Result<Vec<Vec<f64>>> {
    let text = std::str::from_utf8(body).map_err(|e| invalid(path, format!("ASCII PLY body is not UTF-8: {e}")))?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (header_lines + i + 1, l)).filter(|(_, l)| !l.trim().is_empty());
    let (last, before) = elements.split_last().expect("the vertex element");
    for element in before {
        for _ in 0..element.count {
            lines.next().ok_or_else(|| invalid(path, format!("the file ends inside element '{}'", element.name)))?;
        }
    }
    let mut rows = Vec::with_capacity(last.count);
    for row in 0..last.count {
        let (number, line) = lines
            .next()
            .ok_or_else(|| invalid(path, format!("the file ends after {row} of {} vertices", last.count)))?;
        let mut fields = line.split_whitespace();
        let mut values = Vec::with_capacity(last.properties.len());
        for property in &last.properties {
            let mut next = || -> Result<f64> {
                let field = fields.next().ok_or_else(|| at_line(path, number, "too few values for the vertex properties"))?;
                field.parse::<f64>().map_err(|_| at_line(path, number, format!("'{field}' is not a number")))
            };
            match property {
                Property::Scalar(..) => values.push(next()?),
                Property::List(..) => {
                    let count = next()? as usize;
                    for _ in 0..count {
                        next()?;
                    }
                    values.push(f64::NAN);
                }
            }
        }
        if let Some(v) = values.iter().zip(&last.properties).find(|(v, p)| matches!(p, Property::Scalar(..)) && !v.is_finite()) {
            return Err(at_line(path, number, format!("non-finite value {}", v.0)));
        }
        rows.push(values);
    }
    Ok(rows)
}

/// As [`ply_ascii_rows`], from a binary body.
fn ply_binary_rows(path: &Path, body: &[u8], little: bool, elements: &[Element]) -> Result<Vec<Vec<f64>>> {
    let mut offset = 0;
    let mut take = |size: usize, what: &str| -> Result<&[u8]> {
        let slice = body.get(offset..offset + size).ok_or_else(|| invalid(path, format!("the binary body ends inside {what}")))?;
        offset += size;
        Ok(slice)
    };
    let (last, before) = elements.split_last().expect("the vertex element");
    let mut rows = Vec::with_capacity(last.count);
    for (index, element) in before.iter().chain(std::iter::once(last)).enumerate() {
        let keep = index == before.len();
        for row in 0..element.count {
            let what = format!("element '{}' row {row}", element.name);
            let mut values = Vec::new();
            for property in &element.properties {
                match *property {
                    Property::Scalar(_, kind) => {
                        let value = kind.read(take(kind.size(), &what)?, little);
                        if keep && !value.is_finite() {
                            return Err(invalid(path, format!("non-finite value {value} in vertex {row}")));
                        }
                        values.push(value);
                    }
                    Property::List(count_kind, item) => {
                        let count = count_kind.read(take(count_kind.size(), &what)?, little);
                        if !(0.0..=1e9).contains(&count) {
                            return Err(invalid(path, format!("bad list length {count} in {what}")));
                        }
                        take(count as usize * item.size(), &what)?;
                        values.push(f64::NAN);
                    }
                }
            }
            if keep {
                rows.push(values);
            }
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// OFF

/// A polygon mesh.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mesh {
    /// Vertex coordinates.
    pub vertices: Vec<[f32; 3]>,
    /// Faces as vertex indices (3 or more each).
    pub faces: Vec<Vec<usize>>,
}

/// Reads an OFF mesh (ModelNet's format): `OFF`, then `vertices faces edges`, the vertices, and
/// the faces as `k i_1 .. i_k` (trailing colour values ignored). Comments (`#`) and blank lines
/// are skipped, and ModelNet's malformed headers with the counts glued to `OFF`
/// (`OFF490 518 0`) are accepted.
pub fn read_off(path: &Path) -> Result<Mesh> {
    let text = read_text(path)?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.split('#').next().unwrap_or("").trim()))
        .filter(|(_, line)| !line.is_empty());
    let (number, first) = lines.next().ok_or_else(|| invalid(path, "empty file"))?;
    let rest = first
        .strip_prefix("OFF")
        .ok_or_else(|| at_line(path, number, format!("expected 'OFF', found '{first}'")))?
        .trim();
    let (number, counts) = if rest.is_empty() {
        lines.next().ok_or_else(|| invalid(path, "no counts line after 'OFF'"))?
    } else {
        (number, rest)
    };
    let counts: Vec<usize> = counts
        .split_whitespace()
        .map(|w| w.parse().map_err(|_| at_line(path, number, format!("count '{w}' is not a number"))))
        .collect::<Result<_>>()?;
    let [vertex_count, face_count, ..] = counts[..] else {
        return Err(at_line(path, number, "expected 'vertices faces edges'"));
    };
    let mut vertices = Vec::with_capacity(vertex_count);
    for index in 0..vertex_count {
        let (number, line) = lines
            .next()
            .ok_or_else(|| invalid(path, format!("the file ends after {index} of {vertex_count} vertices")))?;
        let values: Vec<f32> = line
            .split_whitespace()
            .take(3)
            .map(|w| w.parse().map_err(|_| at_line(path, number, format!("'{w}' is not a number"))))
            .collect::<Result<_>>()?;
        if values.len() < 3 {
            return Err(at_line(path, number, "a vertex needs x y z"));
        }
        check_finite(path, number, &values)?;
        vertices.push([values[0], values[1], values[2]]);
    }
    let mut faces = Vec::with_capacity(face_count);
    for index in 0..face_count {
        let (number, line) = lines
            .next()
            .ok_or_else(|| invalid(path, format!("the file ends after {index} of {face_count} faces")))?;
        let mut words = line.split_whitespace();
        let count: usize = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| at_line(path, number, "a face starts with its vertex count"))?;
        let face: Vec<usize> = (0..count)
            .map(|_| {
                let word = words.next().ok_or_else(|| at_line(path, number, format!("a face of {count} vertices lists fewer")))?;
                let vertex: usize = word.parse().map_err(|_| at_line(path, number, format!("vertex index '{word}' is not a number")))?;
                if vertex >= vertex_count {
                    return Err(at_line(path, number, format!("vertex index {vertex} out of range ({vertex_count} vertices)")));
                }
                Ok(vertex)
            })
            .collect::<Result<_>>()?;
        if count < 3 {
            return Err(at_line(path, number, format!("a face of {count} vertices")));
        }
        faces.push(face);
    }
    Ok(Mesh { vertices, faces })
}

/// `count` points uniformly distributed over the mesh's surface: faces fanned into triangles,
/// a triangle drawn with probability proportional to its area, a point drawn uniformly in it
/// (`a (1 - sqrt r1) + b sqrt r1 (1 - r2) + c sqrt r1 r2`), from a generator seeded by `seed`.
/// An error for a mesh without area.
pub fn sample_surface(mesh: &Mesh, count: usize, seed: u64) -> std::result::Result<Vec<[f32; 3]>, String> {
    let vertex = |i: usize| mesh.vertices[i].map(f64::from);
    let mut triangles = Vec::new();
    let mut cumulative = Vec::new();
    let mut total = 0.0f64;
    for face in &mesh.faces {
        for k in 1..face.len().saturating_sub(1) {
            let (a, b, c) = (vertex(face[0]), vertex(face[k]), vertex(face[k + 1]));
            let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
            let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
            let cross = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
            let area = 0.5 * cross.iter().map(|x| x * x).sum::<f64>().sqrt();
            if area > 0.0 {
                total += area;
                triangles.push((a, b, c));
                cumulative.push(total);
            }
        }
    }
    if triangles.is_empty() {
        return Err("the mesh has no face with a positive area to sample".into());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    Ok((0..count)
        .map(|_| {
            let target = rng.random::<f64>() * total;
            let index = cumulative.partition_point(|&c| c <= target).min(triangles.len() - 1);
            let (a, b, c) = triangles[index];
            let (r1, r2) = (rng.random::<f64>().sqrt(), rng.random::<f64>());
            std::array::from_fn(|d| (a[d] * (1.0 - r1) + b[d] * r1 * (1.0 - r2) + c[d] * r1 * r2) as f32)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// NPY

/// Reads a NumPy `.npy` array of `f4` or `f8` (either byte order, C or Fortran order) shaped
/// `[N, 3]` or `[N, k >= 3]` (the first 3 columns are xyz, the next 3 normals where k >= 6).
pub fn read_npy(path: &Path) -> Result<PointCloud> {
    let mut file = std::fs::File::open(path).map_err(|error| PointCloudError::Io { path: path.to_path_buf(), error })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|error| PointCloudError::Io { path: path.to_path_buf(), error })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(invalid(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        version => return Err(invalid(path, format!(".npy version {version} not supported"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| invalid(path, "the .npy header is truncated"))?;
    let header = String::from_utf8_lossy(header);
    let field = |key: &str| -> Result<String> {
        let at = header.find(&format!("'{key}'")).ok_or_else(|| invalid(path, format!(".npy header has no '{key}': {header}")))?;
        let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':').unwrap_or("").trim_start();
        let end = if rest.starts_with('(') { rest.find(')').map(|e| e + 1) } else { rest.find([',', '}']) };
        Ok(rest[..end.unwrap_or(rest.len())].trim().to_string())
    };
    let descr = field("descr")?.trim_matches(|c| c == '\'' || c == '"').to_string();
    let fortran = field("fortran_order")? == "True";
    let shape: Vec<usize> = field("shape")?
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| invalid(path, format!(".npy shape entry '{s}' is not a number"))))
        .collect::<Result<_>>()?;
    let [rows, cols] = shape[..] else {
        return Err(invalid(path, format!(".npy array of shape {shape:?}; expected [N, 3] or [N, k >= 3]")));
    };
    if cols < 3 {
        return Err(invalid(path, format!(".npy array of shape {shape:?}; expected at least 3 columns")));
    }
    let (little, size) = match descr.as_str() {
        "<f4" | "=f4" => (true, 4),
        ">f4" => (false, 4),
        "<f8" | "=f8" => (true, 8),
        ">f8" => (false, 8),
        other => return Err(invalid(path, format!(".npy dtype '{other}' not supported (expected f4 or f8)"))),
    };
    let data = &bytes[start + header_len..];
    if data.len() < rows * cols * size {
        return Err(invalid(path, format!(".npy data holds {} bytes, shape {shape:?} needs {}", data.len(), rows * cols * size)));
    }
    let kind = if size == 4 { Scalar::F32 } else { Scalar::F64 };
    let value = |r: usize, c: usize| {
        let index = if fortran { c * rows + r } else { r * cols + c };
        kind.read(&data[index * size..], little) as f32
    };
    let mut points = Vec::with_capacity(rows);
    let mut normals = Vec::with_capacity(if cols >= 6 { rows } else { 0 });
    for r in 0..rows {
        let p = [value(r, 0), value(r, 1), value(r, 2)];
        if let Some(v) = p.iter().find(|v| !v.is_finite()) {
            return Err(invalid(path, format!("non-finite value {v} in row {r}")));
        }
        points.push(p);
        if cols >= 6 {
            normals.push([value(r, 3), value(r, 4), value(r, 5)]);
        }
    }
    if points.is_empty() {
        return Err(invalid(path, "no points"));
    }
    let normals = (cols >= 6).then_some(normals);
    Ok(PointCloud { points, normals })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir for one test, removed when dropped.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("pointclip-io-{name}-")).tempdir().unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn normalization_centres_and_scales_into_the_unit_sphere() {
        let mut points = vec![[1.0, 1.0, 1.0], [3.0, 1.0, 1.0], [2.0, 3.0, 1.0], [2.0, -1.0, 1.0]];
        normalize_unit_sphere(&mut points);
        // Centroid (2, 1, 1); farthest points at distance 2.
        assert_eq!(points, [[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]);
        let mut single = vec![[5.0, 5.0, 5.0]; 2];
        normalize_unit_sphere(&mut single);
        assert_eq!(single, [[0.0; 3]; 2]);
        let cloud = PointCloud::new(vec![[0.0; 3]; 4]);
        assert_eq!(cloud.first(3).unwrap().len(), 3);
        assert!(cloud.first(5).is_none());
    }

    #[test]
    fn modelnet_txt() {
        let tmp = temp_dir("txt");
        let dir = tmp.path();
        let good = write(dir, "chair_0001.txt", b"0.1,0.2,0.3,0,0,1\n\n-1,2,3e-1,1,0,0\n");
        let cloud = read_point_cloud(&good, 0, 0).unwrap();
        assert_eq!(cloud.points, [[0.1, 0.2, 0.3], [-1.0, 2.0, 0.3]]);
        assert_eq!(cloud.normals.unwrap(), [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]);
        let xyz = write(dir, "xyz.txt", b"1 2 3\n4 5 6\n");
        assert!(read_modelnet_txt(&xyz).unwrap().normals.is_none());
        let bad = write(dir, "bad.txt", b"0,0,0,0,0,1\n0,abc,0,0,0,1\n");
        let err = read_modelnet_txt(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.txt:2:") && err.contains("abc"), "{err}");
        let ragged = write(dir, "ragged.txt", b"0,0,0,0,0,1\n0,0,0\n");
        assert!(read_modelnet_txt(&ragged).unwrap_err().to_string().contains("ragged.txt:2:"));
        let short = write(dir, "short.txt", b"1,2\n");
        assert!(read_modelnet_txt(&short).unwrap_err().to_string().contains("short.txt:1:"));
        let empty = write(dir, "empty.txt", b"\n");
        assert!(read_modelnet_txt(&empty).unwrap_err().to_string().contains("no points"));
        let missing = dir.join("missing.txt");
        assert!(read_modelnet_txt(&missing).unwrap_err().to_string().contains("missing.txt"));
    }

    const PLY_HEADER: &str = "ply\nformat {FORMAT} 1.0\ncomment test\n\
        element vertex 2\nproperty float x\nproperty float y\nproperty double z\nproperty uchar red\n\
        element face 1\nproperty list uchar int vertex_indices\nend_header\n";

    #[test]
    fn ply_ascii() {
        let tmp = temp_dir("ply-ascii");
        let dir = tmp.path();
        let text = PLY_HEADER.replace("{FORMAT}", "ascii") + "1 2 3 255\n-4 5.5 6 0\n3 0 1 0\n";
        let cloud = read_point_cloud(&write(dir, "a.ply", text.as_bytes()), 0, 0).unwrap();
        assert_eq!(cloud.points, [[1.0, 2.0, 3.0], [-4.0, 5.5, 6.0]]);
        let bad = PLY_HEADER.replace("{FORMAT}", "ascii") + "1 2 3 255\n-4 x 6 0\n";
        let err = read_ply(&write(dir, "b.ply", bad.as_bytes())).unwrap_err().to_string();
        // Header lines 1..11, then the vertex lines 12 and 13.
        assert!(err.contains("b.ply:13:") && err.contains("'x'"), "{err}");
        let truncated = PLY_HEADER.replace("{FORMAT}", "ascii") + "1 2 3 255\n";
        assert!(read_ply(&write(dir, "c.ply", truncated.as_bytes())).unwrap_err().to_string().contains("1 of 2"));
        let no_xyz = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n";
        assert!(read_ply(&write(dir, "d.ply", no_xyz.as_bytes())).unwrap_err().to_string().contains("x, y, z"));
        let bad_header = "ply\nformat ascii 1.0\nelement vertex many\n";
        assert!(read_ply(&write(dir, "e.ply", bad_header.as_bytes())).unwrap_err().to_string().contains("e.ply:3:"));
        assert!(read_ply(&write(dir, "f.ply", b"off\n")).unwrap_err().to_string().contains("f.ply:1:"));
    }

    fn binary_body(little: bool) -> Vec<u8> {
        let mut body = Vec::new();
        for (x, y, z, red) in [(1.0f32, 2.0f32, 3.0f64, 7u8), (-4.0, 5.5, 6.0, 8)] {
            if little {
                body.extend(x.to_le_bytes());
                body.extend(y.to_le_bytes());
                body.extend(z.to_le_bytes());
            } else {
                body.extend(x.to_be_bytes());
                body.extend(y.to_be_bytes());
                body.extend(z.to_be_bytes());
            }
            body.push(red);
        }
        body
    }

    #[test]
    fn ply_binary() {
        let tmp = temp_dir("ply-binary");
        let dir = tmp.path();
        for (format, little) in [("binary_little_endian", true), ("binary_big_endian", false)] {
            let mut bytes = PLY_HEADER.replace("{FORMAT}", format).into_bytes();
            bytes.extend(binary_body(little));
            let cloud = read_ply(&write(dir, &format!("{format}.ply"), &bytes)).unwrap();
            assert_eq!(cloud.points, [[1.0, 2.0, 3.0], [-4.0, 5.5, 6.0]], "{format}");
            bytes.truncate(bytes.len() - 3);
            let err = read_ply(&write(dir, "short.ply", &bytes)).unwrap_err().to_string();
            assert!(err.contains("short.ply") && err.contains("row 1"), "{err}");
        }
        // A face element before the vertices is skipped.
        let mut bytes = b"ply\nformat binary_little_endian 1.0\n\
            element face 1\nproperty list uchar int vertex_indices\n\
            element vertex 1\nproperty float x\nproperty float y\nproperty float z\n\
            property float nx\nproperty float ny\nproperty float nz\nend_header\n"
            .to_vec();
        bytes.push(3);
        for i in [0i32, 0, 0] {
            bytes.extend(i.to_le_bytes());
        }
        for v in [1.0f32, 2.0, 3.0, 0.0, 1.0, 0.0] {
            bytes.extend(v.to_le_bytes());
        }
        let cloud = read_ply(&write(dir, "face-first.ply", &bytes)).unwrap();
        assert_eq!(cloud.points, [[1.0, 2.0, 3.0]]);
        assert_eq!(cloud.normals.unwrap(), [[0.0, 1.0, 0.0]]);
    }

    #[test]
    fn off_meshes_are_sampled_on_their_surface() {
        let tmp = temp_dir("off");
        let dir = tmp.path();
        // A unit square in z = 0 as one quad, with a comment and ModelNet's glued header.
        let text = "OFF4 1 0\n# corners\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n";
        let path = write(dir, "square.off", text.as_bytes());
        let mesh = read_off(&path).unwrap();
        assert_eq!((mesh.vertices.len(), mesh.faces.len()), (4, 1));
        let cloud = read_point_cloud(&path, 500, 7).unwrap();
        assert_eq!(cloud.len(), 500);
        assert!(cloud.points.iter().all(|p| (0.0..=1.0).contains(&p[0]) && (0.0..=1.0).contains(&p[1]) && p[2] == 0.0));
        // Both triangles of the fan get points; the same seed gives the same points.
        assert!(cloud.points.iter().any(|p| p[0] > p[1]) && cloud.points.iter().any(|p| p[0] < p[1]));
        assert_eq!(read_point_cloud(&path, 500, 7).unwrap(), cloud);
        let mean_x = cloud.points.iter().map(|p| p[0]).sum::<f32>() / 500.0;
        assert!((mean_x - 0.5).abs() < 0.05, "{mean_x}");

        let split = write(dir, "split.off", b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n");
        assert_eq!(read_off(&split).unwrap().faces, [vec![0, 1, 2]]);
        let out_of_range = write(dir, "range.off", b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 5\n");
        let err = read_off(&out_of_range).unwrap_err().to_string();
        assert!(err.contains("range.off:6:") && err.contains("5"), "{err}");
        let bad_vertex = write(dir, "vertex.off", b"OFF\n3 1 0\n0 0 0\n1 zero 0\n");
        assert!(read_off(&bad_vertex).unwrap_err().to_string().contains("vertex.off:4:"));
        let truncated = write(dir, "short.off", b"OFF\n3 1 0\n0 0 0\n");
        assert!(read_off(&truncated).unwrap_err().to_string().contains("1 of 3 vertices"));
        let not_off = write(dir, "ply.off", b"ply\n");
        assert!(read_off(&not_off).unwrap_err().to_string().contains("ply.off:1:"));
        let flat = write(dir, "flat.off", b"OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n");
        assert!(read_point_cloud(&flat, 10, 0).unwrap_err().to_string().contains("positive area"));
    }

    fn npy(descr: &str, shape: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}", if fortran { "True" } else { "False" });
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    #[test]
    fn npy_arrays() {
        let tmp = temp_dir("npy");
        let dir = tmp.path();
        let f4: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let cloud = read_point_cloud(&write(dir, "a.npy", &npy("<f4", "(2, 3)", false, &f4)), 0, 0).unwrap();
        assert_eq!(cloud.points, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        // Fortran order: columns first.
        let cloud = read_npy(&write(dir, "b.npy", &npy("<f4", "(2, 3)", true, &f4))).unwrap();
        assert_eq!(cloud.points, [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]);
        let f8: Vec<u8> = (0..12).flat_map(|v| f64::from(v).to_le_bytes()).collect();
        let cloud = read_npy(&write(dir, "c.npy", &npy("<f8", "(2, 6)", false, &f8))).unwrap();
        assert_eq!(cloud.points, [[0.0, 1.0, 2.0], [6.0, 7.0, 8.0]]);
        assert_eq!(cloud.normals.unwrap(), [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]);
        let err = read_npy(&write(dir, "d.npy", &npy("<f4", "(3,)", false, &f4[..12]))).unwrap_err().to_string();
        assert!(err.contains("d.npy") && err.contains("[3]"), "{err}");
        let err = read_npy(&write(dir, "e.npy", &npy("<i4", "(2, 3)", false, &f4))).unwrap_err().to_string();
        assert!(err.contains("<i4"), "{err}");
        let err = read_npy(&write(dir, "f.npy", &npy("<f4", "(3, 3)", false, &f4))).unwrap_err().to_string();
        assert!(err.contains("f.npy") && err.contains("bytes"), "{err}");
        assert!(read_npy(&write(dir, "g.npy", b"not numpy")).unwrap_err().to_string().contains("magic"));
        let err = read_npy(&write(dir, "h.npy", &npy("<f4", "(2, 2)", false, &f4[..16]))).unwrap_err().to_string();
        assert!(err.contains("3 columns"), "{err}");
    }

    #[test]
    fn unknown_extensions_are_refused() {
        let err = read_point_cloud(Path::new("cloud.xyz"), 0, 0).unwrap_err().to_string();
        assert!(err.contains("cloud.xyz") && err.contains("extension"), "{err}");
    }
}
