//! Chinese plate sanity check. Plates that fail it are still reported (cameras misread,
//! military and special plates exist); drivers count them as "unusual" in their status.
//!
//! The rules: a province abbreviation (or 使/领 for embassy and consulate plates), an
//! issuing letter A–Z without I and O, then 5 characters (ordinary) or 6 (new energy:
//! the first or the last of the 6 is one of D A B C E F G H J K) of A–Z without I/O and
//! digits; the last character may instead be one of 挂 学 警 港 澳 使 领.

const PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领";
const SUFFIXES: &str = "挂学警港澳使领";
const ENERGY: &str = "DABCEFGHJK";

fn is_letter(c: char) -> bool {
    c.is_ascii_uppercase() && c != 'I' && c != 'O'
}

fn is_serial_char(c: char) -> bool {
    is_letter(c) || c.is_ascii_digit()
}

/// Whether `plate` follows the Chinese plate rules above.
pub fn is_usual_plate(plate: &str) -> bool {
    let chars: Vec<char> = plate.chars().collect();
    let [first, issuer, rest @ ..] = chars.as_slice() else {
        return false;
    };
    if !PROVINCES.contains(*first) || !is_letter(*issuer) {
        return false;
    }
    let (body, last) = match rest.split_last() {
        Some((l, b)) if SUFFIXES.contains(*l) => (b, None),
        Some((l, b)) => (b, Some(*l)),
        None => return false,
    };
    let mut serial: Vec<char> = body.to_vec();
    if let Some(l) = last {
        serial.push(l);
    }
    let suffixed = last.is_none();
    if !serial.iter().all(|c| is_serial_char(*c)) {
        return false;
    }
    match serial.len() {
        // With a suffix character, the serial part is one shorter (粤B1234学).
        4 if suffixed => true,
        5 => true,
        6 => ENERGY.contains(serial[0]) || ENERGY.contains(serial[5]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_new_energy_and_suffixed_plates_are_usual() {
        for p in [
            "晋A12345",
            "京AD12345",
            "粤B1234学",
            "沪C12345",
            "粤Z1234港",
            "京A12345F",
            "使A1234领",
        ] {
            assert!(is_usual_plate(p), "{p}");
        }
    }

    #[test]
    fn misreads_are_unusual() {
        for p in [
            "ABC",
            "晋I12345",
            "晋A1234",
            "",
            "晋A123456",
            "X晋A12345",
            "晋a12345",
            "晋A12#45",
            "晋AZ12345",
        ] {
            assert!(!is_usual_plate(p), "{p}");
        }
    }
}
