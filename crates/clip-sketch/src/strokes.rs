//! The optimized parameters: the control points of a sketch's cubic Bezier strokes, as a module
//! so that burn's optimizers update them.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;

/// Cubic Bezier strokes: control points `[strokes, 4, 2]` in canvas coordinates `[0, 1]`
/// (x right, y down).
#[derive(Module, Debug)]
pub struct Strokes {
    /// The control points, `[strokes, 4, 2]`.
    pub points: Param<Tensor<3>>,
}

impl Strokes {
    /// Strokes from control point values `[strokes][4][2]`.
    pub fn from_points(points: &[[[f32; 2]; 4]], device: &Device) -> Self {
        let values: Vec<f32> = points.iter().flat_map(|s| s.iter().flat_map(|p| p.iter().copied())).collect();
        let tensor = Tensor::<3>::from_data(TensorData::new(values, [points.len(), 4, 2]), device);
        Self { points: Param::from_tensor(tensor) }
    }

    /// CLIPasso's initialization: a stroke at each start point, its first control point there
    /// and each next one a uniform step of at most `radius` from the previous (the official
    /// `get_path`), all clamped to the canvas.
    pub fn scattered(starts: &[[f32; 2]], radius: f32, rng: &mut impl Rng, device: &Device) -> Self {
        let points: Vec<[[f32; 2]; 4]> = starts
            .iter()
            .map(|start| {
                let mut points = [*start; 4];
                for i in 1..4 {
                    let step = [rng.random_range(-radius..=radius), rng.random_range(-radius..=radius)];
                    points[i] = [(points[i - 1][0] + step[0]).clamp(0.0, 1.0), (points[i - 1][1] + step[1]).clamp(0.0, 1.0)];
                }
                points
            })
            .collect();
        Self::from_points(&points, device)
    }

    /// Number of strokes.
    pub fn len(&self) -> usize {
        self.points.dims()[0]
    }

    /// Whether there is no stroke.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The control point values, `[strokes][4][2]`.
    pub fn values(&self) -> Vec<[[f32; 2]; 4]> {
        let values: Vec<f32> = self.points.val().into_data().iter::<f32>().collect();
        values.chunks_exact(8).map(|s| [[s[0], s[1]], [s[2], s[3]], [s[4], s[5]], [s[6], s[7]]]).collect()
    }
}

/// The strokes as an SVG document of `size` pixels: one cubic `<path>` per stroke, `width`
/// pixels wide, in `color` (`"black"`, `"white"`) on the `background` color.
pub fn svg(points: &[[[f32; 2]; 4]], size: usize, width: f32, opacity: f32, color: &str, background: &str) -> String {
    let s = size as f32;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{size}\" viewBox=\"0 0 {size} {size}\">\n\
         <rect width=\"{size}\" height=\"{size}\" fill=\"{background}\"/>\n"
    );
    for stroke in points {
        let [p0, p1, p2, p3] = stroke.map(|p| [p[0] * s, p[1] * s]);
        out.push_str(&format!(
            "<path d=\"M {:.3} {:.3} C {:.3} {:.3} {:.3} {:.3} {:.3} {:.3}\" fill=\"none\" stroke=\"{color}\" \
             stroke-width=\"{width}\" stroke-opacity=\"{opacity}\" stroke-linecap=\"round\"/>\n",
            p0[0], p0[1], p1[0], p1[1], p2[0], p2[1], p3[0], p3[1]
        ));
    }
    out.push_str("</svg>\n");
    out
}
