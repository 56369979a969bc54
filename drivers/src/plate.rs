//! TEMPORARY placeholder until the codec helper writes the real module.
/// Placeholder.
pub fn is_usual_plate(p: &str) -> bool {
    !p.is_empty()
}
