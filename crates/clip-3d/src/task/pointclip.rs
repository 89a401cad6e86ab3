//! The `pointclip` task.
